package ens

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/riverqueue/river"

	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/graph"
	"github.com/ensgate/ensgate/oauth"
	"github.com/ensgate/ensgate/privacy"
	"github.com/ensgate/ensgate/store"
)

// Exchange Online through Microsoft Graph (source "graph"): registration,
// the notification and lifecycle URLs, and the mail they read. The split
// of knowledge is EWS's: the refresh token is sealed under the
// subscription's key, which only Graph holds (as clientState) and presents
// with each notification and lifecycle event.
const (
	// graphStatusMinutes: Graph sends no status pings, but a lifecycle
	// event about hourly (reauthorizationRequired, as access tokens live an
	// hour); a subscription silent for twice this fails (health job).
	graphStatusMinutes = 60
	// graphLifetime is what a Graph subscription is made or renewed for:
	// Graph's most for messages, less a margin for the clocks' skew.
	graphLifetime = graph.MaxExpiration - 10*time.Minute
	// graphRenewBefore: a lifecycle event renews a subscription with less
	// than this left.
	graphRenewBefore = 3 * 24 * time.Hour
	// graphWorkTimeout bounds the work of one notification or lifecycle
	// event after Graph was answered, Retry-After waits included; within
	// claimLease, so no other node takes over its claims meanwhile.
	graphWorkTimeout = claimLease - 5*time.Second
	// graphMaxWait is the longest Retry-After the work waits out itself.
	graphMaxWait = 20 * time.Second
	// graphFallbackAfter is when a notification's fallback job runs: after
	// its work has had graphWorkTimeout, whether or not the node lived.
	graphFallbackAfter = graphWorkTimeout + 30*time.Second
)

var errGraphNotAllowed = &apiError{http.StatusForbidden, "forbidden",
	"this tenant does not allow Microsoft Graph, or not at this root (ensgate ens endpoint add --graph)"}

var errGraphMailboxMismatch = errors.New("the token belongs to another mailbox")

// graphError maps a Graph or token endpoint failure at registration to the
// device API's answer; when Graph throttles or the token endpoint is away,
// with Retry-After on w.
func graphError(w http.ResponseWriter, err error) *apiError {
	var throttled *graph.ThrottledError
	var transient *oauth.TransientError
	var api *graph.APIError
	retryAfter := func(d time.Duration) {
		w.Header().Set("Retry-After", strconv.Itoa(int((max(d, time.Second)+time.Second-1)/time.Second)))
	}
	switch {
	case errors.Is(err, oauth.ErrInvalidGrant):
		return &apiError{http.StatusUnauthorized, "bad_credentials", "the refresh token was refused: sign in again"}
	case errors.Is(err, oauth.ErrUnauthorizedClient):
		return &apiError{http.StatusBadGateway, "graph_error", "the token endpoint refuses the tenant's OAuth client id"}
	case errors.Is(err, graph.ErrUnauthorized):
		return &apiError{http.StatusUnauthorized, "bad_credentials", "Graph refused the access token"}
	case errors.Is(err, errGraphMailboxMismatch):
		return &apiError{http.StatusForbidden, "mailbox_mismatch", "the token does not belong to this mailbox; register with the mailbox's own sign-in"}
	case errors.As(err, &throttled):
		retryAfter(throttled.RetryAfter)
		return &apiError{http.StatusServiceUnavailable, "overloaded", "Graph is throttling this mailbox; retry later"}
	case errors.As(err, &transient):
		retryAfter(transient.RetryAfter)
		return &apiError{http.StatusServiceUnavailable, "unavailable", "the token endpoint is unavailable; retry later"}
	case errors.As(err, &api):
		return &apiError{http.StatusBadGateway, "graph_error", fmt.Sprintf("Graph answered HTTP %d %s", api.Status, api.Code)}
	}
	return &apiError{http.StatusBadGateway, "graph_error", "Graph or its token endpoint could not be reached"}
}

// graphClient is the shared client for a Graph root.
func (s *Service) graphClient(root string) *graph.Client {
	root = strings.TrimSuffix(root, "/")
	if c, ok := s.graphClients.Load(root); ok {
		return c.(*graph.Client)
	}
	c, _ := s.graphClients.LoadOrStore(root, graph.New(root, &http.Client{Timeout: s.cfg.EWSTimeout}))
	return c.(*graph.Client)
}

// graphURL is ENS_PUBLIC_URL/api/ens/graph/{notify|lifecycle}?id=…: the id
// names the subscription; its key travels as clientState, never in a URL.
func (s *Service) graphURL(path, publicID string) string {
	u := *s.cfg.PublicURL
	u.Path += BasePath + "/graph/" + path
	u.RawQuery = url.Values{"id": {publicID}}.Encode()
	return u.String()
}

// subscribeGraph redeems the device's refresh token, checks that the token
// is the claimed mailbox's own (/me), records its Inbox, and subscribes to
// the Inbox's new messages with the subscription's key as clientState.
// Graph validates both URLs meanwhile. No delta query yet: the first
// catch-up starts one, so a registration costs five calls whatever the
// size of the Inbox.
func (s *Service) subscribeGraph(ctx context.Context, row store.Endpoint, creds *credentials, publicID string, key seal.SubscriptionKey) (graph.Subscription, error) {
	if err := s.redeem(ctx, row.OAuth, creds); err != nil {
		return graph.Subscription{}, err
	}
	gc := s.graphClient(row.URL)
	me, err := gc.Me(ctx, creds.AccessToken)
	if err != nil {
		return graph.Subscription{}, err
	}
	if !strings.EqualFold(me.Mail, creds.Email) && !strings.EqualFold(me.UserPrincipalName, creds.Email) {
		return graph.Subscription{}, errGraphMailboxMismatch
	}
	// mail is an attribute a directory's own admins may set to any
	// address; only a domain the directory verified is its to give (a
	// domain is verified by one directory), and an authority that names a
	// directory admits that one only.
	org, err := gc.Organization(ctx, creds.AccessToken)
	if err != nil {
		return graph.Subscription{}, err
	}
	if !ownsAddress(org, row.OAuth.Authority, creds.Email) {
		return graph.Subscription{}, errGraphMailboxMismatch
	}
	inbox, err := gc.Inbox(ctx, creds.AccessToken)
	if err != nil {
		return graph.Subscription{}, err
	}
	creds.InboxID = inbox.ID
	return gc.CreateSubscription(ctx, creds.AccessToken, s.graphSubscriptionRequest(publicID, key))
}

// ownsAddress: the directory verified address's domain, and is the one the
// authority names, if it names one (a GUID or a domain, not organizations,
// common or consumers).
func ownsAddress(org graph.Organization, authority, address string) bool {
	_, domain, _ := strings.Cut(address, "@")
	verified := false
	for _, d := range org.VerifiedDomains {
		verified = verified || strings.EqualFold(d, domain)
	}
	if !verified {
		return false
	}
	u, err := url.Parse(authority)
	if err != nil {
		return false
	}
	switch directory := strings.ToLower(strings.Trim(u.Path, "/")); directory {
	case "", "organizations", "common", "consumers":
		return true
	default:
		return directory == strings.ToLower(org.ID) || slices.ContainsFunc(org.VerifiedDomains, func(d string) bool { return strings.EqualFold(d, directory) })
	}
}

func (s *Service) graphSubscriptionRequest(publicID string, key seal.SubscriptionKey) graph.SubscriptionRequest {
	return graph.SubscriptionRequest{ChangeTypes: []string{graph.Created}, NotificationURL: s.graphURL("notify", publicID),
		LifecycleNotificationURL: s.graphURL("lifecycle", publicID), ClientState: key.String(), Expiration: s.cfg.Now().Add(graphLifetime)}
}

// graphCallback reads and authenticates a POST from Graph: every
// notification in it must carry the key of the subscription the URL
// names, checked before anything else (one query, one AES-GCM open, no
// call to Graph). It answers the request itself when it returns nil.
func (s *Service) graphCallback(w http.ResponseWriter, r *http.Request) (*sealed, []graph.Notification) {
	body, err := readBody(w, r, graph.MaxNotificationBody)
	if err != nil {
		notifications.WithLabelValues("malformed").Inc()
		status := http.StatusBadRequest
		if errors.As(err, new(*http.MaxBytesError)) {
			status = http.StatusRequestEntityTooLarge
		}
		http.Error(w, "unreadable body", status)
		return nil, nil
	}
	ns, err := graph.ParseNotifications(body)
	if err != nil || len(ns) == 0 {
		notifications.WithLabelValues("malformed").Inc()
		http.Error(w, "malformed notification", http.StatusBadRequest)
		return nil, nil
	}
	key := ns[0].ClientState
	for _, n := range ns {
		if n.ClientState != key {
			key = "" // one wrong key refuses the whole POST
		}
	}
	o := s.callback(w, r, store.SourceGraph, r.URL.Query().Get("id"), key)
	if o == nil {
		return nil, nil
	}
	// Notifications of a Graph subscription this one replaced (made anew
	// after subscriptionRemoved) are the new one's business, not repeated.
	var mine []graph.Notification
	for _, n := range ns {
		if n.SubscriptionID == o.sub.RemoteID {
			mine = append(mine, n)
		}
	}
	return o, mine
}

// graphRequest answers Graph's validation handshake on either URL, or
// takes one of the node's in-flight slots and reads and authenticates the
// POST (graphCallback). With a nil o the request was answered.
func (s *Service) graphRequest(w http.ResponseWriter, r *http.Request) (o *sealed, ns []graph.Notification, release func()) {
	if token, ok := graph.ValidationToken(r); ok {
		graph.AnswerValidation(w, token)
		return nil, nil, nil
	}
	release, ok := s.takeSlot(w)
	if !ok {
		return nil, nil, nil
	}
	if o, ns = s.graphCallback(w, r); o == nil {
		release()
		return nil, nil, nil
	}
	return o, ns, release
}

// graphNotify is the subscription's notification URL. A genuine
// notification's items are recorded in a fallback job before Graph gets
// 202 (well within its 3 s); the work then runs on this node, with the key
// in memory only. If the node dies first, the fallback job (on any node,
// without the key) still announces each item, as "New message".
func (s *Service) graphNotify(w http.ResponseWriter, r *http.Request) {
	arrived := time.Now()
	o, ns, release := s.graphRequest(w, r)
	if o == nil {
		return
	}
	defer release()
	ctx := r.Context()
	if o.sub.State != store.SubscriptionActive {
		// Over here (no devices, superseded, endpoint removed): ended at
		// Graph too, so it stops calling. One whose token was refused
		// cannot be; it lapses at its expiry.
		if o.sub.StateReason != store.ReasonUnauthorized && !s.addGraphWork(o, nil, nil, true, arrived) {
			overloaded(w)
			return
		}
		notifications.WithLabelValues("unsubscribe").Inc()
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if err := s.store.MarkSeen(ctx, o.sub.ID, ""); err != nil {
		notifications.WithLabelValues("retry").Inc()
		http.Error(w, "try again later", http.StatusServiceUnavailable)
		return
	}
	items := graphItems(ns)
	if len(items) == 0 {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	hashes := make([][]byte, len(items))
	for i, id := range items {
		hashes[i] = ItemHash(id)
	}
	if _, err := s.jobs.Insert(ctx, graphFallbackArgs{Subscription: o.sub.ID, Items: hashes},
		&river.InsertOpts{ScheduledAt: time.Now().Add(graphFallbackAfter)}); err != nil {
		notifications.WithLabelValues("retry").Inc()
		s.log.Warn("Graph notification: cannot record it; Graph will retry", slog.Any("error", err))
		http.Error(w, "try again later", http.StatusServiceUnavailable)
		return
	}
	if !s.addGraphWork(o, items, nil, false, arrived) {
		overloaded(w) // the fallback job is harmless: it will find the items done
		return
	}
	notifications.WithLabelValues("ok").Inc()
	w.WriteHeader(http.StatusAccepted)
}

// graphItems lists the messages a notification names, once each, at most
// maxItemsPerNotification (the newest). Graph's notifications carry no
// time: replays of old messages are caught when a message is fetched
// (announceable) or, at levels that fetch nothing, by the done pushes
// remembered for pushMemory.
func graphItems(ns []graph.Notification) []string {
	var items []string
	seen := map[string]bool{}
	for _, n := range ns {
		id := n.ResourceData.ID
		if n.Lifecycle() || id == "" || seen[id] || n.ChangeType == graph.Deleted {
			continue
		}
		seen[id] = true
		items = append(items, id)
	}
	return newest(items)
}

// deliverGraph pushes items of o's mailbox to its devices.
func (s *Service) deliverGraph(ctx context.Context, log *slog.Logger, o *sealed, items []string, arrived time.Time) error {
	devices, err := s.store.ActiveDevices(ctx, o.sub.TenantID, o.sub.MailboxHash)
	if err != nil {
		return err
	}
	if devices, err = s.compliantDevices(ctx, devices); err != nil || len(devices) == 0 {
		return err
	}
	tenant, err := s.store.TenantByID(ctx, o.sub.TenantID)
	if err != nil {
		return err
	}
	ep, err := s.endpointByID(ctx, o.sub.EndpointID)
	if err != nil {
		return err
	}
	d := &delivery{s: s, log: log, sealed: o, tenant: tenant, devices: devices, arrived: arrived}
	d.src = &graphSource{d: d, client: s.graphClient(ep.URL), oauth: ep.OAuth}
	if err := s.freshAccess(ctx, o, ep.OAuth, false); errors.Is(err, oauth.ErrInvalidGrant) {
		return d.credentialsRefused(ctx)
	} else if err != nil {
		log.Warn("refreshing the access token; trying the current one", slog.Any("error", err))
	}
	_, err = d.run(ctx, items)
	return err
}

// graphSource reads a delivery's mail from Microsoft Graph, honouring
// Graph's throttling of the mailbox (429 with Retry-After).
type graphSource struct {
	d      *delivery
	client *graph.Client
	oauth  store.OAuth
}

// fields selects what the most permissive device level shows, besides
// what tells new mail of the Inbox: no sender below level 2, no preview
// (which needs Mail.Read) unless a device shows it.
func (g *graphSource) fields() []string {
	fields := []string{graph.FieldReceivedDateTime, graph.FieldParentFolderID}
	most := privacy.BadgeOnly
	for _, dev := range g.d.devices {
		most = min(most, g.d.level(dev))
	}
	if most.ShowsSender() {
		fields = append(fields, graph.FieldFrom)
	}
	if most.ShowsSubject() {
		fields = append(fields, graph.FieldSubject)
	}
	if most.ShowsPreview() {
		fields = append(fields, graph.FieldBodyPreview)
	}
	return fields
}

func (g *graphSource) content(ctx context.Context, id string) (*mailContent, error) {
	var m graph.Message
	err := g.d.s.graphCall(ctx, g.d.sub.MailboxHash, func() (err error) {
		m, err = g.client.Message(ctx, g.d.creds.AccessToken, id, g.fields()...)
		return err
	})
	switch {
	case errors.Is(err, graph.ErrNotFound):
		return nil, errNotAnnounced // deleted or moved before we looked
	case err != nil:
		return nil, err
	case !announceable(m.ParentFolderID, m.ReceivedDateTime, g.d.sub, g.d.creds, g.d.s.cfg.Now()):
		return nil, errNotAnnounced
	}
	return &mailContent{FromName: m.From.Name, FromAddress: m.From.Address, Subject: m.Subject, Preview: m.BodyPreview}, nil
}

func (g *graphSource) unreadCount(ctx context.Context) (int, error) {
	var inbox graph.Folder
	err := g.d.s.graphCall(ctx, g.d.sub.MailboxHash, func() (err error) {
		inbox, err = g.client.Inbox(ctx, g.d.creds.AccessToken)
		return err
	})
	switch {
	case err == nil:
		return inbox.UnreadItemCount, nil
	case errors.Is(err, graph.ErrUnauthorized):
		return 0, err
	}
	g.d.log.Warn("unread count unavailable; pushing without a badge", slog.Any("error", err))
	return -1, nil
}

func (g *graphSource) refused(err error) bool { return errors.Is(err, graph.ErrUnauthorized) }

// vetsEveryItem: a notification names a message but not when it arrived;
// one moved into the Inbox from elsewhere is not new mail.
func (g *graphSource) vetsEveryItem() bool { return true }

func (g *graphSource) refresh(ctx context.Context) error {
	return g.d.s.freshAccess(ctx, g.d.sealed, g.oauth, true)
}

// graphCall makes a call for a mailbox once Graph's Retry-After for it has
// passed, and again after each 429 until ctx ends: Graph throttles per app
// and mailbox, so one mailbox's back-off holds up no other.
func (s *Service) graphCall(ctx context.Context, mailbox []byte, call func() error) error {
	for {
		if err := s.graphThrottle.wait(ctx, string(mailbox)); err != nil {
			return err
		}
		err := call()
		var throttled *graph.ThrottledError
		if !errors.As(err, &throttled) {
			return err
		}
		graphThrottled.Inc()
		s.graphThrottle.hold(string(mailbox), max(throttled.RetryAfter, time.Second))
		if throttled.RetryAfter > graphMaxWait {
			return err // longer than the work may wait: the fallback job sees to it
		}
	}
}

// endGraphSubscription deletes o's subscription at Graph with its access
// token, redeeming the refresh token only if that one is refused.
func (s *Service) endGraphSubscription(ctx context.Context, o *sealed) error {
	ep, err := s.store.RemovedEndpointByID(ctx, o.sub.EndpointID)
	if err != nil {
		return err
	}
	gc := s.graphClient(ep.URL)
	err = gc.DeleteSubscription(ctx, o.creds.AccessToken, o.sub.RemoteID)
	if errors.Is(err, graph.ErrUnauthorized) {
		var tokens oauth.Tokens
		if tokens, err = s.oauthEndpoint(ep.OAuth).Refresh(ctx, o.creds.RefreshToken); err != nil {
			return err
		}
		err = gc.DeleteSubscription(ctx, tokens.AccessToken, o.sub.RemoteID)
	}
	if errors.Is(err, graph.ErrNotFound) {
		return nil
	}
	return err
}

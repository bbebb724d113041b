package graphsim

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Subscriptions follow api/subscription-post-subscriptions.md,
// subscription-update.md, subscription-delete.md, resources/subscription.md
// and concepts/change-notifications-lifecycle-events.md.

// Lifecycle events (the lifecycleEvent field).
const (
	ReauthorizationRequired = "reauthorizationRequired"
	SubscriptionRemoved     = "subscriptionRemoved"
	Missed                  = "missed"
)

type subscription struct {
	id              string
	user            *mailbox
	client          string
	resource        string
	changeTypes     []string
	notificationURL string
	lifecycleURL    string
	clientState     string
	tls             string
	created         time.Time
	expires         time.Time
	authExpires     time.Time // the access token it was last authorized with
	needsReauth     bool
	ended           bool
	expiryTimer     *timer
	reauthTimer     *timer
	sent, failed    int
}

// SubscriptionInfo describes an active subscription (clientState is left
// out: tests know it, logs must not).
type SubscriptionInfo struct {
	ID                   string    `json:"id"`
	User                 string    `json:"user"`
	ClientID             string    `json:"clientId"`
	Resource             string    `json:"resource"`
	ChangeTypes          []string  `json:"changeTypes"`
	NotificationURL      string    `json:"notificationUrl"`
	LifecycleURL         string    `json:"lifecycleNotificationUrl,omitempty"`
	Expires              time.Time `json:"expirationDateTime"`
	AuthorizationExpires time.Time `json:"authorizationExpires"`
	NeedsReauthorization bool      `json:"needsReauthorization"`
	Paused               bool      `json:"paused"` // change notifications held back until reauthorized
}

func (s *Server) infoLocked(sub *subscription, now time.Time) SubscriptionInfo {
	return SubscriptionInfo{
		ID: sub.id, User: sub.user.address, ClientID: sub.client, Resource: sub.resource,
		ChangeTypes: slices.Clone(sub.changeTypes), NotificationURL: sub.notificationURL, LifecycleURL: sub.lifecycleURL,
		Expires: sub.expires, AuthorizationExpires: sub.authExpires, NeedsReauthorization: sub.needsReauth,
		Paused: s.pausedLocked(sub, now),
	}
}

// Subscriptions lists the active subscriptions, oldest first.
func (s *Server) Subscriptions() []SubscriptionInfo {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var subs []*subscription
	for _, sub := range s.subs {
		subs = append(subs, sub)
	}
	slices.SortFunc(subs, func(a, b *subscription) int { return a.created.Compare(b.created) })
	out := make([]SubscriptionInfo, len(subs))
	for i, sub := range subs {
		out[i] = s.infoLocked(sub, now)
	}
	return out
}

// pausedLocked reports whether change notifications of sub are held back:
// its authorization ran out (ReauthGrace after the access token it was
// authorized with expired) and the app has not reauthorized. Only
// subscriptions with a lifecycle URL pause: the others cannot be asked to
// reauthorize and run until they expire.
func (s *Server) pausedLocked(sub *subscription, now time.Time) bool {
	return sub.lifecycleURL != "" && !now.Before(sub.authExpires.Add(s.cfg.ReauthGrace))
}

// subscriptionJSON is the subscription resource as Graph returns it.
func (s *Server) subscriptionJSON(r *http.Request, sub *subscription, withState bool) map[string]any {
	v := map[string]any{
		"@odata.context": s.context(r, "subscriptions/$entity"),
		"id":             sub.id, "resource": sub.resource, "applicationId": sub.client,
		"changeType": strings.Join(sub.changeTypes, ","), "clientState": nil,
		"notificationUrl": sub.notificationURL, "notificationQueryOptions": nil,
		"lifecycleNotificationUrl": nil, "expirationDateTime": subTime(sub.expires),
		"creatorId": sub.user.id, "includeResourceData": false, "latestSupportedTlsVersion": sub.tls,
		"encryptionCertificate": nil, "encryptionCertificateId": nil, "notificationUrlAppId": nil,
	}
	if sub.lifecycleURL != "" {
		v["lifecycleNotificationUrl"] = sub.lifecycleURL
	}
	if withState && sub.clientState != "" {
		v["clientState"] = sub.clientState
	}
	return v
}

func badRequest(w http.ResponseWriter, msg string) {
	graphError(w, http.StatusBadRequest, "InvalidRequest", msg)
}

func (s *Server) serveSubscriptions(w http.ResponseWriter, r *http.Request, at *accessToken, rest []string) {
	switch {
	case len(rest) == 0 && r.Method == http.MethodPost:
		s.stats.op("subscriptionCreate")
		s.createSubscription(w, r, at)
	case len(rest) == 0 && r.Method == http.MethodGet:
		s.stats.op("subscriptionList")
		s.listSubscriptions(w, r, at)
	case len(rest) == 1 && r.Method == http.MethodGet:
		s.stats.op("subscriptionGet")
		s.withSubscription(w, at, rest[0], func(sub *subscription) {
			writeJSON(w, http.StatusOK, s.subscriptionJSON(r, sub, false))
		})
	case len(rest) == 1 && r.Method == http.MethodPatch:
		s.stats.op("subscriptionUpdate")
		s.updateSubscription(w, r, at, rest[0])
	case len(rest) == 1 && r.Method == http.MethodDelete:
		s.stats.op("subscriptionDelete")
		s.withSubscription(w, at, rest[0], func(sub *subscription) {
			s.endLocked(sub)
			s.stats.add(&s.stats.c.SubscriptionsDeleted, 1)
			s.log.Info("graphsim: subscription deleted", "subscription", sub.id)
			w.WriteHeader(http.StatusNoContent)
		})
	case len(rest) == 2 && strings.EqualFold(rest[1], "reauthorize") && r.Method == http.MethodPost:
		s.stats.op("subscriptionReauthorize")
		now := s.clock.Now()
		s.withSubscription(w, at, rest[0], func(sub *subscription) {
			s.authorizeLocked(sub, at, now)
			s.stats.add(&s.stats.c.SubscriptionsReauthorized, 1)
			s.log.Info("graphsim: subscription reauthorized", "subscription", sub.id)
			w.WriteHeader(http.StatusNoContent)
		})
	default:
		graphError(w, http.StatusMethodNotAllowed, "BadRequest", "Specified HTTP method is not allowed for the request target.")
	}
}

// withSubscription runs f, with s.mu held, on the subscription id if the
// caller's app and user own it; else it answers 404.
func (s *Server) withSubscription(w http.ResponseWriter, at *accessToken, id string, f func(*subscription)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.subs[strings.ToLower(id)]
	if sub == nil || sub.client != at.client || sub.user != at.user {
		graphError(w, http.StatusNotFound, "ResourceNotFound", "The object was not found.")
		return
	}
	f(sub)
}

func (s *Server) listSubscriptions(w http.ResponseWriter, r *http.Request, at *accessToken) {
	s.mu.Lock()
	var subs []*subscription
	for _, sub := range s.subs {
		if sub.client == at.client && sub.user == at.user {
			subs = append(subs, sub)
		}
	}
	slices.SortFunc(subs, func(a, b *subscription) int { return a.created.Compare(b.created) })
	out := []any{}
	for _, sub := range subs {
		v := s.subscriptionJSON(r, sub, false)
		delete(v, "@odata.context")
		out = append(out, v)
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"@odata.context": s.context(r, "subscriptions"), "value": out})
}

// subscriptionRequest is the body of POST and PATCH /subscriptions.
type subscriptionRequest struct {
	ChangeType                *string `json:"changeType"`
	NotificationURL           *string `json:"notificationUrl"`
	LifecycleNotificationURL  *string `json:"lifecycleNotificationUrl"`
	Resource                  *string `json:"resource"`
	ExpirationDateTime        *string `json:"expirationDateTime"`
	ClientState               *string `json:"clientState"`
	IncludeResourceData       *bool   `json:"includeResourceData"`
	LatestSupportedTLSVersion *string `json:"latestSupportedTlsVersion"`
	EncryptionCertificate     *string `json:"encryptionCertificate"`
	EncryptionCertificateID   *string `json:"encryptionCertificateId"`
	NotificationURLAppID      *string `json:"notificationUrlAppId"`
}

func readSubscriptionRequest(w http.ResponseWriter, r *http.Request) (subscriptionRequest, bool) {
	var req subscriptionRequest
	if !strings.HasPrefix(strings.ToLower(r.Header.Get("Content-Type")), "application/json") {
		graphError(w, http.StatusUnsupportedMediaType, "BadRequest", "A supported MIME type could not be found that matches the content type of the response. None of the supported type(s) 'application/json' matches the content type ''.")
		return req, false
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		graphError(w, http.StatusBadRequest, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.")
		return req, false
	}
	return req, true
}

// checkExpiry parses expirationDateTime and checks it lies in the future
// and within MaxExpiration.
func (s *Server) checkExpiry(w http.ResponseWriter, v *string, now time.Time) (time.Time, bool) {
	if v == nil || *v == "" {
		badRequest(w, "expirationDateTime is a required property for subscription creation.")
		return time.Time{}, false
	}
	exp, err := time.Parse(time.RFC3339Nano, *v)
	if err != nil {
		badRequest(w, "Invalid expirationDateTime '"+*v+"'.")
		return time.Time{}, false
	}
	exp = exp.UTC()
	if !exp.After(now) {
		badRequest(w, "Subscription expiration must be in the future.")
		return time.Time{}, false
	}
	if exp.Sub(now) > MaxExpiration {
		badRequest(w, "Subscription expiration can only be 10080 minutes in the future.")
		return time.Time{}, false
	}
	return exp, true
}

// parseResource accepts the Inbox's messages (me/mailFolders('inbox')/messages,
// me/mailFolders/inbox/messages, with the Inbox's id, or me/messages), with
// me or users/{id|upn}; it returns whether it names the user's Inbox.
func (s *Server) parseResource(m *mailbox, res string) (ok, ownMailbox bool) {
	segs := splitPath(res)
	if len(segs) == 0 {
		return false, false
	}
	switch {
	case strings.EqualFold(segs[0], "me"):
		segs = segs[1:]
	case strings.EqualFold(segs[0], "users") && len(segs) > 1:
		if !s.isUser(m, segs[1]) {
			return true, false
		}
		segs = segs[2:]
	default:
		return false, false
	}
	if len(segs) == 3 && strings.EqualFold(segs[0], "mailFolders") && s.isInbox(m, segs[1]) && strings.EqualFold(segs[2], "messages") {
		return true, true
	}
	if len(segs) == 1 && strings.EqualFold(segs[0], "messages") {
		return true, true
	}
	return false, true
}

func (s *Server) checkURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Fragment != "" {
		return false
	}
	return u.Scheme == "https" || u.Scheme == "http" && s.cfg.AllowHTTP
}

func (s *Server) createSubscription(w http.ResponseWriter, r *http.Request, at *accessToken) {
	req, ok := readSubscriptionRequest(w, r)
	if !ok {
		return
	}
	now := s.clock.Now()
	if req.ChangeType == nil || *req.ChangeType == "" {
		badRequest(w, "changeType is a required property for subscription creation.")
		return
	}
	var types []string
	for _, t := range strings.Split(*req.ChangeType, ",") {
		t = strings.TrimSpace(t)
		if t != "created" && t != "updated" && t != "deleted" {
			badRequest(w, "'"+t+"' is not a valid change type.")
			return
		}
		if !slices.Contains(types, t) {
			types = append(types, t)
		}
	}
	if req.NotificationURL == nil || *req.NotificationURL == "" {
		badRequest(w, "notificationUrl is a required property for subscription creation.")
		return
	}
	if !s.checkURL(*req.NotificationURL) {
		badRequest(w, "The Notification Url must be an absolute URL that uses the HTTPS protocol.")
		return
	}
	var lifecycle string
	if req.LifecycleNotificationURL != nil && *req.LifecycleNotificationURL != "" {
		lifecycle = *req.LifecycleNotificationURL
		if !s.checkURL(lifecycle) {
			badRequest(w, "The lifecycle notification URL must be an absolute URL that uses the HTTPS protocol.")
			return
		}
	}
	if req.Resource == nil || *req.Resource == "" {
		badRequest(w, "resource is a required property for subscription creation.")
		return
	}
	if req.IncludeResourceData != nil && *req.IncludeResourceData {
		badRequest(w, "The simulator does not support includeResourceData (rich notifications need an encryption certificate).")
		return
	}
	exp, ok := s.checkExpiry(w, req.ExpirationDateTime, now)
	if !ok {
		return
	}
	var state string
	if req.ClientState != nil {
		state = *req.ClientState
		if len([]rune(state)) > MaxClientState {
			badRequest(w, "clientState must not be longer than 128 characters.")
			return
		}
	}
	tls := "v1_2"
	if req.LatestSupportedTLSVersion != nil {
		tls = *req.LatestSupportedTLSVersion
		if !slices.Contains([]string{"v1_0", "v1_1", "v1_2", "v1_3"}, tls) {
			badRequest(w, "Invalid latestSupportedTlsVersion '"+tls+"'.")
			return
		}
	}
	if ok, own := s.parseResource(at.user, *req.Resource); !ok {
		badRequest(w, "Invalid resource '"+*req.Resource+"': the simulator supports the Inbox's messages only.")
		return
	} else if !own {
		graphError(w, http.StatusForbidden, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; Reason: Access is denied. Check credentials and try again.]")
		return
	}
	s.mu.Lock()
	n := 0
	for _, sub := range s.subs {
		if sub.user == at.user {
			n++
		}
	}
	s.mu.Unlock()
	if n >= s.cfg.MaxSubscriptionsPerMailbox {
		graphError(w, http.StatusForbidden, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; Reason: The maximum number of subscriptions for this mailbox has been reached.]")
		return
	}

	// The validation handshake on each URL, before the subscription exists.
	for _, u := range []string{*req.NotificationURL, lifecycle} {
		if u == "" {
			continue
		}
		if msg := s.validate(r.Context(), u); msg != "" {
			s.stats.add(&s.stats.c.ValidationsFailed, 1)
			s.log.Info("graphsim: subscription validation failed")
			badRequest(w, msg)
			return
		}
	}

	sub := &subscription{
		id: newGUID(), user: at.user, client: at.client, resource: *req.Resource, changeTypes: types,
		notificationURL: *req.NotificationURL, lifecycleURL: lifecycle, clientState: state, tls: tls,
		created: now, expires: exp,
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		graphError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "Service unavailable.")
		return
	}
	s.subs[sub.id] = sub
	s.authorizeLocked(sub, at, now)
	s.scheduleExpiryLocked(sub)
	v := s.subscriptionJSON(r, sub, true)
	s.mu.Unlock()
	s.stats.add(&s.stats.c.SubscriptionsCreated, 1)
	s.log.Info("graphsim: subscription created", "subscription", sub.id, "changeType", strings.Join(types, ","))
	writeJSON(w, http.StatusCreated, v)
}

// validate performs the notification URL validation: POST
// url?validationToken=... (text/plain), expecting 200, text/plain and the
// decoded token as the body within ValidationTimeout. It returns the
// error message for the creator, or "".
func (s *Server) validate(ctx context.Context, raw string) string {
	const failed = "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
	// An opaque token that needs URL decoding, like Graph's.
	token := "Validation: Testing client application reachability for subscription Request-Id: " + newGUID()
	u, _ := url.Parse(raw)
	q := u.RawQuery
	if q != "" {
		q += "&"
	}
	u.RawQuery = q + "validationToken=" + url.QueryEscape(token)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.ValidationTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return failed
	}
	req.Header.Set("Content-Type", "text/plain; charset=utf-8")
	s.stats.add(&s.stats.c.ValidationsSent, 1)
	resp, err := s.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request. (timed out)"
		}
		return failed
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return failed
	}
	if resp.StatusCode != http.StatusOK {
		return "Subscription validation request failed. HTTP '" + strings.ReplaceAll(http.StatusText(resp.StatusCode), " ", "") + "'. " + failed
	}
	if !strings.HasPrefix(strings.ToLower(resp.Header.Get("Content-Type")), "text/plain") {
		return "Subscription validation request failed. Must respond with 200 OK and a text/plain body containing the validation token."
	}
	if string(body) != token {
		return "Subscription validation request failed. Response must exactly match validationToken query parameter."
	}
	return ""
}

func (s *Server) updateSubscription(w http.ResponseWriter, r *http.Request, at *accessToken, id string) {
	req, ok := readSubscriptionRequest(w, r)
	if !ok {
		return
	}
	if req.LifecycleNotificationURL != nil || req.Resource != nil || req.ChangeType != nil || req.ClientState != nil {
		badRequest(w, "Only expirationDateTime (and notificationUrl) can be updated; a lifecycleNotificationUrl needs a new subscription.")
		return
	}
	now := s.clock.Now()
	exp, ok := s.checkExpiry(w, req.ExpirationDateTime, now)
	if !ok {
		return
	}
	if req.NotificationURL != nil && !s.checkURL(*req.NotificationURL) {
		badRequest(w, "The Notification Url must be an absolute URL that uses the HTTPS protocol.")
		return
	}
	s.withSubscription(w, at, id, func(sub *subscription) {
		sub.expires = exp
		if req.NotificationURL != nil {
			sub.notificationURL = *req.NotificationURL
		}
		// Renewing also reauthorizes (change-notifications-lifecycle-events.md).
		s.authorizeLocked(sub, at, now)
		s.scheduleExpiryLocked(sub)
		s.stats.add(&s.stats.c.SubscriptionsRenewed, 1)
		s.log.Info("graphsim: subscription renewed", "subscription", sub.id)
		writeJSON(w, http.StatusOK, s.subscriptionJSON(r, sub, false))
	})
}

// authorizeLocked ties sub to the access token at (its expiry) and plans
// the next reauthorizationRequired.
func (s *Server) authorizeLocked(sub *subscription, at *accessToken, now time.Time) {
	sub.authExpires = at.expires
	sub.needsReauth = false
	s.scheduleReauthLocked(sub, now)
}

// scheduleReauthLocked plans reauthorizationRequired ReauthLead before the
// authorization or the subscription runs out, whichever comes first.
func (s *Server) scheduleReauthLocked(sub *subscription, now time.Time) {
	s.clock.Stop(sub.reauthTimer)
	sub.reauthTimer = nil
	if sub.lifecycleURL == "" {
		return
	}
	deadline := sub.authExpires
	if sub.expires.Before(deadline) {
		deadline = sub.expires
	}
	at := deadline.Add(-s.cfg.ReauthLead)
	if at.Before(now) {
		at = now
	}
	sub.reauthTimer = s.clock.At(at, func() { s.reauthDue(sub) })
}

// reauthDue sends reauthorizationRequired and repeats it every ReauthLead
// until the app reauthorizes or renews, or the subscription is paused for
// good (its authorization ran out plus ReauthGrace) or expires.
func (s *Server) reauthDue(sub *subscription) {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if sub.ended {
		return
	}
	sub.needsReauth = true
	s.lifecycleLocked(sub, ReauthorizationRequired, now)
	next := now.Add(s.cfg.ReauthLead)
	if next.Before(sub.authExpires.Add(s.cfg.ReauthGrace)) && next.Before(sub.expires) {
		sub.reauthTimer = s.clock.At(next, func() { s.reauthDue(sub) })
	}
}

func (s *Server) scheduleExpiryLocked(sub *subscription) {
	s.clock.Stop(sub.expiryTimer)
	sub.expiryTimer = s.clock.At(sub.expires, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if sub.ended {
			return
		}
		s.endLocked(sub)
		s.stats.add(&s.stats.c.SubscriptionsExpired, 1)
		s.log.Info("graphsim: subscription expired", "subscription", sub.id)
	})
}

// endLocked removes sub; notifications already queued are still sent.
func (s *Server) endLocked(sub *subscription) {
	sub.ended = true
	s.clock.Stop(sub.expiryTimer)
	s.clock.Stop(sub.reauthTimer)
	delete(s.subs, sub.id)
}

// Lifecycle sends a lifecycle notification for a subscription as Graph
// would: SubscriptionRemoved also removes the subscription;
// ReauthorizationRequired marks it as needing reauthorization and brings
// its authorization's end forward to within ReauthLead (change
// notifications pause ReauthGrace after that unless the app reauthorizes
// or renews); Missed only tells. A subscription without a lifecycle URL
// gets no notification (SubscriptionRemoved still removes it).
func (s *Server) Lifecycle(subscriptionID, event string) error {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sub := s.subs[strings.ToLower(subscriptionID)]
	if sub == nil {
		return ErrNoSuchSubscription
	}
	switch event {
	case SubscriptionRemoved:
		s.lifecycleLocked(sub, event, now)
		s.endLocked(sub)
		s.stats.add(&s.stats.c.SubscriptionsRemoved, 1)
	case Missed:
		s.lifecycleLocked(sub, event, now)
	case ReauthorizationRequired:
		if limit := now.Add(s.cfg.ReauthLead); sub.authExpires.After(limit) {
			sub.authExpires = limit
		}
		sub.needsReauth = true
		s.lifecycleLocked(sub, event, now)
		s.clock.Stop(sub.reauthTimer)
		sub.reauthTimer = nil
		if sub.lifecycleURL != "" {
			sub.reauthTimer = s.clock.At(now.Add(s.cfg.ReauthLead), func() { s.reauthDue(sub) })
		}
	default:
		return errors.New("graphsim: unknown lifecycle event " + event)
	}
	return nil
}

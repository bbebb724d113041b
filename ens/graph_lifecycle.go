package ens

import (
	"cmp"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/ensgate/ensgate/graph"
	"github.com/ensgate/ensgate/oauth"
	"github.com/ensgate/ensgate/store"
)

// graphLifecycle is the subscription's lifecycle URL. Each event carries
// the key, so it is the moment to act on the subscription: renew it before
// it lapses (reauthorizationRequired), make it anew (subscriptionRemoved),
// catch up on what Graph dropped (missed, and after a removal). Graph is
// answered 202 first; the work runs on this node.
func (s *Service) graphLifecycle(w http.ResponseWriter, r *http.Request) {
	o, ns, release := s.graphRequest(w, r)
	if o == nil {
		return
	}
	defer release()
	if o.sub.State != store.SubscriptionActive {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	events := map[string]bool{}
	for _, n := range ns {
		if n.Lifecycle() {
			events[n.LifecycleEvent] = true
		}
	}
	if len(events) == 0 { // another Graph subscription's, or no lifecycle event
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if err := s.store.MarkSeen(r.Context(), o.sub.ID, ""); err != nil {
		s.log.Warn("Graph lifecycle event: cannot record liveness", slog.Any("error", err))
	}
	if !s.addGraphWork(o, nil, events, false, time.Now()) {
		overloaded(w)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// graphEvents acts on a subscription's lifecycle events. A refused refresh
// token fails the subscription and asks its devices to register again.
func (s *Service) graphEvents(ctx context.Context, log *slog.Logger, o *sealed, events map[string]bool) error {
	ep, err := s.endpointByID(ctx, o.sub.EndpointID)
	if err != nil {
		return err
	}
	gc := s.graphClient(ep.URL)
	err = s.graphLifecycleWork(ctx, log, o, gc, ep.OAuth, events)
	if errors.Is(err, oauth.ErrInvalidGrant) || errors.Is(err, graph.ErrUnauthorized) || errors.Is(err, errNoRefreshToken) {
		log.Info("a lifecycle event's work was refused", slog.Any("error", err))
		return s.credentialsRefused(ctx, log, o, false)
	}
	return err
}

func (s *Service) graphLifecycleWork(ctx context.Context, log *slog.Logger, o *sealed, gc *graph.Client, oa store.OAuth, events map[string]bool) error {
	// Every event comes with a token about to expire, or needing one: a
	// fresh access token first (the refresh token rotates and is re-sealed).
	if err := s.freshAccess(ctx, o, oa, true); err != nil {
		return err
	}
	call := func(f func(token string) error) error {
		return s.graphCall(ctx, o.sub.MailboxHash, func() error { return f(o.creds.AccessToken) })
	}
	catchUp, removed := events[graph.Missed], events[graph.SubscriptionRemoved]
	if events[graph.ReauthorizationRequired] && !removed {
		err := s.keepGraphSubscription(ctx, o, gc, call)
		removed = errors.Is(err, graph.ErrNotFound) // Graph no longer knows it
		if err != nil && !removed {
			return err
		}
	}
	if removed {
		var sub graph.Subscription
		if err := call(func(token string) (err error) {
			sub, err = gc.CreateSubscription(ctx, token, s.graphSubscriptionRequest(o.sub.PublicID, o.key))
			return err
		}); err != nil {
			return err
		}
		if err := s.store.SetRemoteSubscription(ctx, o.sub.ID, sub.ID, sub.Expiration); err != nil {
			return err
		}
		o.sub.RemoteID, o.sub.ExpiresAt = sub.ID, sub.Expiration
		graphRenewals.WithLabelValues("recreated").Inc()
		log.Info("Graph removed the subscription; made it anew")
		catchUp = true
	}
	if !catchUp {
		return nil
	}
	return s.graphCatchUp(ctx, log, o, gc)
}

// keepGraphSubscription reauthorizes o's Graph subscription and renews it
// when less than graphRenewBefore is left; graph.ErrNotFound if Graph no
// longer has it.
func (s *Service) keepGraphSubscription(ctx context.Context, o *sealed, gc *graph.Client, call func(func(token string) error) error) error {
	if err := call(func(token string) error { return gc.Reauthorize(ctx, token, o.sub.RemoteID) }); err != nil {
		return err
	}
	graphRenewals.WithLabelValues("reauthorized").Inc()
	if o.sub.ExpiresAt.Sub(s.cfg.Now()) >= graphRenewBefore {
		return nil
	}
	var sub graph.Subscription
	if err := call(func(token string) (err error) {
		sub, err = gc.RenewSubscription(ctx, token, o.sub.RemoteID, s.cfg.Now().Add(graphLifetime))
		return err
	}); err != nil {
		return err
	}
	if err := s.store.SetRemoteSubscription(ctx, o.sub.ID, o.sub.RemoteID, sub.Expiration); err != nil {
		return err
	}
	graphRenewals.WithLabelValues("renewed").Inc()
	return nil
}

// graphCatchUp pushes the messages Graph did not notify (missed, or made
// while its subscription was removed): a delta query from where the last
// one ended (the first, what arrived since the subscription began). Claims
// keep what was pushed from being pushed again.
func (s *Service) graphCatchUp(ctx context.Context, log *slog.Logger, o *sealed, gc *graph.Client) error {
	// Only new mail: unread, in the Inbox, since the subscription began; a
	// first round lists only what arrived since then.
	notBefore := oldestNew(o.sub.CreatedAt, s.cfg.Now())
	first, err := gc.DeltaSince(notBefore)
	if err != nil {
		return err
	}
	var changes []graph.Message
	var next string
	err = s.graphCall(ctx, o.sub.MailboxHash, func() (err error) {
		changes, next, err = gc.Delta(ctx, o.creds.AccessToken, cmp.Or(o.creds.DeltaLink, first))
		if errors.Is(err, graph.ErrDeltaExpired) {
			changes, next, err = gc.Delta(ctx, o.creds.AccessToken, first)
		}
		return err
	})
	if err != nil {
		return err
	}
	var items []string
	for _, m := range changes {
		if !m.Removed && !m.IsRead && m.ParentFolderID == o.creds.InboxID && !m.ReceivedDateTime.Before(notBefore) {
			items = append(items, m.ID)
		}
	}
	items = newest(items)
	log.Info("catching up after Graph missed notifications", slog.Int("items", len(items)))
	if len(items) > 0 {
		if err := s.deliverGraph(ctx, log, o, items, time.Now()); err != nil {
			return err
		}
	}
	return s.update(ctx, o, func(c *credentials) (bool, error) {
		c.DeltaLink = next
		return true, nil
	})
}

// credentialsRefused fails o's subscription, the refresh token refused
// (the user must sign in again), and in the same transaction asks its
// devices to register again: with newMail, where their level allows, also
// with a generic "New message".
func (s *Service) credentialsRefused(ctx context.Context, log *slog.Logger, o *sealed, newMail bool) error {
	changed, err := s.store.StopSubscription(ctx, o.sub.ID, store.SubscriptionFailed, store.ReasonUnauthorized,
		s.askToReregister(reregisterArgs{Tenant: o.sub.TenantID, Mailbox: o.sub.MailboxHash, NewMail: newMail}))
	if changed {
		log.Info("the mail source refused the credentials; asking the devices to register again")
	}
	return err
}

// graphFallbackArgs are a Graph notification's items, recorded before
// Graph was answered. The node that answered pushes them at once; if it
// died first, this job, due graphFallbackAfter later, announces each item
// no device got yet, as "New message" (the content is not readable
// without the key, which is not stored).
type graphFallbackArgs struct {
	Subscription int64    `json:"subscription"`
	Items        [][]byte `json:"items"` // item hashes: opaque
}

func (graphFallbackArgs) Kind() string { return "ensgate_graph_fallback" }

func (graphFallbackArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{MaxAttempts: 10} }

type graphFallbackWorker struct {
	river.WorkerDefaults[graphFallbackArgs]
	s *Service
}

func (w *graphFallbackWorker) Work(ctx context.Context, job *river.Job[graphFallbackArgs]) error {
	s, a := w.s, job.Args
	sub, err := s.store.SubscriptionByID(ctx, a.Subscription)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	devices, err := s.store.ActiveDevices(ctx, sub.TenantID, sub.MailboxHash)
	if err != nil || len(devices) == 0 {
		return err
	}
	ids := make([]int64, len(devices))
	for i, dev := range devices {
		ids[i] = dev.ID
	}
	late, busy := 0, false
	for _, item := range a.Items {
		claimed, pending, err := s.store.ClaimPushes(ctx, sub.ID, item, ids, claimLease)
		if err != nil {
			return err
		}
		busy = busy || pending
		if len(claimed) == 0 {
			continue
		}
		late += len(claimed)
		if err := s.queuePushes(ctx, sub.ID, item, claimed, -1, job.CreatedAt); err != nil {
			return err
		}
	}
	if late > 0 {
		s.log.Warn("a Graph notification's work did not finish; announcing its items without content",
			slog.String("subscription", sub.PublicID), slog.Int("pushes", late))
	}
	if busy {
		// Some pushes are still in progress (their claims, or a push job,
		// hold them): look again once a claim could have lapsed.
		return river.JobSnooze(claimLease)
	}
	return nil
}

// mailboxThrottle holds the Retry-After Graph gave for each mailbox.
type mailboxThrottle struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// hold stops calls for mailbox for d.
func (t *mailboxThrottle) hold(mailbox string, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.until == nil {
		t.until = map[string]time.Time{}
	}
	now := time.Now()
	for k, u := range t.until { // forget the past ones, so the map stays small
		if u.Before(now) {
			delete(t.until, k)
		}
	}
	if u := now.Add(d); u.After(t.until[mailbox]) {
		t.until[mailbox] = u
	}
}

// wait returns once calls for mailbox may be made, or ctx ended.
func (t *mailboxThrottle) wait(ctx context.Context, mailbox string) error {
	t.mu.Lock()
	until := t.until[mailbox]
	t.mu.Unlock()
	d := time.Until(until)
	if d <= 0 {
		return nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readBody reads a request body of at most limit bytes.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
}

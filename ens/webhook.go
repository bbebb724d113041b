package ens

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/store"
)

// errForgedCallback covers every way a callback can fail authentication.
// They are answered alike, so the webhook is no oracle.
var errForgedCallback = errors.New("callback failed authentication")

// decoy gives unknown ids the same work as known ones (one AES-GCM open),
// so timing does not tell which subscription ids exist.
var decoy = seal.NewSubscriptionKey().Seal("decoy", make([]byte, 512))

// openCallback authenticates Exchange's callback (and Graph's, whose
// clientState is the key): the id names a subscription and f must be the
// key its credentials are sealed under. It costs one indexed query and one
// AES-GCM open, and no call to Exchange.
func (s *Service) openCallback(ctx context.Context, publicID, f string) (*sealed, error) {
	key, keyErr := seal.ParseSubscriptionKey(f)
	sub, err := s.store.SubscriptionByPublicID(ctx, publicID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	if err != nil || keyErr != nil {
		key.Open("decoy", decoy)
		return nil, errForgedCallback
	}
	return s.open(sub, key)
}

// takeSlot takes one of the node's in-flight slots for a callback (from
// Exchange or Graph), or answers 503; release gives it back. Past the
// bound the source retries: nothing is buffered.
func (s *Service) takeSlot(w http.ResponseWriter) (release func(), ok bool) {
	select {
	case s.inFlight <- struct{}{}:
		notificationsInFlight.Inc()
		return func() { <-s.inFlight; notificationsInFlight.Dec() }, true
	default:
		overloaded(w)
		return nil, false
	}
}

// overloaded answers 503: the source retries later.
func overloaded(w http.ResponseWriter) {
	notifications.WithLabelValues("overloaded").Inc()
	w.Header().Set("Retry-After", "1")
	http.Error(w, "too many notifications in flight; try again later", http.StatusServiceUnavailable)
}

// callback authenticates a callback of source (openCallback: the key must
// open a subscription of that source; another source's key is refused like
// a wrong one) and applies the subscription's callback rate. It answers
// the request itself when it returns nil.
func (s *Service) callback(w http.ResponseWriter, r *http.Request, source, publicID, key string) *sealed {
	o, err := s.openCallback(r.Context(), publicID, key)
	if err == nil && o.sub.Source != source {
		err = errForgedCallback
	}
	if errors.Is(err, errForgedCallback) {
		notifications.WithLabelValues("forged").Inc()
		s.log.Debug("callback refused: unknown subscription or wrong key", slog.String("source", source))
		http.Error(w, "forbidden", http.StatusForbidden)
		return nil
	}
	if err != nil {
		notifications.WithLabelValues("retry").Inc()
		s.log.Error("callback: cannot load the subscription", slog.String("source", source), slog.Any("error", err))
		http.Error(w, "try again later", http.StatusServiceUnavailable)
		return nil
	}
	if !s.limits.callback.get(o.sub.ID).Allow() {
		notifications.WithLabelValues("throttled").Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many notifications for this subscription; try again later", http.StatusServiceUnavailable)
		return nil
	}
	return o
}

// notify is Exchange's webhook: it answers SendNotificationResult OK once
// the pushes are handed to APNs/FCM, Unsubscribe for a subscription that is
// over, and an HTTP error when Exchange should retry later.
func (s *Service) notify(w http.ResponseWriter, r *http.Request) {
	release, ok := s.takeSlot(w)
	if !ok {
		return
	}
	defer release()
	arrived := time.Now()
	ctx := r.Context()
	q := r.URL.Query()
	o := s.callback(w, r, store.SourceEWS, q.Get("id"), q.Get("f"))
	if o == nil {
		return
	}
	sub, creds := o.sub, o.creds
	log := s.log.With(slog.String("subscription", sub.PublicID))
	n, err := ews.ParseSendNotification(r.Body)
	if err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, ews.ErrTooLarge) {
			status = http.StatusRequestEntityTooLarge
		}
		notifications.WithLabelValues("malformed").Inc()
		log.Warn("callback: unreadable SendNotification", slog.Any("error", err))
		http.Error(w, "malformed SendNotification", status)
		return
	}
	result := ews.SubscriptionUnsubscribe
	switch {
	case sub.State != store.SubscriptionActive || n.SubscriptionID != sub.RemoteID:
		log.Info("ending a subscription that is over", slog.String("state", sub.State), slog.String("reason", sub.StateReason))
	case creds.InboxID == "":
		err = s.reverify(ctx, log, sub)
	default:
		result, err = s.handleNotification(ctx, log, o, n, arrived)
	}
	if err != nil {
		notifications.WithLabelValues("retry").Inc()
		log.Warn("notification not handled; Exchange will retry", slog.Any("error", err))
		http.Error(w, "try again later", http.StatusServiceUnavailable)
		return
	}
	notifications.WithLabelValues(strings.ToLower(string(result))).Inc()
	body, err := ews.BuildSendNotificationResult(result)
	if err != nil {
		log.Error("building SendNotificationResult", slog.Any("error", err))
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.Write(body)
}

// reverify ends a subscription made before mailbox binding, whose
// credentials were never checked to log in to its mailbox, and asks its
// devices (deactivated by the upgrade) to register again, through the check.
func (s *Service) reverify(ctx context.Context, log *slog.Logger, sub store.Subscription) error {
	changed, err := s.store.StopSubscription(ctx, sub.ID, store.SubscriptionFailed, store.ReasonReverify,
		s.askToReregister(reregisterArgs{Tenant: sub.TenantID, Mailbox: sub.MailboxHash, Reverify: true}))
	if err != nil || !changed {
		return err // the node that changed it asks the devices
	}
	log.Info("ending a subscription made before mailbox binding; asking its devices to register again")
	return nil
}

// handleNotification records Exchange's liveness and pushes new mail.
func (s *Service) handleNotification(ctx context.Context, log *slog.Logger, o *sealed, n *ews.Notification, arrived time.Time) (ews.SubscriptionStatus, error) {
	sub := o.sub
	devices, err := s.store.ActiveDevices(ctx, sub.TenantID, sub.MailboxHash)
	if err != nil {
		return "", err
	}
	if len(devices) == 0 {
		if _, err := s.store.StopSubscription(ctx, sub.ID, store.SubscriptionEnded, store.ReasonNoDevices, nil); err != nil {
			return "", err
		}
		log.Info("ending a subscription without devices")
		return ews.SubscriptionUnsubscribe, nil
	}
	if err := s.store.MarkSeen(ctx, sub.ID, lastWatermark(n)); err != nil {
		return "", err
	}
	items := newItems(n, sub.CreatedAt, s.cfg.Now())
	if len(items) == 0 {
		return ews.SubscriptionOK, nil
	}
	if devices, err = s.compliantDevices(ctx, devices); err != nil || len(devices) == 0 {
		// None may get mail now; the subscription stays for when one may.
		return ews.SubscriptionOK, err
	}
	tenant, err := s.store.TenantByID(ctx, sub.TenantID)
	if err != nil {
		return "", err
	}
	ep, err := s.endpointByID(ctx, sub.EndpointID)
	if err != nil {
		return "", err
	}
	d := &delivery{s: s, log: log, sealed: o, tenant: tenant, devices: devices, arrived: arrived}
	return s.deliverEWS(ctx, d, ep, items)
}

// What one notification may make ENS do. The callback URL is a secret,
// but one that was captured must not replay old mail or amplify a request.
const (
	// maxItemsPerNotification bounds the items one notification announces
	// (and fetches): the newest; the badge counts the rest. A 1 MiB body
	// can name thousands. Exchange sends a backlog as a succession of
	// notifications (MoreEvents), each a batch of events, two per new
	// item: 50 items leaves room for any batch seen, while a captured
	// callback URL, also rate-limited per subscription, fetches little.
	maxItemsPerNotification = 50
	// maxItemAge: Exchange gives up a notification once StatusFrequency (at
	// most 24 hours) has passed without an answer, so an item older than
	// this is a replay and is never announced.
	maxItemAge = 25 * time.Hour
	// pushMemory is how long done pushes are remembered: beyond maxItemAge,
	// so that any replay young enough to pass the age check finds its
	// pushes done.
	pushMemory = 48 * time.Hour
	// clockSkew is how far Exchange's clock may be from ours.
	clockSkew = 2 * time.Minute
)

// newItems lists the items that arrived, once each (Exchange reports a new
// message as a CreatedEvent and a NewMailEvent), newest last, at most
// maxItemsPerNotification. Events from before the subscription (allowing
// for clock skew) or older than maxItemAge are replays: skipped.
func newItems(n *ews.Notification, subscribed, now time.Time) []ews.ItemID {
	var items []ews.ItemID
	seen := map[string]bool{}
	notBefore := oldestNew(subscribed, now)
	for _, ev := range n.Events {
		if (ev.Type != ews.NewMailEvent && ev.Type != ews.CreatedEvent) || ev.ItemID.ID == "" || seen[ev.ItemID.ID] {
			continue
		}
		seen[ev.ItemID.ID] = true
		if ev.TimeStamp.Before(notBefore) {
			itemsIgnored.WithLabelValues("stale").Inc()
			continue
		}
		items = append(items, ev.ItemID)
	}
	return newest(items)
}

// newest keeps the newest maxItemsPerNotification of items (the last),
// counting the others as ignored: the badge still counts them.
func newest[T any](items []T) []T {
	if over := len(items) - maxItemsPerNotification; over > 0 {
		itemsIgnored.WithLabelValues("over_cap").Add(float64(over))
		return items[over:]
	}
	return items
}

// oldestNew is the earliest time an item announced now may have arrived.
func oldestNew(subscribed, now time.Time) time.Time {
	t := subscribed.Add(-clockSkew)
	if aged := now.Add(-maxItemAge); aged.After(t) {
		return aged
	}
	return t
}

func lastWatermark(n *ews.Notification) string {
	for i := len(n.Events) - 1; i >= 0; i-- {
		if n.Events[i].Watermark != "" {
			return n.Events[i].Watermark
		}
	}
	return ""
}

// ItemHash keys push claims; Exchange's item ids are long. An id is
// base64, which Exchange decodes leniently (whitespace, missing padding),
// so one item has many spellings: the hash is of the decoded bytes, or a
// replay could respell an id to have it pushed again. (Exported, with
// CollapseID, for tests that watch pushes from outside.)
func ItemHash(id string) []byte {
	canonical := []byte(id)
	compact := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, id)
	if raw, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(compact, "=")); err == nil {
		canonical = append([]byte("b64:"), raw...)
	}
	sum := sha256.Sum256(canonical)
	return sum[:16]
}

// callbackURL is ENS_PUBLIC_URL/api/ens/notify?id=…&f=…: 43 characters of
// key and 22 of id, far below EWS's 2082-character limit whatever the
// credentials are.
func (s *Service) callbackURL(publicID string, key seal.SubscriptionKey) string {
	u := *s.cfg.PublicURL
	u.Path += BasePath + "/notify"
	u.RawQuery = url.Values{"id": {publicID}, "f": {key.String()}}.Encode()
	return u.String()
}

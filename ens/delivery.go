package ens

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/oauth"
	"github.com/ensgate/ensgate/privacy"
	"github.com/ensgate/ensgate/store"
)

// claimLease is how long a node owns an (item, device) push before another
// may take it over: longer than a push may take with its retries
// (PushTimeBudget) and a GetItem.
const claimLease = PushTimeBudget + DefaultEWSTimeout + 5*time.Second

// PushTimeBudget is the most time one push may take, retries included; the
// host configures its push senders within it.
const PushTimeBudget = 20 * time.Second

// pushingBudget is how long a notification's pushes may be tried before
// its source is answered: past it, and for a platform that already failed
// in this notification, pushes go to jobs untried, so that a notification
// of many items is answered within the source's timeout while APNs or FCM
// is away.
const pushingBudget = 10 * time.Second

// errPushInProgress: another node owns some of this item's pushes.
var errPushInProgress = errors.New("another node is pushing this item")

// delivery turns one notification's new items into pushes, whatever the
// mail source: src reads the mail (ews_source.go, graph_source.go).
type delivery struct {
	s   *Service
	log *slog.Logger
	*sealed
	src     mailSource
	tenant  store.Tenant
	devices []store.Device
	badge   *int      // unread count once fetched
	arrived time.Time // when the source's callback arrived
	// accepted is the device list of the latest EWS answer that carried
	// one (an ENSGate EWS proxy's), nil while none has (Graph: always).
	accepted []string
	// down are the platforms whose push failed in this delivery.
	down map[push.Platform]bool
}

// mailSource is where a delivery reads mail.
type mailSource interface {
	// content fetches an item's sender, subject and preview.
	// errNotAnnounced: there is nothing to announce (the item is gone, is
	// not new mail of the Inbox, or the EWS proxy refused the devices).
	content(ctx context.Context, id string) (*mailContent, error)
	// unreadCount is the Inbox's unread count, -1 when unknown;
	// errNotAnnounced when the EWS proxy refused the devices.
	unreadCount(ctx context.Context) (int, error)
	// refused reports whether err is the source refusing the credentials.
	refused(err error) bool
	// refresh replaces a refused access token from the refresh token:
	// errNoRefreshToken without one, oauth.ErrInvalidGrant when the user
	// must sign in again.
	refresh(ctx context.Context) error
	// vetsEveryItem: the item is read (content's check of folder and age)
	// even when no device shows its content, because the notification
	// says nothing of when it arrived (Graph; EWS events carry a time).
	vetsEveryItem() bool
}

// mailContent is what a push may show of a mail, as far as the level lets.
type mailContent struct {
	FromName, FromAddress, Subject, Preview string
}

// errNotAnnounced: an item that is not to be announced (see mailSource).
var errNotAnnounced = errors.New("nothing to announce")

// level is what a device may be shown.
func (d *delivery) level(dev store.Device) privacy.Level {
	return privacy.For(d.tenant.NotificationLevel, dev.NotificationLevel)
}

// run pushes each item. A refused access token is refreshed once; a refusal
// that stands fails the subscription (credentialsRefused). It reports
// whether the subscription is over.
func (d *delivery) run(ctx context.Context, items []string) (over bool, err error) {
	refreshed := false
	var retry error
	for _, id := range items {
		ended, err := d.item(ctx, id)
		if d.src.refused(err) && !refreshed {
			refreshed = true
			switch rerr := d.src.refresh(ctx); {
			case rerr == nil:
				ended, err = d.item(ctx, id)
			case errors.Is(rerr, oauth.ErrInvalidGrant):
				d.log.Info("the access token was refused and its refresh token too", slog.Any("error", rerr))
			case !errors.Is(rerr, errNoRefreshToken):
				return false, errors.Join(err, rerr) // the token endpoint is away: retry later
			}
		}
		if d.src.refused(err) {
			return true, d.credentialsRefused(ctx)
		}
		if err != nil {
			retry = err
		}
		over = over || ended
	}
	return over, retry
}

// item pushes one new item to the devices whose push for it is not done or
// in progress elsewhere, and reports whether that ended the subscription
// (its last device's token is dead). The content is fetched only if a
// device may see it.
func (d *delivery) item(ctx context.Context, id string) (ended bool, err error) {
	hash := ItemHash(id)
	ids := make([]int64, len(d.devices))
	for i, dev := range d.devices {
		ids[i] = dev.ID
	}
	claimed, othersPending, err := d.s.store.ClaimPushes(ctx, d.sub.ID, hash, ids, claimLease)
	if err != nil {
		return false, err
	}
	var pending error
	if othersPending {
		// Another node is pushing this item; the source's retry will find
		// it done, or the claim expired because that node died.
		pending = errPushInProgress
	}
	if len(claimed) == 0 {
		return false, pending
	}
	release := func(err error) (bool, error) {
		return false, errors.Join(err, d.s.store.ReleasePushes(context.WithoutCancel(ctx), d.sub.ID, hash, claimed))
	}
	targets := d.claimedDevices(claimed)

	var mail *mailContent
	if d.needsContent(targets) || d.src.vetsEveryItem() {
		mail, err = d.src.content(ctx, id)
		if errors.Is(err, errNotAnnounced) {
			return false, d.s.store.FinishPushes(ctx, d.sub.ID, hash, claimed, store.PushNotAnnounced)
		}
		if err != nil {
			return release(err)
		}
	}
	badge, err := d.unreadCount(ctx)
	if errors.Is(err, errNotAnnounced) {
		return false, d.s.store.FinishPushes(ctx, d.sub.ID, hash, claimed, store.PushNotAnnounced)
	}
	if err != nil {
		return release(err)
	}
	// Devices the proxy did not accept are done with for this item.
	targets, notAccepted := d.acceptedByProxy(targets)
	outcomes := map[store.PushOutcome][]int64{store.PushNotAnnounced: notAccepted}
	results := make([]push.Result, len(targets))
	var wg sync.WaitGroup
	late := time.Since(d.arrived) > pushingBudget
	for i, dev := range targets {
		if late || d.down[push.Platform(dev.Platform)] {
			results[i] = push.Result{Outcome: push.Failed, Reason: "not tried: the platform failed or the time is up"}
			continue
		}
		wg.Go(func() {
			m := newMailMessage(dev, d.level(dev), mail, badge)
			m.CollapseID = CollapseID(dev.MailboxHash, hash)
			results[i] = d.s.push.Send(ctx, m)
		})
	}
	wg.Wait()
	for i, res := range results {
		if res.Outcome == push.Failed {
			if d.down == nil {
				d.down = map[push.Platform]bool{}
			}
			d.down[push.Platform(targets[i].Platform)] = true
		}
	}

	var failed []int64
	for i, res := range results {
		dev := targets[i]
		switch res.Outcome {
		case push.Failed:
			failed = append(failed, dev.ID)
		case push.TokenDead:
			last, err := d.s.store.SetDeviceState(ctx, d.tenant.ID, dev.DeviceID, store.DeviceInactive, "push token dead: "+res.Reason)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return false, err
			}
			ended = ended || last
			outcomes[store.PushTokenDead] = append(outcomes[store.PushTokenDead], dev.ID)
		case push.Rejected:
			d.log.Warn("push rejected", slog.String("device", dev.DeviceID), slog.String("reason", res.Reason))
			outcomes[store.PushRejected] = append(outcomes[store.PushRejected], dev.ID)
		case push.Delivered:
			webhookToPush.Observe(time.Since(d.arrived).Seconds())
			outcomes[store.PushDelivered] = append(outcomes[store.PushDelivered], dev.ID)
		}
	}
	for outcome, devices := range outcomes {
		if err := d.s.store.FinishPushes(ctx, d.sub.ID, hash, devices, outcome); err != nil {
			return false, err
		}
	}
	if len(failed) > 0 {
		// APNs or FCM did not take them within the budget: a job retries
		// them from the database and the source is answered.
		if err := d.s.queuePushes(ctx, d.sub.ID, hash, failed, badge, d.arrived); err != nil {
			err = fmt.Errorf("%d of %d pushes failed and could not be queued: %w", len(failed), len(targets), err)
			return false, errors.Join(err, d.s.store.ReleasePushes(context.WithoutCancel(ctx), d.sub.ID, hash, failed))
		}
		d.log.Info("pushes not taken by APNs or FCM; queued for retry", slog.Int("pushes", len(failed)))
	}
	return ended, pending
}

// unreadCount is the Inbox's unread count for the badge, fetched once per
// notification and only when something is pushed.
func (d *delivery) unreadCount(ctx context.Context) (int, error) {
	if d.badge != nil {
		return *d.badge, nil
	}
	badge, err := d.src.unreadCount(ctx)
	if err != nil {
		return 0, err
	}
	d.badge = &badge
	return badge, nil
}

func (d *delivery) claimedDevices(claimed []int64) []store.Device {
	mine := make(map[int64]bool, len(claimed))
	for _, id := range claimed {
		mine[id] = true
	}
	var devs []store.Device
	for _, dev := range d.devices {
		if mine[dev.ID] {
			devs = append(devs, dev)
		}
	}
	return devs
}

// needsContent: only a level that shows the sender fetches the item.
func (d *delivery) needsContent(devs []store.Device) bool {
	for _, dev := range devs {
		if d.level(dev).ShowsSender() {
			return true
		}
	}
	return false
}

// credentialsRefused handles the source's refusal of the credentials (a
// password changed, a token expired that no refresh token renews): the
// subscription fails once, its devices are asked to register again (with a
// generic notice where the level allows), and the source is told to stop,
// so no retry storm follows.
func (d *delivery) credentialsRefused(ctx context.Context) error {
	return d.s.credentialsRefused(ctx, d.log, d.sealed, true)
}

func baseMessage(dev store.Device) push.Message {
	return push.Message{Platform: push.Platform(dev.Platform), Token: dev.PushToken, Topic: dev.Topic,
		ThreadID: threadID(dev.MailboxHash), RegisteredAt: dev.RegisteredAt}
}

// newMailMessage builds the push for one device at its level (package
// privacy): sender, subject and preview as far as it shows them; a generic
// "New message"; or only the badge.
func newMailMessage(dev store.Device, level privacy.Level, mail *mailContent, badge int) push.Message {
	m := baseMessage(dev)
	m.Kind = push.NewMail
	m.Badge = badge
	if !level.ShowsSender() {
		m.Generic = level.ShowsAlert()
		return m
	}
	// A level that shows the sender has had the item fetched (needsContent).
	m.Title = cmp.Or(mail.FromName, mail.FromAddress)
	if level.ShowsSubject() {
		m.Subject = mail.Subject
	}
	if level.ShowsPreview() {
		m.Preview = mail.Preview
	}
	return m
}

// CollapseID names one item of one mailbox, the same in every push of it:
// a push sent again (a node died after APNs or FCM accepted it, before the
// claim was finished) replaces the first on the device instead of showing
// twice (APNs apns-collapse-id; FCM data "item", which the app keys on).
// Opaque: it reveals neither the mailbox nor the item.
func CollapseID(mailboxHash, itemHash []byte) string {
	sum := sha256.Sum256(append(append([]byte("ensgate item "), mailboxHash...), itemHash...))
	return base64.RawURLEncoding.EncodeToString(sum[:18])
}

// threadID groups a mailbox's notifications on the phone without naming it.
func threadID(mailboxHash []byte) string {
	sum := sha256.Sum256(append([]byte("ensgate thread "), mailboxHash...))
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

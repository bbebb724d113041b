package ens

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/ews"
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

// errPushInProgress: another node owns some of this item's pushes.
var errPushInProgress = errors.New("another node is pushing this item")

// delivery turns one notification's new items into pushes.
type delivery struct {
	s       *Service
	log     *slog.Logger
	sub     store.Subscription
	creds   *credentials
	tenant  store.Tenant
	devices []store.Device
	ep      *endpoint
	badge   *int      // unread count once fetched
	arrived time.Time // when Exchange's callback arrived
	// calls are the options of each EWS call: sign the devices'
	// attestation into it, and record its answer's header in answer.
	calls []ews.CallOption
	// answer is the header of the latest EWS answer.
	answer http.Header
	// accepted is the device list of the latest answer that carried one
	// (an ENSGate EWS proxy's), nil while none has.
	accepted []string
}

// level is what a device may be shown.
func (d *delivery) level(dev store.Device) privacy.Level {
	return privacy.For(d.tenant.NotificationLevel, dev.NotificationLevel)
}

func (d *delivery) run(ctx context.Context, items []ews.ItemID) (ews.SubscriptionStatus, error) {
	client, done, err := d.s.ewsClient(d.ep, d.creds)
	if err != nil {
		return "", err
	}
	defer done()
	release, err := d.ep.acquire(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	acct := d.creds.account()
	ids := make([]string, len(d.devices))
	for i, dev := range d.devices {
		ids[i] = dev.DeviceID
	}
	d.calls = []ews.CallOption{d.s.attestation(d.tenant.ID, ids), ews.ResponseHeader(&d.answer)}

	var retry error
	ended := false
	for _, id := range items {
		status, err := d.item(ctx, client, acct, id)
		if errors.Is(err, ews.ErrUnauthorized) {
			return d.credentialsRefused(ctx)
		}
		if err != nil {
			retry = err
		}
		ended = ended || status == ews.SubscriptionUnsubscribe
	}
	if retry != nil {
		return "", retry
	}
	if ended {
		return ews.SubscriptionUnsubscribe, nil
	}
	return ews.SubscriptionOK, nil
}

// item pushes one new item to the devices whose push for it is not done or
// in progress elsewhere. GetItem is called only if a device may see content.
func (d *delivery) item(ctx context.Context, client *ews.Client, acct ews.Account, id ews.ItemID) (ews.SubscriptionStatus, error) {
	hash := itemHash(id)
	ids := make([]int64, len(d.devices))
	for i, dev := range d.devices {
		ids[i] = dev.ID
	}
	claimed, othersPending, err := d.s.store.ClaimPushes(ctx, d.sub.ID, hash, ids, claimLease)
	if err != nil {
		return "", err
	}
	var pending error
	if othersPending {
		// Another node is pushing this item; Exchange's retry will find it
		// done, or the claim expired because that node died.
		pending = errPushInProgress
	}
	if len(claimed) == 0 {
		return ews.SubscriptionOK, pending
	}
	targets := d.claimedDevices(claimed)

	var item *ews.Item
	if d.needsContent(targets) {
		item, err = client.GetItem(ctx, acct, id, d.calls...)
		d.noteProxyAnswer()
		if errors.Is(err, ews.ErrItemNotFound) || refusedByProxy(err) || (err == nil && !announceable(item, d.sub, d.creds, d.s.cfg.Now())) {
			// Deleted or moved before we looked, no device may see mail, or
			// not new mail of this Inbox (a replay): nothing to announce.
			return ews.SubscriptionOK, d.s.store.FinishPushes(ctx, d.sub.ID, hash, claimed, store.PushNotAnnounced)
		}
		if err != nil {
			return "", errors.Join(err, d.s.store.ReleasePushes(context.WithoutCancel(ctx), d.sub.ID, hash, claimed))
		}
	}

	badge, err := d.unreadCount(ctx, client, acct)
	if refusedByProxy(err) {
		return ews.SubscriptionOK, d.s.store.FinishPushes(ctx, d.sub.ID, hash, claimed, store.PushNotAnnounced)
	}
	if err != nil {
		return "", errors.Join(err, d.s.store.ReleasePushes(context.WithoutCancel(ctx), d.sub.ID, hash, claimed))
	}
	// Devices the proxy did not accept are done with for this item.
	targets, notAccepted := d.acceptedByProxy(targets)
	outcomes := map[store.PushOutcome][]int64{store.PushNotAnnounced: notAccepted}
	results := make([]push.Result, len(targets))
	var wg sync.WaitGroup
	for i, dev := range targets {
		wg.Go(func() {
			m := newMailMessage(dev, d.level(dev), item, badge)
			m.CollapseID = collapseID(dev.MailboxHash, hash)
			results[i] = d.s.push.Send(ctx, m)
		})
	}
	wg.Wait()

	status := ews.SubscriptionOK
	var failed []int64
	for i, res := range results {
		dev := targets[i]
		switch res.Outcome {
		case push.Failed:
			failed = append(failed, dev.ID)
		case push.TokenDead:
			ended, err := d.s.store.SetDeviceState(ctx, d.tenant.ID, dev.DeviceID, store.DeviceInactive, "push token dead: "+res.Reason)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return "", err
			}
			if ended {
				status = ews.SubscriptionUnsubscribe
			}
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
			return "", err
		}
	}
	if len(failed) > 0 {
		// APNs or FCM did not take them within the budget: a job retries
		// them from the database and Exchange is answered.
		if err := d.s.queuePushes(ctx, d.sub.ID, hash, failed, badge, d.arrived); err != nil {
			err = errors.Join(fmt.Errorf("%d of %d pushes failed and could not be queued", len(failed), len(targets)), err)
			return "", errors.Join(err, d.s.store.ReleasePushes(context.WithoutCancel(ctx), d.sub.ID, hash, failed))
		}
		d.log.Info("pushes not taken by APNs or FCM; queued for retry", slog.Int("pushes", len(failed)))
	}
	return status, pending
}

// unreadCount is the Inbox's unread count for the badge, fetched once per
// notification and only when something is pushed. Only a refusal of the
// credentials is an error; otherwise the push leaves the badge alone (-1).
func (d *delivery) unreadCount(ctx context.Context, client *ews.Client, acct ews.Account) (int, error) {
	if d.badge != nil {
		return *d.badge, nil
	}
	badge := -1
	inbox, err := client.GetInbox(ctx, acct, d.calls...)
	d.noteProxyAnswer()
	switch {
	case err == nil:
		badge = inbox.UnreadCount
	case errors.Is(err, ews.ErrUnauthorized) || refusedByProxy(err):
		return 0, err
	default:
		d.log.Warn("unread count unavailable; pushing without a badge", slog.Any("error", err))
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

// credentialsRefused handles Exchange's 401 (password changed, token
// expired): the subscription fails once, its devices are asked to register
// again (with a generic notice where the level allows), and Exchange is
// told to stop, so no retry storm follows.
func (d *delivery) credentialsRefused(ctx context.Context) (ews.SubscriptionStatus, error) {
	changed, err := d.s.store.StopSubscription(ctx, d.sub.ID, store.SubscriptionFailed, store.ReasonUnauthorized,
		d.s.askToReregister(reregisterArgs{Tenant: d.tenant.ID, Mailbox: d.sub.MailboxHash, NewMail: true}))
	if err != nil {
		return "", err
	}
	if changed {
		d.log.Info("Exchange refused the credentials; asking the devices to register again")
	}
	return ews.SubscriptionUnsubscribe, nil
}

func baseMessage(dev store.Device) push.Message {
	return push.Message{Platform: push.Platform(dev.Platform), Token: dev.PushToken, Topic: dev.Topic,
		ThreadID: threadID(dev.MailboxHash), RegisteredAt: dev.RegisteredAt}
}

// newMailMessage builds the push for one device at its level (package
// privacy): sender, subject and preview as far as it shows them; a generic
// "New message"; or only the badge.
func newMailMessage(dev store.Device, level privacy.Level, item *ews.Item, badge int) push.Message {
	m := baseMessage(dev)
	m.Kind = push.NewMail
	m.Badge = badge
	if !level.ShowsSender() {
		m.Generic = level.ShowsAlert()
		return m
	}
	// A level that shows the sender has had the item fetched (needsContent).
	m.Title = item.From.Name
	if m.Title == "" {
		m.Title = item.From.EmailAddress
	}
	if level.ShowsSubject() {
		m.Subject = item.Subject
	}
	if level.ShowsPreview() {
		m.Preview = item.Preview
	}
	return m
}

// collapseID names one item of one mailbox, the same in every push of it:
// a push sent again (a node died after APNs or FCM accepted it, before the
// claim was finished) replaces the first on the device instead of showing
// twice (APNs apns-collapse-id; FCM data "item", which the app keys on).
// Opaque: it reveals neither the mailbox nor the item.
func collapseID(mailboxHash, itemHash []byte) string {
	sum := sha256.Sum256(append(append([]byte("ensgate item "), mailboxHash...), itemHash...))
	return base64.RawURLEncoding.EncodeToString(sum[:18])
}

// threadID groups a mailbox's notifications on the phone without naming it.
func threadID(mailboxHash []byte) string {
	sum := sha256.Sum256(append([]byte("ensgate thread "), mailboxHash...))
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

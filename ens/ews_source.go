package ens

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/oauth"
	"github.com/ensgate/ensgate/store"
)

// ewsSource reads a delivery's mail from Exchange through EWS: with the
// endpoint's shared client (a certificate's own for certificate users),
// every call signed with the devices' attestation for an ENSGate EWS proxy
// in front of Exchange, whose answers name the devices it accepted.
type ewsSource struct {
	d      *delivery
	ep     *endpoint
	client *ews.Client
	acct   ews.Account
	calls  []ews.CallOption
	answer http.Header // the latest EWS answer's header
}

func (e *ewsSource) content(ctx context.Context, id string) (*mailContent, error) {
	item, err := e.client.GetItem(ctx, e.acct, ews.ItemID{ID: id}, e.calls...)
	e.noteProxyAnswer()
	switch {
	case errors.Is(err, ews.ErrItemNotFound) || refusedByProxy(err):
		// Deleted or moved before we looked, or no device may see mail.
		return nil, errNotAnnounced
	case err != nil:
		return nil, err
	case !announceable(item.ParentFolderID.ID, item.DateTimeReceived, e.d.sub, e.d.creds, e.d.s.cfg.Now()):
		return nil, errNotAnnounced
	}
	return &mailContent{FromName: item.From.Name, FromAddress: item.From.EmailAddress, Subject: item.Subject, Preview: item.Preview}, nil
}

// unreadCount: only a refusal (of the credentials, or of the devices by
// the proxy) is an error; otherwise the push leaves the badge alone.
func (e *ewsSource) unreadCount(ctx context.Context) (int, error) {
	inbox, err := e.client.GetInbox(ctx, e.acct, e.calls...)
	e.noteProxyAnswer()
	switch {
	case err == nil:
		return inbox.UnreadCount, nil
	case refusedByProxy(err):
		return 0, errNotAnnounced
	case errors.Is(err, ews.ErrUnauthorized):
		return 0, err
	}
	e.d.log.Warn("unread count unavailable; pushing without a badge", slog.Any("error", err))
	return -1, nil
}

func (e *ewsSource) refused(err error) bool { return errors.Is(err, ews.ErrUnauthorized) }

func (e *ewsSource) vetsEveryItem() bool { return false }

func (e *ewsSource) refresh(ctx context.Context) error {
	if err := e.d.s.freshAccess(ctx, e.d.sealed, e.ep.OAuth, true); err != nil {
		return err
	}
	e.acct = e.d.creds.account()
	return nil
}

// deliverEWS pushes the new items of an Exchange notification and answers
// what Exchange is to be told.
func (s *Service) deliverEWS(ctx context.Context, d *delivery, ep *endpoint, items []ews.ItemID) (ews.SubscriptionStatus, error) {
	client, done, err := s.ewsClient(ep, d.creds)
	if err != nil {
		return "", err
	}
	defer done()
	release, err := ep.acquire(ctx)
	if err != nil {
		return "", err
	}
	defer release()
	// An access token about to expire is replaced first (when a refresh
	// token came with it); one that cannot be is tried anyway.
	if err := s.freshAccess(ctx, d.sealed, ep.OAuth, false); errors.Is(err, oauth.ErrInvalidGrant) {
		return ews.SubscriptionUnsubscribe, d.credentialsRefused(ctx)
	} else if err != nil {
		d.log.Warn("refreshing the access token; trying the current one", slog.Any("error", err))
	}
	devices := make([]string, len(d.devices))
	for i, dev := range d.devices {
		devices[i] = dev.DeviceID
	}
	src := &ewsSource{d: d, ep: ep, client: client, acct: d.creds.account()}
	src.calls = []ews.CallOption{s.attestation(d.tenant.ID, devices), ews.ResponseHeader(&src.answer)}
	d.src = src
	ids := make([]string, len(items))
	for i, item := range items {
		ids[i] = item.ID
	}
	over, err := d.run(ctx, ids)
	if over {
		return ews.SubscriptionUnsubscribe, err
	}
	return ews.SubscriptionOK, err
}

// announceable tells whether a fetched item may be announced: it is in
// the subscribed Inbox (when the subscription recorded it) and arrived
// after the subscription began and within maxItemAge.
func announceable(folderID string, received time.Time, sub store.Subscription, creds *credentials, now time.Time) bool {
	if creds.InboxID != "" && folderID != creds.InboxID {
		itemsIgnored.WithLabelValues("not_inbox").Inc()
		return false
	}
	if received.Before(oldestNew(sub.CreatedAt, now)) {
		itemsIgnored.WithLabelValues("stale").Inc()
		return false
	}
	return true
}

package graph

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"
)

// Graph's limits for the subscriptions ENS makes (Outlook messages,
// without resource data). Microsoft's current change-notifications
// overview gives 10,080 minutes (under 7 days) for Outlook messages,
// events and contacts without resource data and 1,440 with it; older
// copies of the subscription resource page said 4,230 minutes.
const (
	// MaxExpiration is the longest a message subscription may live.
	MaxExpiration = 10080 * time.Minute
	// MaxExpirationWithResourceData applies to rich notifications
	// (includeResourceData), which ENS does not use.
	MaxExpirationWithResourceData = 1440 * time.Minute
	// MaxClientState is the longest clientState Graph accepts, in
	// characters.
	MaxClientState = 128
)

// DefaultResource is the signed-in user's Inbox messages.
const DefaultResource = "me/mailFolders('inbox')/messages"

// Change types.
const (
	Created = "created"
	Updated = "updated"
	Deleted = "deleted"
)

// SubscriptionRequest describes a subscription to create.
type SubscriptionRequest struct {
	// Resource; empty: DefaultResource.
	Resource string
	// ChangeTypes; empty: created.
	ChangeTypes []string
	// NotificationURL and LifecycleNotificationURL must be https (Graph
	// validates both with a validationToken POST before answering).
	// LifecycleNotificationURL is optional but can only be set here, not
	// added by a renewal.
	NotificationURL          string
	LifecycleNotificationURL string
	// ClientState is echoed in every notification (at most
	// MaxClientState characters).
	ClientState string
	// Expiration: at most MaxExpiration from Graph's now; required.
	Expiration time.Time
}

// Subscription is Graph's answer about a subscription.
type Subscription struct {
	ID         string    `json:"id"`
	Resource   string    `json:"resource"`
	Expiration time.Time `json:"expirationDateTime"`
}

// graphTime formats an expiration as Graph's examples do.
func graphTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.0000000Z") }

// CreateSubscription creates a change-notification subscription.
func (c *Client) CreateSubscription(ctx context.Context, token string, req SubscriptionRequest) (Subscription, error) {
	if req.Resource == "" {
		req.Resource = DefaultResource
	}
	if len(req.ChangeTypes) == 0 {
		req.ChangeTypes = []string{Created}
	}
	for _, ct := range req.ChangeTypes {
		if ct != Created && ct != Updated && ct != Deleted {
			return Subscription{}, errors.New("graph: unknown change type")
		}
	}
	if req.NotificationURL == "" {
		return Subscription{}, errors.New("graph: a subscription needs a notification URL")
	}
	if req.Expiration.IsZero() {
		return Subscription{}, errors.New("graph: a subscription needs an expiration")
	}
	if utf8.RuneCountInString(req.ClientState) > MaxClientState {
		return Subscription{}, errors.New("graph: clientState is longer than 128 characters")
	}
	body := map[string]any{
		"changeType":         strings.Join(req.ChangeTypes, ","),
		"notificationUrl":    req.NotificationURL,
		"resource":           req.Resource,
		"expirationDateTime": graphTime(req.Expiration),
	}
	if req.LifecycleNotificationURL != "" {
		body["lifecycleNotificationUrl"] = req.LifecycleNotificationURL
	}
	if req.ClientState != "" {
		body["clientState"] = req.ClientState
	}
	var s Subscription
	err := c.do(ctx, token, request{method: http.MethodPost, url: c.url("/subscriptions", nil), body: body}, &s)
	return s, err
}

func (c *Client) subscriptionURL(id, tail string) (string, error) {
	if id == "" {
		return "", errors.New("graph: empty subscription id")
	}
	return c.url("/subscriptions/"+url.PathEscape(id)+tail, nil), nil
}

// RenewSubscription moves the subscription's expiration (PATCH); renewing
// also reauthorizes it. A subscription that is gone is ErrNotFound.
func (c *Client) RenewSubscription(ctx context.Context, token, id string, expiration time.Time) (Subscription, error) {
	u, err := c.subscriptionURL(id, "")
	if err != nil {
		return Subscription{}, err
	}
	var s Subscription
	err = c.do(ctx, token, request{method: http.MethodPatch, url: u, body: map[string]string{"expirationDateTime": graphTime(expiration)}}, &s)
	return s, err
}

// Reauthorize answers a reauthorizationRequired challenge with the
// (fresh) token, without moving the expiration.
func (c *Client) Reauthorize(ctx context.Context, token, id string) error {
	u, err := c.subscriptionURL(id, "/reauthorize")
	if err != nil {
		return err
	}
	return c.do(ctx, token, request{method: http.MethodPost, url: u}, nil)
}

// DeleteSubscription deletes the subscription; one already gone is
// ErrNotFound.
func (c *Client) DeleteSubscription(ctx context.Context, token, id string) error {
	u, err := c.subscriptionURL(id, "")
	if err != nil {
		return err
	}
	return c.do(ctx, token, request{method: http.MethodDelete, url: u}, nil)
}

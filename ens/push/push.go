// Package push delivers ENS notifications to devices through Apple's APNs
// (github.com/sideshow/apns2) and Firebase Cloud Messaging (HTTP v1).
//
// A Sender sends one Message to one device and reports a classified Result:
// the caller deactivates the device on TokenDead, may queue Failed for later,
// and drops Rejected. Senders retry transient failures themselves, with
// bounded exponential backoff, so a Result is final.
//
// Nothing here logs or labels metrics with device tokens or notification
// text; logs carry at most TokenHash(token).
package push

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// Platform names a push service.
type Platform string

// The platforms a device may register with.
const (
	IOS     Platform = "ios"
	Android Platform = "android"
)

// Kind is what a push asks the device to do.
type Kind int

const (
	// NewMail shows (as far as the privacy level allows) a new message.
	NewMail Kind = iota
	// Reregister is a silent push asking the app to register again.
	Reregister
)

// Message is one push to one device. Content is already limited by ENS to the
// device's privacy level.
type Message struct {
	Platform     Platform
	Token        string // device push token
	Topic        string // APNs topic (bundle id); "" = the sender's default topic
	Kind         Kind
	Title        string    // sender display name (levels 0-2) or ""
	Subject      string    // levels 0-1 or ""
	Preview      string    // level 0 or ""
	Generic      bool      // level 3: body "New message", no title
	Badge        int       // Inbox unread count; negative = leave the badge alone
	ThreadID     string    // opaque per-mailbox id (aps.thread-id; FCM collapse key per account)
	CollapseID   string    // one item's id, the same in every push of it: apns-collapse-id, FCM data "item"
	RegisteredAt time.Time // device registration time: an APNs 410 whose timestamp is older than this does not kill the token
}

// How long the push service keeps a push for an offline device (APNs
// apns-expiration, FCM android.ttl): new mail is stale after an hour, while
// a request to register again still matters the next day.
const (
	alertTTL      = time.Hour
	reregisterTTL = 24 * time.Hour
)

// Outcome classifies what became of a push.
type Outcome int

const (
	// Delivered: the push service accepted the push.
	Delivered Outcome = iota
	// TokenDead: the token is no longer valid; deactivate the device.
	TokenDead
	// Failed: transient failures until the retry bounds ran out (or the
	// caller's context ended); the push may be tried again later.
	Failed
	// Rejected: the push service (or this package) refused the push for a
	// reason retrying cannot fix: payload, topic, credentials, configuration.
	Rejected
)

var outcomeNames = [...]string{"delivered", "token_dead", "failed", "rejected"}

// String gives the outcome's metric label.
func (o Outcome) String() string {
	if o >= 0 && int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// Result is the final result of one Send.
type Result struct {
	Outcome  Outcome
	Reason   string // APNs reason / FCM error status, for logs and metrics
	Attempts int    // requests made (0 if none was)
	// Err is the last local error (network, TLS, token endpoint), if any. It
	// never contains the device token, so it may be logged.
	Err error
}

// Sender sends one push. Implementations are safe for concurrent use.
type Sender interface {
	Send(ctx context.Context, m Message) Result
}

// TokenHash is a short, stable, non-reversible tag for a device token, the
// only form of a token that may appear in logs.
func TokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:4])
}

// Reasons this package gives itself (the push services' own reasons are
// passed through as they come).
const (
	ReasonNotConfigured   = "platform not configured"
	ReasonUnknownPlatform = "unknown platform"
	ReasonEmpty           = "EmptyNotification" // nothing to show and no badge
	ReasonTooLarge        = "PayloadTooLarge"   // does not fit even without text
	ReasonNetwork         = "network"
	ReasonTimeout         = "timeout"
	ReasonTLS             = "tls"      // server certificate not trusted: a configuration problem
	ReasonCanceled        = "canceled" // the caller's context ended
)

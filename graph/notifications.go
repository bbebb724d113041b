package graph

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"
	"unicode/utf8"
)

// Lifecycle events (a lifecycle notification's lifecycleEvent).
const (
	// ReauthorizationRequired: the subscription's authorization (the
	// access token it was last created, renewed or reauthorized with) or
	// the subscription itself is about to expire; Reauthorize or
	// RenewSubscription with a fresh token, or notifications pause.
	ReauthorizationRequired = "reauthorizationRequired"
	// SubscriptionRemoved: Graph removed the subscription; create a new
	// one and catch up with a delta query.
	SubscriptionRemoved = "subscriptionRemoved"
	// Missed: some change notifications were not delivered; catch up with
	// a delta query.
	Missed = "missed"
)

// Limits of ParseNotifications. Graph does not document a batch size;
// these are far above what it sends and bound the work a forged POST can
// cause.
const (
	MaxNotificationBody = 1 << 20
	MaxNotifications    = 1000
	maxField            = 1024 // ids, resource paths
	maxShortField       = 128  // change types, events, tenant ids
)

// Notification is one change or lifecycle notification. Lifecycle
// notifications have LifecycleEvent set and no ChangeType, Resource or
// ResourceData.
type Notification struct {
	SubscriptionID         string
	ClientState            string
	ChangeType             string
	Resource               string
	ResourceData           ResourceData
	SubscriptionExpiration time.Time
	TenantID               string
	LifecycleEvent         string
}

// ResourceData identifies the changed message (without resource data,
// only its id and type).
type ResourceData struct {
	ID        string `json:"id"`
	ODataType string `json:"@odata.type"`
	ODataID   string `json:"@odata.id"`
}

// Lifecycle reports whether n is a lifecycle notification.
func (n Notification) Lifecycle() bool { return n.LifecycleEvent != "" }

type rawNotification struct {
	SubscriptionID         *string       `json:"subscriptionId"`
	ClientState            *string       `json:"clientState"`
	ChangeType             *string       `json:"changeType"`
	Resource               *string       `json:"resource"`
	ResourceData           *ResourceData `json:"resourceData"`
	SubscriptionExpiration *string       `json:"subscriptionExpirationDateTime"`
	TenantID               *string       `json:"tenantId"`
	LifecycleEvent         *string       `json:"lifecycleEvent"`
}

var errMalformed = errors.New("graph: malformed notification")

// ParseNotifications parses the body Graph POSTs to a notification or
// lifecycle URL: {"value":[...]}. It refuses malformed JSON, bodies over
// MaxNotificationBody, more than MaxNotifications items, items without a
// subscription id or with neither a change type nor a lifecycle event,
// a clientState over MaxClientState characters, and oversized fields. It
// checks nothing about clientState's value: that is the caller's first
// step.
func ParseNotifications(body []byte) ([]Notification, error) {
	if len(body) > MaxNotificationBody {
		return nil, errors.New("graph: notification body too large")
	}
	var v struct {
		Value []json.RawMessage `json:"value"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&v); err != nil {
		return nil, errMalformed
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errMalformed // trailing data
	}
	if v.Value == nil {
		return nil, errMalformed
	}
	if len(v.Value) > MaxNotifications {
		return nil, errors.New("graph: too many notifications in one POST")
	}
	out := make([]Notification, 0, len(v.Value))
	for _, item := range v.Value {
		var r rawNotification
		if err := json.Unmarshal(item, &r); err != nil {
			return nil, errMalformed
		}
		n, ok := r.notification()
		if !ok {
			return nil, errMalformed
		}
		out = append(out, n)
	}
	return out, nil
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func (r rawNotification) notification() (Notification, bool) {
	n := Notification{
		SubscriptionID: str(r.SubscriptionID), ClientState: str(r.ClientState),
		ChangeType: str(r.ChangeType), Resource: str(r.Resource),
		TenantID: str(r.TenantID), LifecycleEvent: str(r.LifecycleEvent),
	}
	if r.ResourceData != nil {
		n.ResourceData = *r.ResourceData
	}
	if n.SubscriptionID == "" || (n.ChangeType == "") == (n.LifecycleEvent == "") {
		return n, false
	}
	if utf8.RuneCountInString(n.ClientState) > MaxClientState {
		return n, false
	}
	for _, f := range []string{n.SubscriptionID, n.Resource, n.ResourceData.ID, n.ResourceData.ODataType, n.ResourceData.ODataID} {
		if len(f) > maxField {
			return n, false
		}
	}
	for _, f := range []string{n.ChangeType, n.TenantID, n.LifecycleEvent} {
		if len(f) > maxShortField {
			return n, false
		}
	}
	if s := str(r.SubscriptionExpiration); s != "" {
		if len(s) > maxShortField {
			return n, false
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return n, false
		}
		n.SubscriptionExpiration = t
	}
	return n, true
}

// maxValidationToken bounds a validation token; Graph's are about a
// hundred characters.
const maxValidationToken = 4096

// ValidationToken returns the URL-decoded validationToken of Graph's
// validation request (a POST to the notification or lifecycle URL with
// ?validationToken=...), and whether r is one.
func ValidationToken(r *http.Request) (string, bool) {
	q := r.URL.Query()
	if !q.Has("validationToken") {
		return "", false
	}
	tok := q.Get("validationToken")
	if tok == "" || len(tok) > maxValidationToken {
		return "", false
	}
	return tok, true
}

// AnswerValidation writes the answer Graph expects within 10 seconds:
// 200, text/plain, the decoded token as the whole body.
func AnswerValidation(w http.ResponseWriter, token string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, token)
}

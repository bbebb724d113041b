package push

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// MaxFCMData is FCM's limit on a data payload (keys and values).
const MaxFCMData = 4096

type fcmRequest struct {
	Message fcmMessage `json:"message"`
}

type fcmMessage struct {
	Token   string            `json:"token"`
	Data    map[string]string `json:"data"`
	Android fcmAndroid        `json:"android"`
}

type fcmAndroid struct {
	Priority    string `json:"priority"`
	TTL         string `json:"ttl"`
	CollapseKey string `json:"collapse_key,omitempty"`
}

// body builds the request body for m: a data message (the app renders it),
// with keys type, title, body, badge and thread. reason is set when m cannot
// be sent at all.
func (f *FCM) body(m Message) ([]byte, string) {
	msg := fcmMessage{
		Token: m.Token,
		Data:  map[string]string{"type": "newmail"},
		Android: fcmAndroid{
			Priority:    "high",
			TTL:         fcmTTL(alertTTL),
			CollapseKey: m.ThreadID, // offline devices keep only the newest per account
		},
	}
	if m.ThreadID != "" {
		msg.Data["thread"] = m.ThreadID
	}
	if m.Badge >= 0 && m.Kind == NewMail {
		msg.Data["badge"] = strconv.Itoa(m.Badge)
	}
	if m.CollapseID != "" && m.Kind == NewMail {
		// FCM allows 4 collapse keys per device, too few for one per
		// item: the app replaces a notification whose item it shows.
		msg.Data["item"] = m.CollapseID
	}
	t := textOf(m)
	switch {
	case m.Kind == Reregister:
		// Rare, and must not be collapsed into (or replaced by) a new-mail
		// message; normal priority is enough to wake the app.
		msg.Data["type"] = "reregister"
		msg.Android = fcmAndroid{Priority: "normal", TTL: fcmTTL(reregisterTTL)}
	case !t.alert():
		// Level 4: nothing to show. FCM demotes high-priority messages that
		// show no notification, so do not ask for it.
		if _, ok := msg.Data["badge"]; !ok {
			return nil, ReasonEmpty
		}
		msg.Android.Priority = "normal"
	default:
		var ok bool
		if t, ok = fit(t, MaxFCMData, func(t text) int { return fcmDataSize(msg.Data, t) }); !ok {
			return nil, ReasonTooLarge
		}
		setText(msg.Data, t)
	}
	b, _ := json.Marshal(fcmRequest{Message: msg}) // cannot fail: strings only
	return b, ""
}

func setText(data map[string]string, t text) {
	if t.title != "" {
		data["title"] = t.title
	}
	if b := t.body(); b != "" {
		data["body"] = b
	}
}

// fcmDataSize is the data payload size as FCM counts it: keys and values.
func fcmDataSize(data map[string]string, t text) int {
	n := 0
	for k, v := range data {
		n += len(k) + len(v)
	}
	if t.title != "" {
		n += len("title") + len(t.title)
	}
	if b := t.body(); b != "" {
		n += len("body") + len(b)
	}
	return n
}

// fcmTTL formats a protobuf Duration: seconds with an "s" suffix.
func fcmTTL(d time.Duration) string {
	return fmt.Sprintf("%ds", int64(d/time.Second))
}

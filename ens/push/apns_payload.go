package push

import "encoding/json"

// MaxAPNsPayload is Apple's limit on a (non-VoIP) notification payload.
const MaxAPNsPayload = 4096

type apsAlert struct {
	Title string `json:"title,omitempty"`
	Body  string `json:"body,omitempty"`
}

type aps struct {
	Alert            *apsAlert `json:"alert,omitempty"`
	Badge            *int      `json:"badge,omitempty"`
	Sound            string    `json:"sound,omitempty"`
	ThreadID         string    `json:"thread-id,omitempty"`
	ContentAvailable int       `json:"content-available,omitempty"`
	MutableContent   int       `json:"mutable-content,omitempty"`
}

// ensData is our own key, read by the app (or its extension).
type ensData struct {
	Action string `json:"action"`
}

type apnsPayload struct {
	APS aps      `json:"aps"`
	ENS *ensData `json:"ens,omitempty"`
}

// apnsBody builds the JSON payload of m, within Apple's size limit. The
// reason is non-empty when m cannot be sent at all.
func apnsBody(m Message) (body []byte, reason string) {
	p := apnsPayload{APS: aps{ThreadID: m.ThreadID}}
	if m.Badge >= 0 {
		p.APS.Badge = &m.Badge
	}
	if m.Kind == Reregister {
		// A background push: no alert, sound or badge change, just wake the
		// app so it registers again.
		p.APS.Badge = nil
		p.APS.ContentAvailable = 1
		p.ENS = &ensData{Action: "reregister"}
		return encodeAPNs(p), ""
	}
	t := textOf(m)
	if !t.alert() {
		if p.APS.Badge == nil {
			return nil, ReasonEmpty
		}
		return encodeAPNs(p), "" // level 4: the badge only
	}
	p.APS.Sound = "default"
	p.APS.MutableContent = 1 // a notification service extension may enrich it
	t, ok := fit(t, MaxAPNsPayload, func(t text) int {
		p.APS.Alert = &apsAlert{Title: t.title, Body: t.body()}
		return len(encodeAPNs(p))
	})
	if !ok {
		return nil, ReasonTooLarge
	}
	p.APS.Alert = &apsAlert{Title: t.title, Body: t.body()}
	return encodeAPNs(p), ""
}

// encodeAPNs gives the bytes apns2 will send: it passes the payload through
// json.Marshal, which escapes "<", ">" and "&", so measure with the same
// escaping.
func encodeAPNs(p apnsPayload) []byte {
	b, _ := json.Marshal(p) // cannot fail: strings, ints and pointers only
	return b
}

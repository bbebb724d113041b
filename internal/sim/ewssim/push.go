package ewssim

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/beevik/etree"

	"github.com/ensgate/ensgate/ews"
)

const (
	// firstRetry is Exchange's wait before re-sending a notification the
	// listener failed; each further wait doubles.
	firstRetry = 30 * time.Second
	// maxEventsPerNotification bounds one SendNotification; the rest
	// follow in the next one, announced by MoreEvents.
	maxEventsPerNotification = 50
	// maxResultBytes bounds the listener's SendNotificationResult.
	maxResultBytes = 64 << 10
	// maxCallbackURL is the longest callback URL EWS accepts.
	maxCallbackURL = 2082
	// soapActionSendNotification is what Exchange sends with each push.
	soapActionSendNotification = "http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification"
)

// Subscription states, as SubscriptionInfo.State reports them.
const (
	StateActive       = "active"
	StateUnsubscribed = "unsubscribed" // the listener answered Unsubscribe
	StateDropped      = "dropped"      // the listener failed for longer than StatusFrequency
	StateClosed       = "closed"       // the simulator was closed
)

var eventTypes = []string{"CopiedEvent", "CreatedEvent", "DeletedEvent", "ModifiedEvent", "MovedEvent", "NewMailEvent", "FreeBusyChangedEvent"}

// SubscriptionInfo describes a push subscription, active or ended.
type SubscriptionInfo struct {
	ID              string    `json:"id"`
	User            string    `json:"user"`
	URL             string    `json:"url"`
	StatusFrequency int       `json:"statusFrequency"` // minutes
	EventTypes      []string  `json:"eventTypes"`
	State           string    `json:"state"`
	Created         time.Time `json:"created"`
	Ended           time.Time `json:"ended,omitzero"`
	Sent            int       `json:"sent"`     // notifications the listener accepted
	Failures        int       `json:"failures"` // failed POSTs, retries included
	Queued          int       `json:"queued"`   // events not yet accepted
}

type subscription struct {
	srv     *Server
	id      string
	user    string // the subscribed mailbox's address
	url     string
	freq    time.Duration // StatusFrequency, in Exchange time
	types   map[string]bool
	created time.Time
	mbKey   uint64 // watermark key of the mailbox
	inboxID string
	rootID  string

	mu           sync.Mutex
	state        string
	ended        time.Time
	queue        []event
	last         uint64 // sequence number of the last event the listener accepted
	busy         bool   // a POST is in flight or a retry is scheduled
	timer        *time.Timer
	failingSince time.Time // start of the first failed attempt of the current run
	backoff      time.Duration
	sent         int
	failures     int
}

func encodeWatermark(key, seq uint64) string {
	b := make([]byte, 17)
	b[0] = 1
	binary.BigEndian.PutUint64(b[1:], key)
	binary.BigEndian.PutUint64(b[9:], seq)
	return base64.StdEncoding.EncodeToString(b)
}

func decodeWatermark(s string) (key, seq uint64, ok bool) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != 17 || b[0] != 1 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(b[1:]), binary.BigEndian.Uint64(b[9:]), true
}

func newSubscriptionID() string {
	b := make([]byte, 26)
	b[0] = 0x17 // looks like Exchange's: a length-prefixed server name, then a GUID
	rand.Read(b[2:])
	return base64.StdEncoding.EncodeToString(b)
}

// subscribe handles Subscribe: push subscriptions on the Inbox only.
func (s *Server) subscribe(w http.ResponseWriter, user string, op *etree.Element) {
	doc, body := responseEnvelope()
	rms := body.CreateElement("m:SubscribeResponse").CreateElement("m:ResponseMessages")
	fail := func(code string) {
		s.responseMessage(rms, "m:SubscribeResponseMessage", code)
		writeXML(w, http.StatusOK, doc)
	}
	req := child(op, nsMsgs, "PushSubscriptionRequest")
	if req == nil {
		if child(op, nsMsgs, "PullSubscriptionRequest") != nil || child(op, nsMsgs, "StreamingSubscriptionRequest") != nil {
			fail("ErrorInvalidSubscriptionRequest")
			return
		}
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: Subscribe needs a PushSubscriptionRequest.", 0)
		return
	}
	types := map[string]bool{}
	for _, e := range children(child(req, nsTypes, "EventTypes"), nsTypes, "EventType") {
		t := strings.TrimSpace(e.Text())
		if !slices.Contains(eventTypes, t) {
			s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: invalid EventType '"+t+"'.", 0)
			return
		}
		types[t] = true
	}
	freq, err := strconv.Atoi(strings.TrimSpace(child(req, nsTypes, "StatusFrequency").NotNil().Text()))
	if len(types) == 0 || err != nil || freq < 1 || freq > 1440 {
		s.writeFault(w, "ErrorSchemaValidation", "The request failed schema validation: Subscribe needs EventTypes, StatusFrequency (1-1440) and URL.", 0)
		return
	}
	callback := strings.TrimSpace(child(req, nsTypes, "URL").NotNil().Text())
	if u, err := url.Parse(callback); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(callback) > maxCallbackURL {
		fail("ErrorInvalidPushSubscriptionUrl")
		return
	}
	folders := child(req, nsTypes, "FolderIds")
	allFolders := req.SelectAttrValue("SubscribeToAllFolders", "") == "true"
	if folders == nil && !allFolders {
		fail("ErrorInvalidSubscriptionRequest")
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	// The subscription is on the mailbox its folders name (the simulator
	// has push subscriptions on one Inbox only), which may be a mailbox
	// user opens as a delegate.
	m := s.users[user]
	if folders != nil {
		for i, e := range folders.ChildElements() {
			fm, f, code := s.openFolder(user, e)
			switch {
			case code != "":
				fail(code)
				return
			case f.id != fm.inboxID || (i > 0 && fm != m):
				fail("ErrorFolderNotFound")
				return
			}
			m = fm
		}
	}
	if s.closed {
		fail("ErrorServerBusy")
		return
	}
	if len(m.subs) >= s.maxSubs {
		fail("ErrorExceededSubscriptionCount")
		return
	}
	start := m.seq
	var backlog []event
	if wm := child(req, nsTypes, "Watermark"); wm != nil {
		key, seq, ok := decodeWatermark(wm.Text())
		ok = ok && key == m.key
		if ok {
			backlog, ok = m.eventsAfter(seq)
		}
		if !ok {
			fail("ErrorInvalidWatermark")
			return
		}
		start = seq
	}
	sub := &subscription{
		srv: s, id: newSubscriptionID(), user: m.Address, url: callback,
		freq: time.Duration(freq) * time.Minute, types: types, created: time.Now().UTC(),
		mbKey: m.key, inboxID: m.inboxID, rootID: m.rootID,
		state: StateActive, last: start,
	}
	m.subs[sub.id] = sub
	s.subs = append(s.subs, sub)
	s.stats.add(&s.stats.c.SubscriptionsCreated, 1)
	// Under s.mu, so no event can slip between the backlog and the
	// subscription starting to collect new ones.
	sub.mu.Lock()
	sub.timer = time.AfterFunc(s.clock.real(sub.freq), sub.ping)
	sub.mu.Unlock()
	sub.enqueue(backlog)

	rm := s.responseMessage(rms, "m:SubscribeResponseMessage", "NoError")
	text(rm, "m:SubscriptionId", sub.id)
	text(rm, "m:Watermark", encodeWatermark(m.key, start))
	writeXML(w, http.StatusOK, doc)
	s.log.Info("push subscription created", "subscription", sub.id, "statusFrequency", freq, "resumed", len(backlog))
}

// enqueue queues the events the subscription asked for and starts a
// delivery unless one is already running or waiting to retry (that one will
// pick them up, in order). Called with Server.mu held.
func (sub *subscription) enqueue(evs []event) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.state != StateActive {
		return
	}
	for _, e := range evs {
		if sub.types[e.kind] {
			sub.queue = append(sub.queue, e)
		}
	}
	if len(sub.queue) > 0 && !sub.busy {
		sub.busy = true
		sub.timer.Stop()
		sub.srv.wg.Add(1)
		go sub.deliver()
	}
}

// ping sends a StatusEvent when StatusFrequency has passed without a
// notification.
func (sub *subscription) ping() {
	sub.mu.Lock()
	if sub.state != StateActive || sub.busy {
		sub.mu.Unlock()
		return
	}
	sub.busy = true
	sub.srv.wg.Add(1)
	sub.mu.Unlock()
	sub.deliver()
}

// retry re-sends after a failure; busy stayed set while waiting.
func (sub *subscription) retry() {
	sub.mu.Lock()
	if sub.state != StateActive {
		sub.mu.Unlock()
		return
	}
	sub.srv.wg.Add(1)
	sub.mu.Unlock()
	sub.deliver()
}

// deliver sends notifications one at a time until the queue is empty (or
// a StatusEvent when it is empty to begin with), then arms the status
// timer. On failure it schedules a retry as Exchange does (30 s, then
// doubling) or drops the subscription once the failures have lasted longer
// than StatusFrequency.
func (sub *subscription) deliver() {
	defer sub.srv.wg.Done()
	clk := sub.srv.clock
	for {
		sub.mu.Lock()
		if sub.state != StateActive {
			sub.mu.Unlock()
			return
		}
		n := min(len(sub.queue), maxEventsPerNotification)
		batch := slices.Clone(sub.queue[:n])
		more := len(sub.queue) > n
		prev := sub.last
		sub.mu.Unlock()

		started := time.Now()
		status, err := sub.srv.sendNotification(sub.url, sub.notification(prev, batch, more))

		sub.mu.Lock()
		if sub.state != StateActive {
			sub.mu.Unlock()
			return
		}
		if err != nil {
			sub.failures++
			sub.srv.stats.add(&sub.srv.stats.c.NotificationFailures, 1)
			if sub.failingSince.IsZero() {
				sub.failingSince = started
				sub.backoff = firstRetry
			} else {
				sub.backoff *= 2
			}
			if clk.since(sub.failingSince)+sub.backoff > sub.freq {
				sub.endLocked(StateDropped)
				failures := sub.failures
				sub.mu.Unlock()
				sub.srv.forget(sub)
				sub.srv.stats.add(&sub.srv.stats.c.Dropped, 1)
				sub.srv.log.Info("push subscription dropped", "subscription", sub.id, "failures", failures)
				return
			}
			sub.srv.log.Debug("push failed, will retry", "subscription", sub.id, "in", sub.backoff, "error", err)
			sub.timer = time.AfterFunc(clk.real(sub.backoff), sub.retry)
			sub.mu.Unlock()
			return
		}
		sub.failingSince, sub.backoff = time.Time{}, 0
		sub.sent++
		sub.srv.stats.add(&sub.srv.stats.c.NotificationsSent, 1)
		if n == 0 {
			sub.srv.stats.add(&sub.srv.stats.c.StatusEventsSent, 1)
		} else {
			sub.srv.stats.add(&sub.srv.stats.c.EventsSent, int64(n))
			sub.last = batch[n-1].seq
			sub.queue = sub.queue[n:]
		}
		if status == "Unsubscribe" {
			sub.endLocked(StateUnsubscribed)
			sub.mu.Unlock()
			sub.srv.forget(sub)
			sub.srv.stats.add(&sub.srv.stats.c.Unsubscribed, 1)
			sub.srv.log.Info("push subscription ended by listener", "subscription", sub.id)
			return
		}
		if len(sub.queue) > 0 {
			sub.mu.Unlock()
			continue
		}
		sub.busy = false
		sub.timer = time.AfterFunc(clk.real(sub.freq), sub.ping)
		sub.mu.Unlock()
		return
	}
}

func (sub *subscription) endLocked(state string) {
	sub.state = state
	sub.ended = time.Now().UTC()
	sub.queue = nil
	if sub.timer != nil {
		sub.timer.Stop()
	}
}

// forget removes an ended subscription from its mailbox.
func (s *Server) forget(sub *subscription) {
	s.mu.Lock()
	if m, ok := s.users[sub.user]; ok {
		delete(m.subs, sub.id)
	}
	s.mu.Unlock()
}

// notification builds a SendNotification request like Exchange's (sample
// 03 for a StatusEvent, 04 for events).
func (sub *subscription) notification(prev uint64, batch []event, more bool) []byte {
	doc, hdr, body := envelope()
	hdr.CreateElement("t:RequestServerVersion").CreateAttr("Version", "Exchange2010")
	rm := body.CreateElement("m:SendNotification").CreateElement("m:ResponseMessages").CreateElement("m:SendNotificationResponseMessage")
	rm.CreateAttr("ResponseClass", "Success")
	text(rm, "m:ResponseCode", "NoError")
	n := rm.CreateElement("m:Notification")
	text(n, "t:SubscriptionId", sub.id)
	text(n, "t:PreviousWatermark", encodeWatermark(sub.mbKey, prev))
	text(n, "t:MoreEvents", strconv.FormatBool(more))
	if len(batch) == 0 {
		text(n.CreateElement("t:StatusEvent"), "t:Watermark", encodeWatermark(sub.mbKey, prev))
	}
	for _, e := range batch {
		el := n.CreateElement("t:" + e.kind)
		text(el, "t:Watermark", encodeWatermark(sub.mbKey, e.seq))
		text(el, "t:TimeStamp", xmlTime(e.at))
		if e.itemID != "" {
			idElem(el, "t:ItemId", e.itemID, e.ck)
			idElem(el, "t:ParentFolderId", sub.inboxID, "AQAAAA==")
		} else {
			idElem(el, "t:FolderId", sub.inboxID, e.ck)
			idElem(el, "t:ParentFolderId", sub.rootID, "AQAAAA==")
			if e.kind == "ModifiedEvent" {
				text(el, "t:UnreadCount", strconv.Itoa(e.unread))
			}
		}
	}
	b, _ := doc.WriteToBytes()
	return b
}

// sendNotification POSTs one notification and returns the listener's
// SubscriptionStatus (OK or Unsubscribe). Anything else is a failure:
// a transport error, a status other than 200, or an unreadable answer.
func (s *Server) sendNotification(callback string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, callback, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	req.Header.Set("SOAPAction", soapActionSendNotification)
	req.Header.Set("User-Agent", "ExchangeServicesClient/15.02.1544.004")
	resp, err := s.push.Do(req)
	if err != nil {
		// The url.Error would carry the callback URL, which holds the
		// listener's secrets; keep only the cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResultBytes+1))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("listener answered HTTP %d", resp.StatusCode)
	}
	if len(raw) > maxResultBytes {
		return "", errors.New("listener answer too large")
	}
	doc, err := ews.ParseDocument(raw)
	if err != nil {
		return "", fmt.Errorf("listener answer: %w", err)
	}
	res := child(soapBody(doc), nsMsgs, "SendNotificationResult")
	switch status := strings.TrimSpace(child(res, nsMsgs, "SubscriptionStatus").NotNil().Text()); status {
	case "OK", "Unsubscribe":
		return status, nil
	default:
		return "", fmt.Errorf("listener answer has no valid SubscriptionStatus (%q)", status)
	}
}

// Subscriptions lists every push subscription the simulator has had,
// oldest first, ended ones included.
func (s *Server) Subscriptions() []SubscriptionInfo {
	s.mu.Lock()
	subs := slices.Clone(s.subs)
	s.mu.Unlock()
	out := make([]SubscriptionInfo, 0, len(subs))
	for _, sub := range subs {
		types := make([]string, 0, len(sub.types))
		for t := range sub.types {
			types = append(types, t)
		}
		sort.Strings(types)
		sub.mu.Lock()
		out = append(out, SubscriptionInfo{
			ID: sub.id, User: sub.user, URL: sub.url, StatusFrequency: int(sub.freq / time.Minute),
			EventTypes: types, State: sub.state, Created: sub.created, Ended: sub.ended,
			Sent: sub.sent, Failures: sub.failures, Queued: len(sub.queue),
		})
		sub.mu.Unlock()
	}
	return out
}

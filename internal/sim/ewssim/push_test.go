package ewssim

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDeliveryNotifiesCreatedAndNewMail(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	l := newListener(t, answerOK)
	resp := callEWS(t, ts, subscribeOp(l.srv.URL+"/notify?id=1", 30, ""), http.StatusOK)
	subID, wm0 := one(t, resp, "SubscriptionId"), one(t, resp, "Watermark")

	it, err := ts.Deliver(alice, Mail{From: "carol@example.net", FromName: "Carol", Subject: "Hello", Body: "Body"})
	if err != nil {
		t.Fatal(err)
	}
	n := l.next(2 * time.Second)
	if got := n.header.Get("SOAPAction"); got != soapActionSendNotification {
		t.Errorf("SOAPAction %q", got)
	}
	if got := n.header.Get("Content-Type"); got != "text/xml; charset=utf-8" {
		t.Errorf("Content-Type %q", got)
	}
	if got := eventKinds(t, n.body); !slices.Equal(got, []string{"CreatedEvent", "NewMailEvent"}) {
		t.Fatalf("events %v, want CreatedEvent and NewMailEvent", got)
	}
	if got := one(t, n.body, "SubscriptionId"); got != subID {
		t.Errorf("SubscriptionId %s, want %s", got, subID)
	}
	if got := one(t, n.body, "PreviousWatermark"); got != wm0 {
		t.Errorf("PreviousWatermark %s, want Subscribe's watermark %s", got, wm0)
	}
	ids := findAttr(t, n.body, "ItemId", "Id")
	if !slices.Equal(ids, []string{it.ID, it.ID}) {
		t.Errorf("event ItemIds %v, want %s twice", ids, it.ID)
	}
	wms := find(t, n.body, "Watermark")
	if len(wms) != 2 || wms[0] == wms[1] || wms[0] == wm0 {
		t.Errorf("event watermarks %v are not fresh and distinct", wms)
	}

	ts.Deliver(alice, Mail{From: "carol@example.net", Subject: "Again"})
	n2 := l.next(2 * time.Second)
	if got := one(t, n2.body, "PreviousWatermark"); got != wms[1] {
		t.Errorf("second PreviousWatermark %s, want the last event's %s", got, wms[1])
	}
	// Bob's mail is not alice's business.
	ts.Deliver(bob, Mail{From: "carol@example.net", Subject: "For Bob"})
	l.none(100 * time.Millisecond)

	c := ts.Counters()
	if c.NotificationsSent != 2 || c.EventsSent != 4 || c.Requests["GetItem"] != 0 {
		t.Errorf("counters: sent %d, events %d, GetItem %d", c.NotificationsSent, c.EventsSent, c.Requests["GetItem"])
	}
}

func TestStatusPingsAtStatusFrequency(t *testing.T) {
	const minute = 40 * time.Millisecond
	ts := Start(t, Config{Users: testUsers(), ClockScale: minute})
	l := newListener(t, answerOK)
	start := time.Now()
	subscribe(t, ts, l.srv.URL, 2)
	prev := start
	for i := range 3 {
		n := l.next(2 * time.Second)
		if got := eventKinds(t, n.body); !slices.Equal(got, []string{"StatusEvent"}) {
			t.Fatalf("ping %d carries %v", i, got)
		}
		assertGap(t, fmt.Sprintf("ping %d", i), n.at.Sub(prev), 2*minute)
		prev = n.at
	}
	eventually(t, "3 status events counted", func() bool { return ts.Counters().StatusEventsSent >= 3 })
}

// scaled is an Exchange duration in wall-clock time at minute per minute.
func scaled(d, minute time.Duration) time.Duration {
	return time.Duration(d.Minutes() * float64(minute))
}

// assertGap checks an observed interval against the expected one: timers
// never fire early, and a loaded machine may add some latency.
func assertGap(t testing.TB, what string, got, want time.Duration) {
	t.Helper()
	if got < want*9/10 || got > want+80*time.Millisecond {
		t.Errorf("%s after %v, want %v", what, got, want)
	}
}

func TestUnsubscribeAnswerEndsSubscription(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	l := newListener(t, func(int) (int, string) { return http.StatusOK, "Unsubscribe" })
	keep := newListener(t, answerOK)
	id := subscribe(t, ts, l.srv.URL, 30)
	subscribe(t, ts, keep.srv.URL, 30)

	ts.Deliver(alice, Mail{Subject: "one"})
	l.next(2 * time.Second)
	keep.next(2 * time.Second)
	ts.Deliver(alice, Mail{Subject: "two"})
	keep.next(2 * time.Second) // the other subscription lives on
	l.none(150 * time.Millisecond)

	eventually(t, "state unsubscribed", func() bool { return subState(t, ts, id) == StateUnsubscribed })
	if c := ts.Counters(); c.Unsubscribed != 1 {
		t.Errorf("Unsubscribed %d", c.Unsubscribed)
	}
}

func subState(t testing.TB, ts *TestServer, id string) string {
	t.Helper()
	for _, s := range ts.Subscriptions() {
		if s.ID == id {
			return s.State
		}
	}
	t.Fatalf("subscription %s not listed", id)
	return ""
}

// TestFailingListenerRetriesThenDrops checks Exchange's schedule: retry
// 30 s after a failure, then 60, 120, ...; drop once the failures would
// outlast StatusFrequency (5 minutes: attempts at 0, 30, 90 and 210 s).
func TestFailingListenerRetriesThenDrops(t *testing.T) {
	const minute = 100 * time.Millisecond
	ts := Start(t, Config{Users: testUsers(), ClockScale: minute})
	l := newListener(t, func(int) (int, string) { return http.StatusInternalServerError, "" })
	id := subscribe(t, ts, l.srv.URL, 5)
	ts.Deliver(alice, Mail{Subject: "lost"})

	first := l.next(2 * time.Second)
	prev := first
	for i, wait := range []time.Duration{30 * time.Second, 60 * time.Second, 120 * time.Second} {
		n := l.next(2 * time.Second)
		assertGap(t, fmt.Sprintf("retry %d", i+1), n.at.Sub(prev.at), scaled(wait, minute))
		if !slices.Equal(n.body, first.body) {
			t.Errorf("retry %d is not the same notification", i+1)
		}
		prev = n
	}
	l.none(5 * minute) // well past the next slot (+240 s) and StatusFrequency
	if st := subState(t, ts, id); st != StateDropped {
		t.Errorf("state %s, want %s", st, StateDropped)
	}
	// A dropped subscription hears nothing more.
	ts.Deliver(alice, Mail{Subject: "after"})
	l.none(2 * minute)
	if c := ts.Counters(); c.Dropped != 1 || c.NotificationFailures != 4 || c.NotificationsSent != 0 {
		t.Errorf("counters: dropped %d, failures %d, sent %d", c.Dropped, c.NotificationFailures, c.NotificationsSent)
	}
}

// TestEachFailureKindIsRetried: a non-200 status, a broken connection, and
// an answer without a valid SubscriptionStatus all count as failures; the
// retry carries the same events.
func TestEachFailureKindIsRetried(t *testing.T) {
	for _, kind := range []string{"http500", "garbage", "bad-status", "hangup"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			const minute = 20 * time.Millisecond
			ts := Start(t, Config{Users: testUsers(), ClockScale: minute})
			l := newListener(t, func(n int) (int, string) {
				if n > 1 {
					return http.StatusOK, "OK"
				}
				switch kind {
				case "http500":
					return http.StatusInternalServerError, "OK"
				case "garbage":
					return http.StatusOK, "" // empty body
				case "bad-status":
					return http.StatusOK, "Maybe"
				default:
					return -1, "" // see hangup below
				}
			})
			if kind == "hangup" {
				inner := l.srv.Config.Handler
				l.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					l.mu.Lock()
					first := l.count == 0
					l.mu.Unlock()
					inner.ServeHTTP(discardFirst(w, first), r)
				})
			}
			id := subscribe(t, ts, l.srv.URL, 30)
			it, _ := ts.Deliver(alice, Mail{Subject: "x"})
			a, b := l.next(2*time.Second), l.next(2*time.Second)
			assertGap(t, "retry", b.at.Sub(a.at), scaled(30*time.Second, minute))
			for _, n := range []notification{a, b} {
				if ids := findAttr(t, n.body, "ItemId", "Id"); !slices.Equal(ids, []string{it.ID, it.ID}) {
					t.Errorf("notification items %v", ids)
				}
			}
			if st := subState(t, ts, id); st != StateActive {
				t.Errorf("state %s after recovery", st)
			}
			eventually(t, "1 failure and 1 success counted", func() bool {
				c := ts.Counters()
				return c.NotificationFailures == 1 && c.NotificationsSent == 1
			})
		})
	}
}

// discardFirst makes the first request's connection drop without an
// answer.
func discardFirst(w http.ResponseWriter, first bool) http.ResponseWriter {
	if !first {
		return w
	}
	return hangup{w}
}

type hangup struct{ http.ResponseWriter }

func (h hangup) WriteHeader(int) {
	conn, _, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err == nil {
		conn.Close()
	}
}

func (h hangup) Write(b []byte) (int, error) { return len(b), nil }

func TestNotificationsInOrderAndBatched(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	release := make(chan struct{})
	l := newListener(t, func(n int) (int, string) {
		if n == 1 {
			<-release // hold the first POST so the rest queue up
		}
		return http.StatusOK, "OK"
	})
	subscribe(t, ts, l.srv.URL, 30)
	var want []string
	for i := range 60 {
		it, _ := ts.Deliver(alice, Mail{Subject: fmt.Sprint(i)})
		want = append(want, it.ID)
		if i == 0 {
			time.Sleep(50 * time.Millisecond) // let the first POST start
		}
	}
	close(release)
	var got []string
	prevWM := ""
	for len(got) < 2*len(want) {
		n := l.next(2 * time.Second)
		events := eventKinds(t, n.body)
		if len(events) > maxEventsPerNotification {
			t.Fatalf("%d events in one notification", len(events))
		}
		if more := one(t, n.body, "MoreEvents"); more == "true" && len(events) != maxEventsPerNotification {
			t.Errorf("MoreEvents with only %d events", len(events))
		}
		if prevWM != "" && one(t, n.body, "PreviousWatermark") != prevWM {
			t.Errorf("PreviousWatermark does not continue from the last notification")
		}
		wms := find(t, n.body, "Watermark")
		prevWM = wms[len(wms)-1]
		got = append(got, findAttr(t, n.body, "ItemId", "Id")...)
	}
	var created []string
	for i := 0; i < len(got); i += 2 {
		if got[i] != got[i+1] {
			t.Fatalf("events %d and %d are for different items", i, i+1)
		}
		created = append(created, got[i])
	}
	if !slices.Equal(created, want) {
		t.Errorf("items notified out of order")
	}
	l.none(50 * time.Millisecond)
}

func TestSeveralSubscriptionsAndResume(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	first, second := newListener(t, answerOK), newListener(t, answerOK)
	wm0 := one(t, callEWS(t, ts, subscribeOp(first.srv.URL, 30, ""), http.StatusOK), "Watermark")
	missed, _ := ts.Deliver(alice, Mail{Subject: "while the second was away"})
	first.next(2 * time.Second)

	// Subscribing again from wm0 replays what happened since.
	resp := callEWS(t, ts, subscribeOp(second.srv.URL, 30, wm0), http.StatusOK)
	if got := one(t, resp, "Watermark"); got != wm0 {
		t.Errorf("resumed subscription starts at %s, want %s", got, wm0)
	}
	n := second.next(2 * time.Second)
	if one(t, n.body, "PreviousWatermark") != wm0 || !slices.Equal(findAttr(t, n.body, "ItemId", "Id"), []string{missed.ID, missed.ID}) {
		t.Errorf("backlog notification:\n%s", n.body)
	}
	// Both subscriptions stay: a new one does not cancel the old.
	ts.Deliver(alice, Mail{Subject: "both"})
	first.next(2 * time.Second)
	second.next(2 * time.Second)
	active := 0
	for _, s := range ts.Subscriptions() {
		if s.State == StateActive {
			active++
		}
	}
	if active != 2 {
		t.Errorf("%d active subscriptions, want 2", active)
	}
}

func TestSubscribeRefusals(t *testing.T) {
	ts := Start(t, Config{Users: testUsers(), MaxSubscriptions: 2})
	l := newListener(t, answerOK)
	subscribe(t, ts, l.srv.URL, 30)
	subscribe(t, ts, l.srv.URL, 30)
	for _, tc := range []struct{ name, op, code string }{
		{"over the cap", subscribeOp(l.srv.URL, 30, ""), "ErrorExceededSubscriptionCount"},
		{"relative URL", subscribeOp("/notify", 30, ""), "ErrorInvalidPushSubscriptionUrl"},
		{"URL too long", subscribeOp(l.srv.URL+"/?f="+strings.Repeat("a", maxCallbackURL), 30, ""), "ErrorInvalidPushSubscriptionUrl"},
		{"pull", `<m:Subscribe><m:PullSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds>
<t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes><t:Timeout>10</t:Timeout></m:PullSubscriptionRequest></m:Subscribe>`, "ErrorInvalidSubscriptionRequest"},
		{"calendar", strings.Replace(subscribeOp(l.srv.URL, 30, ""), `Id="inbox"`, `Id="calendar"`, 1), "ErrorFolderNotFound"},
	} {
		if got := one(t, callEWS(t, ts, tc.op, http.StatusOK), "ResponseCode"); got != tc.code {
			t.Errorf("%s: %s, want %s", tc.name, got, tc.code)
		}
	}
	for _, freq := range []int{0, 1441} {
		if got := one(t, callEWS(t, ts, subscribeOp(l.srv.URL, freq, ""), http.StatusInternalServerError), "ResponseCode"); got != "ErrorSchemaValidation" {
			t.Errorf("StatusFrequency %d: %s", freq, got)
		}
	}
	// The cap is per user.
	if resp, b := post(t, ts.EWSURL, bob, bobPW, soapRequest(subscribeOp(l.srv.URL, 30, ""))); resp.StatusCode != http.StatusOK || one(t, b, "ResponseCode") != "NoError" {
		t.Errorf("bob could not subscribe: %s", b)
	}
}

func TestCloseStopsDeliveries(t *testing.T) {
	ts := Start(t, Config{Users: testUsers(), ClockScale: 10 * time.Millisecond})
	l := newListener(t, answerOK)
	id := subscribe(t, ts, l.srv.URL, 1)
	l.next(2 * time.Second)
	ts.Server.Close()
	ts.Deliver(alice, Mail{Subject: "after close"})
	l.none(100 * time.Millisecond)
	if st := subState(t, ts, id); st != StateClosed {
		t.Errorf("state %s after Close", st)
	}
}

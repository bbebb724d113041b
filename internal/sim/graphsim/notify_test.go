package graphsim

import (
	"net/http"
	"sync"
	"testing"
	"time"
)

func TestChangeNotificationShape(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	info, _ := ts.UserInfo(alice)
	l := newListener(t)
	b := subBody(l, nil, t0.Add(24*time.Hour))
	b["changeType"] = "created,updated"
	id := subscribe(t, ts, at, b)["id"].(string)
	m, _ := ts.Deliver(alice, Mail{From: "x@example.com", Subject: "hello", Body: "b"})
	ts.Settle()
	ns := l.notifications()
	if len(ns) != 1 {
		t.Fatalf("%d notifications", len(ns))
	}
	n := ns[0]
	rd, _ := n["resourceData"].(map[string]any)
	if n["subscriptionId"] != id || n["changeType"] != "created" || n["clientState"] != "secret-state" ||
		n["tenantId"] != ts.TenantID() || n["subscriptionExpirationDateTime"] != "2026-10-02T09:00:00.0000000Z" ||
		n["resource"] != "users/"+info.ID+"@"+ts.TenantID()+"/messages/"+m.ID ||
		rd["@odata.type"] != "#Microsoft.Graph.Message" || rd["id"] != m.ID || rd["@odata.etag"] == nil ||
		rd["@odata.id"] != "Users/"+info.ID+"@"+ts.TenantID()+"/Messages/"+m.ID {
		t.Errorf("notification %v", n)
	}
	// The resource is a path the client can GET.
	if resp, v := call(t, ts, at, "GET", "/"+rd["@odata.id"].(string)+"?$select=subject", nil); resp.StatusCode != 200 || v["subject"] != "hello" {
		t.Errorf("GET @odata.id: %d %v", resp.StatusCode, v)
	}
	// Read state: an "updated" notification; bob's mail: none.
	ts.MarkRead(alice, m.ID, true)
	ts.Deliver(bob, Mail{From: "x@example.com", Subject: "for bob"})
	ts.Settle()
	ns = l.notifications()
	if len(ns) != 2 || ns[1]["changeType"] != "updated" {
		t.Fatalf("after read: %v", ns)
	}
	if c := ts.Counters(); c.NotificationsSent != 2 || c.NotificationPosts != 2 || c.Delivered != 2 {
		t.Errorf("counters %+v", c)
	}
}

func TestNotificationsAreBatched(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	l := newListener(t)
	release := make(chan struct{})
	var once sync.Once
	l.set(func(l *listener) {
		l.answer = func(n int) int {
			if n == 1 {
				<-release // hold the first POST while more mail arrives
			}
			return 202
		}
	})
	subscribe(t, ts, at, subBody(l, nil, t0.Add(24*time.Hour)))
	ts.Deliver(alice, Mail{Subject: "1"})
	<-waitPosts(l, 1)
	for i := range 5 {
		ts.Deliver(alice, Mail{Subject: string(rune('2' + i))})
	}
	once.Do(func() { close(release) })
	ts.Settle()
	posts := l.allPosts()
	if len(posts) != 2 || len(posts[0]) != 1 || len(posts[1]) != 5 {
		t.Fatalf("posts %v", len(posts))
	}
}

// waitPosts returns a channel closed once l has received n POSTs.
func waitPosts(l *listener, n int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for {
			if len(l.allPosts()) >= n {
				close(done)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return done
}

func TestRetriesThenDropAndMissed(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	l, lc := newListener(t), newListener(t)
	l.set(func(l *listener) { l.answer = func(int) int { return http.StatusServiceUnavailable } })
	id := subscribe(t, ts, at, subBody(l, lc, t0.Add(3*24*time.Hour)))["id"].(string)
	ts.Deliver(alice, Mail{Subject: "lost"})
	ts.Settle()
	if n := len(l.allPosts()); n != 1 {
		t.Fatalf("first attempt: %d POSTs", n)
	}
	ts.Advance(time.Minute)
	if n := len(l.allPosts()); n != 2 {
		t.Fatalf("after 1 min: %d POSTs", n)
	}
	ts.Advance(2 * time.Minute)
	if n := len(l.allPosts()); n != 3 {
		t.Fatalf("after 3 min: %d POSTs (back-off 1, 2, 4 ...)", n)
	}
	ts.Advance(3*time.Hour + 50*time.Minute)
	if c := ts.Counters(); c.NotificationsDropped != 0 {
		t.Fatalf("dropped before 4 hours: %+v", c)
	}
	ts.Advance(10 * time.Minute)
	c := ts.Counters()
	if c.NotificationsDropped != 1 || c.NotificationsSent != 0 {
		t.Fatalf("after 4 hours: %+v", c)
	}
	attempts := len(l.allPosts())
	// 0, 1, 3, 7, 15, 25, 35, ... 235, 240 minutes.
	if attempts != 28 {
		t.Errorf("%d attempts in 4 hours", attempts)
	}
	var missed int
	for _, n := range lc.notifications() {
		if n["lifecycleEvent"] == Missed {
			missed++
			if n["clientState"] != "secret-state" || n["subscriptionId"] == nil || n["tenantId"] != ts.TenantID() {
				t.Errorf("missed: %v", n)
			}
		}
	}
	if missed != 1 || c.Lifecycle[Missed] != 1 || c.Lifecycle[ReauthorizationRequired] == 0 {
		t.Errorf("missed sent %d times (%v)", missed, c.Lifecycle)
	}
	// Nothing more is retried.
	ts.Advance(time.Hour)
	if n := len(l.allPosts()); n != attempts {
		t.Errorf("retried after the drop: %d", n)
	}
	// The subscription's authorization ran out long ago (the token of an
	// hour): change notifications are paused.
	l.set(func(l *listener) { l.answer = nil })
	ts.Deliver(alice, Mail{Subject: "paused"})
	ts.Settle()
	if c := ts.Counters(); c.NotificationsPaused != 1 || c.NotificationsSent != 0 {
		t.Errorf("while unauthorized: %+v", c)
	}
	// Reauthorized, a recovered listener gets the next mail at once.
	if resp, _ := call(t, ts, getToken(t, ts, alice), "POST", "/subscriptions/"+id+"/reauthorize", nil); resp.StatusCode != 204 {
		t.Fatalf("reauthorize: %d", resp.StatusCode)
	}
	ts.Deliver(alice, Mail{Subject: "next"})
	ts.Settle()
	if c := ts.Counters(); c.NotificationsSent != 1 {
		t.Errorf("after recovery: %+v", c)
	}
}

func TestSlowListenerIsRetried(t *testing.T) {
	ts := frozen(t, func(c *Config) { c.DeliveryTimeout = 100 * time.Millisecond })
	at := getToken(t, ts, alice)
	l := newListener(t)
	l.set(func(l *listener) {
		l.answer = func(n int) int {
			if n == 1 {
				time.Sleep(300 * time.Millisecond) // beyond the delivery timeout
			}
			return 200
		}
	})
	subscribe(t, ts, at, subBody(l, nil, t0.Add(24*time.Hour)))
	ts.Deliver(alice, Mail{Subject: "slow"})
	ts.Settle()
	if c := ts.Counters(); c.NotificationsSent != 0 || c.NotificationsRetried != 1 || c.SlowResponses != 1 {
		t.Fatalf("after a slow answer: %+v", c)
	}
	ts.Advance(time.Minute)
	if c := ts.Counters(); c.NotificationsSent != 1 {
		t.Fatalf("retry: %+v", c)
	}
}

func TestSlowEndpointIsThrottledThenDropped(t *testing.T) {
	ts := frozen(t, func(c *Config) {
		c.SlowSample = 10
		c.SlowResponse = 30 * time.Millisecond
		c.DeliveryTimeout = time.Second
	})
	at := getToken(t, ts, alice)
	l := newListener(t)
	slow := 1 // of the first 10 answers
	l.set(func(l *listener) {
		l.answer = func(n int) int {
			if n <= slow {
				time.Sleep(60 * time.Millisecond)
			}
			return 202
		}
	})
	subscribe(t, ts, at, subBody(l, nil, t0.Add(24*time.Hour)))
	for range 10 {
		ts.Deliver(alice, Mail{Subject: "x"})
		ts.Settle()
	}
	// 10 % slow: throttled, the next notification waits 10 minutes.
	ts.Deliver(alice, Mail{Subject: "delayed"})
	ts.Settle()
	if n := len(l.allPosts()); n != 10 {
		t.Fatalf("throttled endpoint got %d POSTs at once", n)
	}
	ts.Advance(9 * time.Minute)
	if n := len(l.allPosts()); n != 10 {
		t.Fatalf("delivered before 10 minutes: %d", n)
	}
	ts.Advance(time.Minute)
	if n := len(l.allPosts()); n != 11 {
		t.Fatalf("not delivered after 10 minutes: %d", n)
	}

	// Another endpoint, 20 % slow: its notifications are dropped.
	ts2 := frozen(t, func(c *Config) {
		c.SlowSample = 10
		c.SlowResponse = 30 * time.Millisecond
	})
	at2 := getToken(t, ts2, alice)
	l2 := newListener(t)
	l2.set(func(l *listener) {
		l.answer = func(n int) int {
			if n <= 2 {
				time.Sleep(60 * time.Millisecond)
			}
			return 202
		}
	})
	subscribe(t, ts2, at2, subBody(l2, nil, t0.Add(24*time.Hour)))
	for range 10 {
		ts2.Deliver(alice, Mail{Subject: "x"})
		ts2.Settle()
	}
	ts2.Deliver(alice, Mail{Subject: "dropped"})
	ts2.Settle()
	if c := ts2.Counters(); c.NotificationsDropped != 1 || len(l2.allPosts()) != 10 {
		t.Fatalf("dropping endpoint: %+v", c)
	}
	// The tally starts over after 10 minutes.
	ts2.Advance(10 * time.Minute)
	ts2.Deliver(alice, Mail{Subject: "again"})
	ts2.Settle()
	if n := len(l2.allPosts()); n != 11 {
		t.Fatalf("after the tally reset: %d POSTs", n)
	}
}

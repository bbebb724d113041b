package graphsim

import (
	"bytes"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func events(l *listener) []string {
	var out []string
	for _, n := range l.notifications() {
		out = append(out, n["lifecycleEvent"].(string))
	}
	return out
}

func TestReauthorizationRequiredBeforeTheTokenExpires(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice) // expires at t0+1h
	l, lc := newListener(t), newListener(t)
	id := subscribe(t, ts, at, subBody(l, lc, t0.Add(3*24*time.Hour)))["id"].(string)
	ts.Advance(44 * time.Minute)
	if ev := events(lc); len(ev) != 0 {
		t.Fatalf("lifecycle before t0+45m: %v", ev)
	}
	ts.Advance(time.Minute)
	if ev := events(lc); len(ev) != 1 || ev[0] != ReauthorizationRequired {
		t.Fatalf("at t0+45m: %v", ev)
	}
	n := lc.notifications()[0]
	if n["clientState"] != "secret-state" || n["subscriptionId"] != id || n["tenantId"] != ts.TenantID() || n["subscriptionExpirationDateTime"] == nil || n["resource"] != nil {
		t.Errorf("lifecycle notification %v", n)
	}
	if s := ts.Subscriptions()[0]; !s.NeedsReauthorization || s.Paused {
		t.Errorf("state %+v", s)
	}
	// Reauthorize with a fresh token (t0+45m → t0+1h45m): the next
	// challenge comes 15 minutes before that.
	at2 := getToken(t, ts, alice)
	if resp, _ := call(t, ts, at2, "POST", "/subscriptions/"+id+"/reauthorize", nil); resp.StatusCode != 204 {
		t.Fatalf("reauthorize: %d", resp.StatusCode)
	}
	ts.Advance(44 * time.Minute)
	if ev := events(lc); len(ev) != 1 {
		t.Fatalf("after reauthorizing: %v", ev)
	}
	ts.Advance(time.Minute)
	if ev := events(lc); len(ev) != 2 {
		t.Fatalf("second challenge: %v", ev)
	}
	// Ignored: repeated every 15 minutes, and notifications pause once the
	// token expired plus the grace (t0+2h), losing what happens meanwhile.
	ts.Advance(15 * time.Minute)
	if ev := events(lc); len(ev) != 3 {
		t.Fatalf("repeat: %v", ev)
	}
	ts.Deliver(alice, Mail{Subject: "still flowing"})
	ts.Settle()
	ts.Advance(15 * time.Minute)
	ts.Deliver(alice, Mail{Subject: "lost"})
	ts.Settle()
	if got, c := len(l.notifications()), ts.Counters(); got != 1 || c.NotificationsPaused != 1 || !ts.Subscriptions()[0].Paused {
		t.Fatalf("pause: %d notifications, %+v", got, c)
	}
	// Renewing reauthorizes too; the flow resumes.
	at3 := getToken(t, ts, alice)
	if resp, _ := call(t, ts, at3, "PATCH", "/subscriptions/"+id, map[string]any{"expirationDateTime": ts.Now().Add(24 * time.Hour).Format(time.RFC3339)}); resp.StatusCode != 200 {
		t.Fatalf("renew: %d", resp.StatusCode)
	}
	ts.Deliver(alice, Mail{Subject: "resumed"})
	ts.Settle()
	if got := len(l.notifications()); got != 2 {
		t.Fatalf("after renewal: %d notifications", got)
	}
	if c := ts.Counters(); c.SubscriptionsReauthorized != 1 || c.SubscriptionsRenewed != 1 || c.Lifecycle[ReauthorizationRequired] != 3 {
		t.Errorf("counters %+v", c)
	}
}

func TestForcedLifecycleEvents(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	l, lc := newListener(t), newListener(t)
	id := subscribe(t, ts, at, subBody(l, lc, t0.Add(24*time.Hour)))["id"].(string)
	if err := ts.Lifecycle(id, Missed); err != nil {
		t.Fatal(err)
	}
	if err := ts.Lifecycle(id, SubscriptionRemoved); err != nil {
		t.Fatal(err)
	}
	ts.Settle()
	ev := events(lc)
	if len(ev) != 2 || ev[0] != Missed || ev[1] != SubscriptionRemoved {
		t.Fatalf("events %v", ev)
	}
	if resp, _ := call(t, ts, at, "GET", "/subscriptions/"+id, nil); resp.StatusCode != 404 {
		t.Errorf("removed subscription still there: %d", resp.StatusCode)
	}
	ts.Deliver(alice, Mail{Subject: "after removal"})
	ts.Settle()
	if n := len(l.notifications()); n != 0 {
		t.Errorf("%d notifications after removal", n)
	}
	if err := ts.Lifecycle(id, Missed); err != ErrNoSuchSubscription {
		t.Errorf("lifecycle of a removed subscription: %v", err)
	}

	// A forced reauthorizationRequired pauses delivery ReauthLead +
	// ReauthGrace later unless the app reauthorizes.
	id2 := subscribe(t, ts, getToken(t, ts, alice), subBody(l, lc, ts.Now().Add(24*time.Hour)))["id"].(string)
	ts.Lifecycle(id2, ReauthorizationRequired)
	ts.Settle()
	if ev := events(lc); ev[len(ev)-1] != ReauthorizationRequired {
		t.Fatalf("events %v", ev)
	}
	ts.Advance(30 * time.Minute)
	ts.Deliver(alice, Mail{Subject: "paused"})
	ts.Settle()
	if c := ts.Counters(); c.NotificationsPaused != 1 || c.SubscriptionsRemoved != 1 {
		t.Errorf("counters %+v", c)
	}
}

func TestThrottling(t *testing.T) {
	ts := frozen(t, func(c *Config) { c.RateLimit = 5; c.RateWindow = time.Minute })
	at := getToken(t, ts, alice)
	bt := getToken(t, ts, bob)
	for i := range 5 {
		if resp, _ := call(t, ts, at, "GET", "/me", nil); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	resp, v := call(t, ts, at, "GET", "/me", nil)
	e, _ := v["error"].(map[string]any)
	if resp.StatusCode != 429 || errCode(v) != "ApplicationThrottled" || resp.Header.Get("Retry-After") != "60" || e["message"] == nil {
		t.Fatalf("6th request: %d %v (Retry-After %q)", resp.StatusCode, v, resp.Header.Get("Retry-After"))
	}
	// Per mailbox: bob is not throttled.
	if resp, _ := call(t, ts, bt, "GET", "/me", nil); resp.StatusCode != 200 {
		t.Errorf("bob: %d", resp.StatusCode)
	}
	ts.Advance(30 * time.Second)
	if resp, _ := call(t, ts, at, "GET", "/me", nil); resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "30" {
		t.Errorf("half a window later: %d %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	ts.Advance(30 * time.Second)
	if resp, _ := call(t, ts, at, "GET", "/me", nil); resp.StatusCode != 200 {
		t.Errorf("after the window: %d", resp.StatusCode)
	}
	if c := ts.Counters(); c.Throttled["RequestRate"] != 2 {
		t.Errorf("counters %v", c.Throttled)
	}
}

func TestMailboxConcurrency(t *testing.T) {
	// Hold requests inside the simulator with a slow fault-free path: the
	// limiter counts requests in flight, so take four slots by hand.
	ts := frozen(t)
	at := getToken(t, ts, alice)
	info, _ := ts.UserInfo(alice)
	ts.mu.Lock()
	ts.limits[limitKey{DefaultClientID, info.ID}] = &limiter{inFlight: 4}
	ts.mu.Unlock()
	resp, v := call(t, ts, at, "GET", "/me/messages", nil)
	e, _ := v["error"].(map[string]any)
	if resp.StatusCode != 429 || e["message"] != "Application is over its MailboxConcurrency limit." || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("5th concurrent request: %d %v", resp.StatusCode, v)
	}
	ts.mu.Lock()
	ts.limits[limitKey{DefaultClientID, info.ID}].inFlight = 3
	ts.mu.Unlock()
	if resp, _ := call(t, ts, at, "GET", "/me/messages", nil); resp.StatusCode != 200 {
		t.Fatalf("4th concurrent request: %d", resp.StatusCode)
	}
	// Really concurrent requests never exceed the limit and all release.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { call(t, ts, at, "GET", "/me", nil) })
	}
	wg.Wait()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if n := ts.limits[limitKey{DefaultClientID, info.ID}].inFlight; n != 3 {
		t.Errorf("slots not released: %d in flight", n)
	}
}

func TestInjectedThrottle(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	bt := getToken(t, ts, bob)
	if _, err := ts.Throttle(alice, 2, 7*time.Second); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		resp, v := call(t, ts, at, "GET", "/me/mailFolders/inbox", nil)
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" || errCode(v) != "ApplicationThrottled" {
			t.Fatalf("injected: %d %v", resp.StatusCode, v)
		}
	}
	if resp, _ := call(t, ts, bt, "GET", "/me/mailFolders/inbox", nil); resp.StatusCode != 200 {
		t.Errorf("bob: %d", resp.StatusCode)
	}
	if resp, _ := call(t, ts, at, "GET", "/me/mailFolders/inbox", nil); resp.StatusCode != 200 {
		t.Errorf("after the fault: %d", resp.StatusCode)
	}
	if c := ts.Counters(); c.Throttled["injected"] != 2 || c.Requests[alice] != 3 {
		t.Errorf("counters %v %v", c.Throttled, c.Requests)
	}
}

func TestScaledClock(t *testing.T) {
	// One sim minute per wall millisecond: an access token lasts 60 ms.
	ts := Start(t, Config{Users: []User{{Address: alice}}, ClockScale: time.Millisecond})
	at := getToken(t, ts, alice)
	if resp, _ := call(t, ts, at, "GET", "/me", nil); resp.StatusCode != 200 {
		t.Fatal(resp.StatusCode)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, _ := call(t, ts, at, "GET", "/me", nil)
		if resp.StatusCode == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the access token did not expire on the scaled clock")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Until(ts.Now()); d < 55*time.Minute {
		t.Errorf("sim clock only %v ahead", d)
	}
}

func TestControlAPIAndLogs(t *testing.T) {
	var logs bytes.Buffer
	ts := Start(t, Config{FrozenClock: true, Start: t0, AllowHTTP: true, ControlToken: "ctl",
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	ctl := func(method, path, body string) (int, string) {
		req, _ := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
		req.Header.Set("X-Sim-Token", "ctl")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		b.ReadFrom(resp.Body)
		return resp.StatusCode, b.String()
	}
	if resp, err := http.Get(ts.URL + "/_sim/health"); err != nil || resp.StatusCode != 403 {
		t.Fatalf("without the control token: %v %v", resp.StatusCode, err)
	}
	if code, body := ctl("POST", "/_sim/users", `{"address":"`+alice+`"}`); code != 201 {
		t.Fatalf("add user: %d %s", code, body)
	}
	code, body := ctl("POST", "/_sim/users/"+alice+"/refresh-tokens", `{}`)
	if code != 201 || !strings.Contains(body, "refreshToken") {
		t.Fatalf("mint: %d %s", code, body)
	}
	rt := body[strings.Index(body, `":"`)+3 : strings.LastIndex(body, `"`)]
	out, status := redeem(t, ts, DefaultClientID, rt, "")
	if status != 200 {
		t.Fatalf("redeem minted: %d %v", status, out)
	}
	at := out["access_token"].(string)
	l, lc := newListener(t), newListener(t)
	subscribe(t, ts, at, subBody(l, lc, t0.Add(24*time.Hour)))
	if code, body := ctl("POST", "/_sim/users/"+alice+"/mail", `{"from":"carol@example.com","subject":"Top secret subject","body":"private preview"}`); code != 201 {
		t.Fatalf("mail: %d %s", code, body)
	}
	ts.Settle()
	if code, body := ctl("POST", "/_sim/clock/advance", `{"seconds":3600}`); code != 200 || !strings.Contains(body, "2026-10-01T10:00:00") {
		t.Errorf("advance: %d %s", code, body)
	}
	code, body = ctl("GET", "/_sim/counters", "")
	if code != 200 || !strings.Contains(body, `"notificationsSent":1`) {
		t.Errorf("counters: %d %s", code, body)
	}
	if code, _ := ctl("DELETE", "/_sim/users/"+alice+"/refresh-tokens", ""); code != 204 {
		t.Errorf("revoke: %d", code)
	}
	if _, status := redeem(t, ts, DefaultClientID, rt, ""); status != 400 {
		t.Errorf("revoked via control API: %d", status)
	}
	code, body = ctl("GET", "/_sim/subscriptions", "")
	if code != 200 || !strings.Contains(body, `"needsReauthorization":true`) {
		t.Errorf("subscriptions: %d %s", code, body)
	}
	id := body[strings.Index(body, `"id":"`)+6:]
	id = id[:strings.Index(id, `"`)]
	if code, _ := ctl("POST", "/_sim/subscriptions/"+id+"/lifecycle", `{"event":"subscriptionRemoved"}`); code != 204 {
		t.Errorf("lifecycle: %d", code)
	}
	ts.Settle()
	// The logs hold no secrets or mail content.
	log := logs.String()
	if !strings.Contains(log, "subscription created") {
		t.Errorf("expected log lines, got %q", log)
	}
	for _, secret := range []string{alice, "carol@example.com", "Top secret", "private preview", "secret-state", rt, at, strconv.Quote(rt)} {
		if strings.Contains(log, secret) {
			t.Errorf("log contains %q", secret)
		}
	}
}

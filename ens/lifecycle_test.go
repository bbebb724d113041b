package ens_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ensgate/ensgate/attest"
	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/ewsproxy"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/store"
)

func TestForgedCallbacksAreRefusedWithoutCallingExchange(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	item := e.deliver(alice, mailFromCarol)
	e.waitFor("the push", func() bool { return len(e.pushes.pushes("")) == 1 })
	e.settle()
	before := e.sim.Counters().Requests

	genuine, body := e.newMailNotification(alice, item.ID)
	u, _ := url.Parse(genuine)
	q := u.Query()
	id, key := q.Get("id"), q.Get("f")
	flip := func(s string) string {
		b := []byte(s)
		if b[5] == 'A' {
			b[5] = 'B'
		} else {
			b[5] = 'A'
		}
		return string(b)
	}
	for name, query := range map[string]url.Values{
		"altered key":     {"id": {id}, "f": {flip(key)}},
		"altered id":      {"id": {flip(id)}, "f": {key}},
		"unknown id":      {"id": {"AAAAAAAAAAAAAAAAAAAAAA"}, "f": {key}},
		"short key":       {"id": {id}, "f": {key[:20]}},
		"no key":          {"id": {id}},
		"nothing":         {},
		"other key shape": {"id": {id}, "f": {strings.Repeat("-", 43)}},
	} {
		u.RawQuery = query.Encode()
		status, answer := post(t, u.String(), body)
		if status != http.StatusForbidden || answer != "" {
			t.Errorf("%s: HTTP %d %q, want 403 with nothing said", name, status, answer)
		}
	}
	after := e.sim.Counters().Requests
	for op, n := range after {
		if n != before[op] {
			t.Errorf("forged callbacks caused %d %s calls to Exchange", n-before[op], op)
		}
	}
	if n := len(e.pushes.pushes("")); n != 1 {
		t.Errorf("forged callbacks caused %d more pushes", n-1)
	}
}

func TestUnregisterEndsTheSubscriptionAtTheNextNotification(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.register(e.basicDevice("tablet", alice, alicePW, 0))
	if status, body := e.call("POST", "/api/ens/unregister", e.unregisterBody("phone")); status != 200 || len(body) != 0 {
		t.Fatalf("unregister: %d %v", status, body)
	}
	e.deliver(alice, mailFromCarol)
	e.waitFor("the tablet's push", func() bool { return len(e.pushes.pushes(tok("tablet"))) == 1 })
	if n := len(e.pushes.pushes(tok("phone"))); n != 0 {
		t.Errorf("the unregistered phone got %d pushes", n)
	}
	if status, body := e.call("GET", "/api/ens/status?deviceId=phone", nil); status != 404 || body["error"] != "unknown_device" {
		t.Errorf("status of an unregistered device: %d %v", status, body)
	}

	if status, _ := e.call("POST", "/api/ens/unregister", e.unregisterBody("tablet")); status != 200 {
		t.Fatalf("unregister the last device: %d", status)
	}
	e.deliver(alice, mailFromCarol)
	e.waitFor("Unsubscribe", func() bool { return e.sim.Counters().Unsubscribed == 1 })
	if n := len(e.pushes.pushes("")); n != 1 {
		t.Errorf("%d pushes after the last device left, want none beyond the first", n-1)
	}
	if status, _ := e.call("POST", "/api/ens/unregister", e.unregisterBody("tablet")); status != 404 {
		t.Errorf("unregistering twice: %d, want 404", status)
	}
}

func TestNewRegistrationSupersedesTheMailboxSubscription(t *testing.T) {
	e := newEnv(t, envOptions{})
	first := e.register(e.basicDevice("phone", alice, alicePW, 0))
	second := e.register(e.basicDevice("tablet", alice, alicePW, 0))
	if first == second {
		t.Fatal("the second registration kept the first subscription id")
	}
	e.deliver(alice, mailFromCarol)
	e.waitFor("pushes to both devices", func() bool {
		return len(e.pushes.pushes(tok("phone"))) == 1 && len(e.pushes.pushes(tok("tablet"))) == 1
	})
	// Exchange calls both subscriptions; the superseded one is ended.
	e.waitFor("the old subscription's Unsubscribe", func() bool { return e.sim.Counters().Unsubscribed == 1 })
	e.settle()
	if n := len(e.pushes.pushes("")); n != 2 {
		t.Errorf("%d pushes, want one per device", n)
	}
	subs := e.simSubscriptions(alice)
	if len(subs) != 2 || subs[0].State == "active" || subs[1].State != "active" {
		t.Errorf("simulator subscriptions %+v: want the first ended, the second active", subs)
	}
}

func TestExpiredCredentialsAskDevicesToRegisterAgainOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.register(e.basicDevice("private", alice, alicePW, 4))
	if err := e.sim.SetPassword(alice, "changed-password"); err != nil {
		t.Fatal(err)
	}
	e.deliver(alice, mailFromCarol)
	e.waitFor("Unsubscribe", func() bool { return e.newestSimState(alice) == "unsubscribed" })
	// The register-again pushes are a job, queued with the failure.
	e.waitFor("the register-again pushes", func() bool { return len(e.pushes.pushes("")) >= 3 })
	e.settle()

	phone := e.pushes.pushes(tok("phone"))
	if len(phone) != 2 || phone[0].Kind != push.Reregister || phone[1].Kind != push.NewMail || !phone[1].Generic {
		t.Fatalf("level-0 device got %+v: want a silent re-register push and a generic notice", phone)
	}
	private := e.pushes.pushes(tok("private"))
	if len(private) != 1 || private[0].Kind != push.Reregister {
		t.Fatalf("level-4 device got %+v: want only the silent push", private)
	}
	for _, dev := range []string{"phone", "private"} {
		status, body := e.call("GET", "/api/ens/status?deviceId="+dev, nil)
		if status != 200 || body["registered"] != true || body["subscription"] != "failed" || body["resubscribe"] != true {
			t.Errorf("status of %s: %d %v", dev, status, body)
		}
	}
	// No retry storm: the subscription is gone, more mail calls nothing.
	requests := e.sim.Counters().Requests
	e.deliver(alice, mailFromCarol)
	e.settle()
	if got := e.sim.Counters().Requests; got["GetFolder"] != requests["GetFolder"] || got["GetItem"] != requests["GetItem"] {
		t.Errorf("EWS calls after the failure: %v, before %v", got, requests)
	}
	if n := len(e.pushes.pushes("")); n != 3 {
		t.Errorf("%d pushes in all, want 3", n)
	}
}

func TestDeadPushTokenDeactivatesTheDevice(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.pushes.script(tok("phone"), push.TokenDead)
	e.deliver(alice, mailFromCarol)
	e.waitFor("Unsubscribe of the mailbox without devices", func() bool { return e.newestSimState(alice) == "unsubscribed" })
	status, body := e.call("GET", "/api/ens/status?deviceId=phone", nil)
	if status != 200 || body["registered"] != false || body["resubscribe"] != true {
		t.Errorf("status of a device with a dead token: %d %v", status, body)
	}
}

func TestStatusPingsRecordLivenessAndPushNothing(t *testing.T) {
	e := newEnv(t, envOptions{})
	subID := e.register(e.basicDevice("phone", alice, alicePW, 0))
	sub, err := e.store.SubscriptionByPublicID(context.Background(), subID)
	if err != nil {
		t.Fatal(err)
	}
	// StatusFrequency is one minute: 100 ms on the simulator's clock.
	e.waitFor("two status pings", func() bool { return e.sim.Counters().StatusEventsSent >= 2 })
	later, _ := e.store.SubscriptionByPublicID(context.Background(), subID)
	if !later.LastSeenAt.After(sub.LastSeenAt) {
		t.Errorf("last seen %v did not move after status pings (was %v)", later.LastSeenAt, sub.LastSeenAt)
	}
	if n := len(e.pushes.pushes("")); n != 0 {
		t.Errorf("status pings caused %d pushes", n)
	}
}

func TestSilentSubscriptionFailsAndAsksToRegisterAgain(t *testing.T) {
	e := newEnv(t, envOptions{simConfig: ewssim.Config{ClockScale: time.Hour}}) // no pings during the test
	subID := e.register(e.basicDevice("phone", alice, alicePW, 0))
	if _, err := e.store.Pool().Exec(context.Background(),
		`UPDATE subscriptions SET last_seen_at = now() - interval '3 minutes' WHERE public_id = $1`, subID); err != nil {
		t.Fatal(err)
	}
	e.svc.Stop()
	e.svc.Start() // the health worker runs at once on start
	e.waitFor("the re-register push", func() bool { return len(e.pushes.pushes(tok("phone"))) == 1 })
	if m := e.pushes.pushes(tok("phone"))[0]; m.Kind != push.Reregister {
		t.Errorf("push %+v, want a silent re-register", m)
	}
	status, body := e.call("GET", "/api/ens/status?deviceId=phone", nil)
	if status != 200 || body["subscription"] != "failed" || body["resubscribe"] != true {
		t.Errorf("status: %d %v", status, body)
	}
	if state := ewsState(t, e, subID); state != "failed" {
		t.Errorf("subscription state %q", state)
	}
}

func ewsState(t *testing.T, e *env, subID string) string {
	sub, err := e.store.SubscriptionByPublicID(context.Background(), subID)
	if err != nil {
		t.Fatal(err)
	}
	return sub.State
}

// Exchange's answer when it is busy must not turn into a failed
// registration storm: the client backs off and ENS says 502 with the code.
func TestExchangeBusyDuringRegistration(t *testing.T) {
	e := newEnv(t, envOptions{})
	if _, err := e.sim.InjectFault(ewssim.Fault{Kind: ewssim.FaultServerBusy, Operation: "Subscribe", Count: 1}); err != nil {
		t.Fatal(err)
	}
	status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(e.basicDevice("phone", alice, alicePW, 0)))
	if status != http.StatusBadGateway || body["error"] != "exchange_error" || !strings.Contains(body["message"].(string), "ErrorServerBusy") {
		t.Fatalf("register while Exchange is busy: %d %v", status, body)
	}
	if n := e.sim.Counters().Requests["Subscribe"]; n != 1 {
		t.Errorf("%d Subscribe calls, want 1", n)
	}
}

// A device blocked by an admin gets no more pushes, while the mailbox's
// other devices still do; unblocked, it gets them again.
func TestBlockedDeviceGetsNoPushes(t *testing.T) {
	e := newEnv(t, envOptions{compliance: true})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.register(e.basicDevice("tablet", alice, alicePW, 0))
	ctx := context.Background()
	if err := e.store.SetCompliance(ctx, e.tenant.ID, "phone", "blocked"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // NOTIFY reaches the cache
	e.deliver(alice, mailFromCarol)
	e.waitFor("the tablet's push", func() bool { return len(e.pushes.pushes(tok("tablet"))) == 1 })
	e.settle()
	if n := len(e.pushes.pushes(tok("phone"))); n != 0 {
		t.Fatalf("the blocked phone got %d pushes", n)
	}
	e.store.SetCompliance(ctx, e.tenant.ID, "phone", "compliant")
	time.Sleep(200 * time.Millisecond)
	e.deliver(alice, mailFromCarol)
	e.waitFor("the unblocked phone's push", func() bool { return len(e.pushes.pushes(tok("phone"))) == 1 })
}

func TestAdminAPIBlocksAndRemovesDevices(t *testing.T) {
	e := newEnv(t, envOptions{adminToken: strings.Repeat("A", 40)})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	admin := strings.Repeat("A", 40)
	if status, body := e.callWith(e.token, "POST", "/api/ens/admin/tenants/contoso/devices/phone/block", nil); status != 401 {
		t.Errorf("a tenant token opened the admin API: %d %v", status, body)
	}
	if status, body := e.callWith(admin, "POST", "/api/ens/admin/tenants/nobody/devices/phone/block", nil); status != 404 {
		t.Errorf("unknown tenant: %d %v", status, body)
	}
	status, body := e.callWith(admin, "POST", "/api/ens/admin/tenants/contoso/devices/phone/block", nil)
	if status != 200 || body["compliance"] != "blocked" {
		t.Fatalf("block: %d %v", status, body)
	}
	if s, _ := e.store.ComplianceState(context.Background(), store.DeviceKey{TenantID: e.tenant.ID, DeviceID: "phone"}); s != "blocked" {
		t.Errorf("stored state %q", s)
	}
	status, body = e.callWith(admin, "POST", "/api/ens/admin/tenants/contoso/devices/phone/remove", nil)
	if status != 200 || body["subscriptionEnded"] != true {
		t.Fatalf("remove: %d %v", status, body)
	}
	status, body = e.callWith(admin, "GET", "/api/ens/admin/tenants/contoso/devices", nil)
	devices, _ := body["devices"].([]any)
	if status != 200 || len(devices) != 1 || devices[0].(map[string]any)["compliance"] != "wiped" || devices[0].(map[string]any)["state"] != "removed" {
		t.Fatalf("list: %d %v", status, body)
	}
	// Removal ended the registration server-side: Exchange is told to stop.
	e.deliver(alice, mailFromCarol)
	e.waitFor("Unsubscribe", func() bool { return e.newestSimState(alice) == "unsubscribed" })
	if n := len(e.pushes.pushes("")); n != 0 {
		t.Errorf("%d pushes to a removed device", n)
	}
	if status, _ := e.call("GET", "/api/ens/status?deviceId=phone", nil); status != 404 {
		t.Errorf("status of a removed device: %d", status)
	}
}

// behindProxy puts an ENSGate EWS guard (with its own compliance cache)
// and a reverse proxy in front of the simulator, as a tenant endpoint, and
// registers the phone and the tablet through it; then the proxy's copy
// blocks the tablet. ENS itself consults no compliance in this setup (the
// env runs without), so only the proxy's answers can stop the tablet.
// front, if not nil, sees each request first and may answer it itself.
func behindProxy(t *testing.T, e *env, secret []byte, front func(http.ResponseWriter, *http.Request) bool) {
	t.Helper()
	states := compliance.New(e.store, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { states.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	guard := ewsproxy.NewGuard(ewsproxy.Config{Attestation: attest.Attestation{Secret: secret}}, states, slog.New(slog.DiscardHandler))
	upstream, _ := url.Parse(e.sim.URL)
	rp := httputil.NewSingleHostReverseProxy(upstream)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if front != nil && front(w, r) {
			return
		}
		guard.Serve(w, r, func(w http.ResponseWriter, r *http.Request, _ bool) error { rp.ServeHTTP(w, r); return nil })
	}))
	t.Cleanup(proxy.Close)
	ewsURL := proxy.URL + ewssim.EWSPath
	if _, err := e.store.AddEndpoint(context.Background(), e.tenant.ID, ewsURL, ""); err != nil {
		t.Fatal(err)
	}
	proxyState := func(state string) func() bool {
		return func() bool {
			s, _ := states.State(store.DeviceKey{TenantID: e.tenant.ID, DeviceID: "tablet"})
			return s == state
		}
	}
	for _, id := range []string{"phone", "tablet"} {
		e.store.SetCompliance(context.Background(), e.tenant.ID, id, store.Compliant)
	}
	e.waitFor("the proxy's states", proxyState(store.Compliant))
	for _, id := range []string{"phone", "tablet"} {
		d := e.basicDevice(id, alice, alicePW, 0)
		d.EWSURL = ewsURL
		e.register(d)
	}
	e.store.SetCompliance(context.Background(), e.tenant.ID, "tablet", store.Blocked)
	e.waitFor("the proxy's block", proxyState(store.Blocked))
}

// Behind an ENSGate EWS proxy, ENS pushes only to the devices the proxy
// accepted, and is done with the others for that item.
func TestPushesOnlyToDevicesTheProxyAccepted(t *testing.T) {
	secret := []byte(strings.Repeat("s", 32))
	e := newEnv(t, envOptions{proxySecret: secret})
	behindProxy(t, e, secret, nil)
	e.deliver(alice, mailFromCarol)
	e.waitFor("the phone's push", func() bool { return len(e.pushes.pushes(tok("phone"))) == 1 })
	e.settle()
	if n := len(e.pushes.pushes(tok("tablet"))); n != 0 {
		t.Errorf("the tablet the proxy refused got %d pushes", n)
	}
	var open int
	e.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM push_claims WHERE done_at IS NULL`).Scan(&open)
	if open != 0 {
		t.Errorf("%d push claims left open", open)
	}
}

// An answer without the proxy's device list (here the GetFolder for the
// badge gets a bare 503, as from a balancer or a proxy node that cannot
// judge) does not turn the list of the item's GetItem into "everyone":
// the device the proxy refused still gets nothing.
func TestAnAnswerWithoutTheProxysListAcceptsNoOneElse(t *testing.T) {
	secret := []byte(strings.Repeat("s", 32))
	e := newEnv(t, envOptions{proxySecret: secret})
	var failGetFolder atomic.Bool
	behindProxy(t, e, secret, func(w http.ResponseWriter, r *http.Request) bool {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if failGetFolder.Load() && bytes.Contains(body, []byte("GetFolder")) {
			http.Error(w, "Service Unavailable", http.StatusServiceUnavailable)
			return true
		}
		return false
	})
	failGetFolder.Store(true)
	e.deliver(alice, mailFromCarol)
	e.waitFor("the phone's push", func() bool { return len(e.pushes.pushes(tok("phone"))) == 1 })
	e.settle()
	if n := len(e.pushes.pushes(tok("tablet"))); n != 0 {
		t.Fatalf("the tablet the proxy refused got %d pushes after a list-less answer", n)
	}
}

package ens_test

// What an attacker holding the tenant's API token (every mail app of the
// tenant has it) and one real password can do to other users: nothing.
// Each test is a finding of the trust review (issue 11) replayed.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/store"
)

var mailForAlice = ewssim.Mail{From: "dave@fabrikam.test", FromName: "Dave", Subject: "For Alice only", Body: "Alice's secret plans."}

// subscribeCalls is how many Subscribe requests reached Exchange.
func (e *env) subscribeCalls() int64 { return e.sim.Counters().Requests["Subscribe"] }

// Finding 1: bob, with his own password, claims alice's address. Exchange
// would subscribe bob's own Inbox; ENS must refuse before storing anything,
// so alice's subscription, devices and mail stay hers.
func TestRegistrationBindsTheMailboxItsCredentialsLogInTo(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("alice-phone", alice, alicePW, 0))
	aliceSub := e.simSubscriptions(alice)

	for _, tc := range []struct {
		name    string
		prepare func()
	}{
		{"bob's own password", func() {}},
		{"bob as alice's delegate", func() {
			if err := e.sim.GrantAccess(alice, bob); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		tc.prepare()
		before := e.subscribeCalls()
		bobClaimsAlice := e.basicDevice("bob-phone", alice, bobPW, 0)
		bobClaimsAlice.Credentials["username"] = bob
		status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(bobClaimsAlice))
		if status != http.StatusForbidden || body["error"] != "mailbox_mismatch" {
			t.Fatalf("%s: registering alice's address: %d %v, want 403 mailbox_mismatch", tc.name, status, body)
		}
		if n := e.subscribeCalls() - before; n != 0 {
			t.Errorf("%s: %d Subscribe calls for a refused registration", tc.name, n)
		}
	}
	// An address Exchange does not know is refused alike.
	ghost := e.basicDevice("bob-phone", "nobody@contoso.test", bobPW, 0)
	ghost.Credentials["username"] = bob
	if status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(ghost)); status != http.StatusForbidden || body["error"] != "mailbox_mismatch" {
		t.Fatalf("registering an unknown address: %d %v", status, body)
	}

	// Alice's subscription is untouched and her status true.
	if got := e.simSubscriptions(alice); len(got) != len(aliceSub) || got[len(got)-1].State != ewssim.StateActive {
		t.Fatalf("alice's subscriptions at Exchange changed: %+v", got)
	}
	if status, body := e.call("GET", "/api/ens/status?deviceId=alice-phone", nil); status != 200 || body["subscription"] != "active" {
		t.Fatalf("alice's status: %d %v", status, body)
	}
	// Her mail reaches her phone, and bob's phone got nothing ever.
	e.deliver(alice, mailForAlice)
	e.waitFor("alice's push", func() bool { return len(e.pushes.pushes(tok("alice-phone"))) == 1 })
	e.deliver(bob, mailFromCarol)
	e.settle()
	if n := len(e.pushes.pushes(tok("bob-phone"))); n != 0 {
		t.Fatalf("bob's phone got %d pushes", n)
	}
	if p := e.pushes.pushes(tok("alice-phone")); len(p) != 1 || p[0].Subject != mailForAlice.Subject {
		t.Fatalf("alice's pushes: %+v", p)
	}

	// Every EWS call names the mailbox: Exchange enforces it too.
	if strings.Contains(e.logs.String(), alicePW) || strings.Contains(e.logs.String(), bobPW) {
		t.Fatal("a password reached the log")
	}
}

// Finding 2: a device id belongs to the device that registered it. Another
// app of the tenant can neither end it, read its status, nor take it over,
// and learns nothing about which ids exist.
func TestDeviceIDBelongsToTheDeviceThatRegisteredIt(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("alice-iphone", alice, alicePW, 0))
	secret := e.devices().Secret("alice-iphone")

	// The answers for alice's id without its secret are byte-for-byte the
	// answers for an id nobody registered.
	for _, tc := range []struct{ name, secret string }{{"no secret", ""}, {"wrong secret", strings.Repeat("A", 43)}, {"oversized secret", strings.Repeat("A", 4096)}} {
		st, body := e.callWithSecret(e.token, tc.secret, "GET", "/api/ens/status?deviceId=alice-iphone", nil)
		stNever, bodyNever := e.callWithSecret(e.token, tc.secret, "GET", "/api/ens/status?deviceId=never-registered", nil)
		if st != 404 || st != stNever || body["error"] != bodyNever["error"] || body["message"] != bodyNever["message"] {
			t.Errorf("status, %s: %d %v; unknown id: %d %v", tc.name, st, body, stNever, bodyNever)
		}
		st, body = e.call("POST", "/api/ens/unregister", map[string]string{"deviceId": "alice-iphone", "deviceSecret": tc.secret})
		stNever, bodyNever = e.call("POST", "/api/ens/unregister", map[string]string{"deviceId": "never-registered", "deviceSecret": tc.secret})
		if st != 404 || st != stNever || body["message"] != bodyNever["message"] {
			t.Errorf("unregister, %s: %d %v; unknown id: %d %v", tc.name, st, body, stNever, bodyNever)
		}
	}

	// Bob re-registers alice's id with his own, valid credentials: refused
	// as an unknown device, before any call to Exchange.
	before := e.subscribeCalls()
	bobApp := e.basicDevice("alice-iphone", bob, bobPW, 0)
	bobApp.PushToken = tok("bob-iphone")
	body := e.registerBody(bobApp)
	for _, presented := range []string{"", strings.Repeat("B", 43)} {
		body["deviceSecret"] = presented
		if presented == "" {
			delete(body, "deviceSecret")
		}
		if status, answer := e.call("POST", "/api/ens/registerdevicev2", body); status != 404 || answer["error"] != "unknown_device" {
			t.Fatalf("taking over alice's id (secret %q): %d %v", presented, status, answer)
		}
	}
	if n := e.subscribeCalls() - before; n != 0 {
		t.Errorf("%d Subscribe calls for refused takeovers", n)
	}
	// Alice's row is hers: her mail still goes to her token.
	e.deliver(alice, mailForAlice)
	e.waitFor("alice's push", func() bool { return len(e.pushes.pushes(tok("alice-iphone"))) == 1 })
	if n := len(e.pushes.pushes(tok("bob-iphone"))); n != 0 {
		t.Fatalf("bob's token got %d pushes", n)
	}

	// Alice herself, with her secret, keeps it across registrations.
	e.register(e.basicDevice("alice-iphone", alice, alicePW, 1))
	if got := e.devices().Secret("alice-iphone"); got != secret {
		t.Fatal("a re-registration with the right secret changed the secret")
	}
	if st, body := e.call("GET", "/api/ens/status?deviceId=alice-iphone", nil); st != 200 || body["subscription"] != "active" {
		t.Fatalf("alice's status with her secret: %d %v", st, body)
	}
	if st, _ := e.call("POST", "/api/ens/unregister", e.unregisterBody("alice-iphone")); st != 200 {
		t.Fatalf("alice's unregister with her secret: %d", st)
	}
	// An id given up is free again.
	bobClient := &deviceclient.Client{BaseURL: e.api.URL + "/api/ens", Token: e.token}
	bobApp.EWSURL = e.sim.EWSURL
	if _, err := bobClient.Register(context.Background(), bobApp); err != nil {
		t.Fatalf("registering an id its device gave up: %v", err)
	}
	if bobClient.Secret("alice-iphone") == secret {
		t.Fatal("the new owner got the old secret")
	}
}

// A device registered before device secrets existed has none: its own
// mailbox may register it again (and gets a secret), nobody else.
func TestDeviceWithoutSecretIsClaimedOnlyByItsMailbox(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("old-phone", alice, alicePW, 0))
	if _, err := e.store.Pool().Exec(context.Background(), `UPDATE devices SET secret_hash = NULL`); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.call("GET", "/api/ens/status?deviceId=old-phone", nil); st != 404 {
		t.Fatalf("status of a device without a secret: %d, want 404 until it registers again", st)
	}
	bobApp := e.basicDevice("old-phone", bob, bobPW, 0)
	e.devices().SetSecret("old-phone", "")
	if st, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(bobApp)); st != 404 {
		t.Fatalf("bob claimed a device without a secret: %d %v", st, body)
	}
	e.register(e.basicDevice("old-phone", alice, alicePW, 0))
	if st, _ := e.call("GET", "/api/ens/status?deviceId=old-phone", nil); st != 200 {
		t.Fatalf("status after the mailbox claimed its device: %d", st)
	}
}

// Finding 9: a blocked, wiped or removed device is refused at registration
// with 403 before any call to Exchange, also when the tenant's endpoint is
// Exchange itself; unblock lets it back.
func TestBlockedDeviceCannotRegister(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	for _, block := range []func() error{
		func() error { return e.store.SetCompliance(ctx, e.tenant.ID, "phone", store.Blocked) },
		func() error { return e.store.SetCompliance(ctx, e.tenant.ID, "phone", store.Wiped) },
		func() error { _, err := e.store.RemoveDevice(ctx, e.tenant.ID, "phone"); return err },
	} {
		body := e.registerBody(e.basicDevice("phone", alice, alicePW, 0))
		if err := block(); err != nil {
			t.Fatal(err)
		}
		before := e.subscribeCalls()
		if st, answer := e.call("POST", "/api/ens/registerdevicev2", body); st != 403 || answer["error"] != "device_blocked" {
			t.Fatalf("registering a blocked device: %d %v", st, answer)
		}
		if n := e.subscribeCalls() - before; n != 0 {
			t.Fatalf("%d Subscribe calls for a blocked device", n)
		}
		if err := e.store.SetCompliance(ctx, e.tenant.ID, "phone", store.Compliant); err != nil {
			t.Fatal(err)
		}
		e.register(e.basicDevice("phone", alice, alicePW, 0))
	}
}

// Finding 10: a captured callback URL replays nothing and amplifies
// nothing: an item pushed once is never pushed again however late the
// replay, only Inbox items are announced, and one notification fetches at
// most a bounded number of items.
func TestCapturedCallbackReplaysAndAmplifiesNothing(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	item := e.deliver(alice, mailForAlice)
	e.waitFor("the push", func() bool { return len(e.pushes.pushes("")) == 1 })
	callback, replay := e.newMailNotification(alice, item.ID)

	// At once: the pushes are done.
	if st, result := post(t, callback, replay); st != 200 || result != ews.SubscriptionOK {
		t.Fatalf("replay: %d %s", st, result)
	}
	// Three days later, when the claims are long cleaned up.
	e.travel(72 * time.Hour)
	if _, err := e.store.Pool().Exec(context.Background(), `DELETE FROM push_claims`); err != nil {
		t.Fatal(err)
	}
	post(t, callback, replay)
	// And with a forged fresh time stamp for the old item.
	_, fresh := e.newMailNotificationAt(alice, item.ID, time.Now().Add(72*time.Hour))
	post(t, callback, fresh)
	if n := len(e.pushes.pushes("")); n != 1 {
		t.Fatalf("%d pushes after replays, want the first only", n)
	}
	e.travel(-72 * time.Hour)

	// An item of another mailbox alice may open as a delegate is not news
	// of her Inbox.
	if err := e.sim.GrantAccess(bob, alice); err != nil {
		t.Fatal(err)
	}
	bobs := e.deliver(bob, mailFromCarol)
	_, forged := e.newMailNotification(alice, bobs.ID)
	post(t, callback, forged)
	if n := len(e.pushes.pushes("")); n != 1 {
		t.Fatalf("bob's item was announced to alice's phone (%d pushes)", n)
	}

	// One notification naming 500 items fetches a bounded number.
	before := e.sim.Counters().Requests["GetItem"]
	ids := make([]string, 500)
	for i := range ids {
		ids[i] = fmt.Sprintf("AAMkAGForged%04d", i)
	}
	_, many := e.newMailNotificationFor(alice, ids, time.Now())
	post(t, callback, many)
	if n := e.sim.Counters().Requests["GetItem"] - before; n > 50 {
		t.Fatalf("one notification naming %d items made %d GetItem calls", len(ids), n)
	}
}

// A database failure is not an unknown device: a 404 would make every app
// of the tenant register again at once.
func TestStatusDoesNotCallADatabaseFailureAnUnknownDevice(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	if st, _ := e.call("GET", "/api/ens/status?deviceId=phone", nil); st != 200 {
		t.Fatalf("status: %d", st)
	}
	if _, err := e.store.Pool().Exec(context.Background(), `ALTER TABLE devices RENAME TO devices_away`); err != nil {
		t.Fatal(err)
	}
	if st, body := e.call("GET", "/api/ens/status?deviceId=phone", nil); st == 404 || st < 500 {
		t.Fatalf("status while the devices table is away: %d %v, want a 5xx", st, body)
	}
}

// Registrations made before mailbox binding were never checked: bob's
// device may sit under alice's mailbox. The upgrade deactivates them; the
// first callback of such a subscription ends it and asks its devices to
// register again, and only those whose credentials log in to the mailbox
// get it back.
func TestRegistrationsFromBeforeMailboxBindingAreCheckedAgain(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("alice-phone", alice, alicePW, 0))
	ctx := context.Background()
	pool := e.store.Pool()

	// The state an old gateway left: no device secrets, the Inbox not
	// recorded with the credentials, and bob's phone filed under alice's
	// mailbox by a registration that claimed her address. Then the
	// upgrade's migration ran (002_trust.sql).
	sim := e.simSubscriptions(alice)
	callback, _ := url.Parse(sim[len(sim)-1].URL)
	key, err := seal.ParseSubscriptionKey(callback.Query().Get("f"))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := e.store.SubscriptionByPublicID(ctx, callback.Query().Get("id"))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := key.Open(sub.PublicID, sub.SealedCredentials)
	if err != nil {
		t.Fatal(err)
	}
	var creds map[string]any
	json.Unmarshal(plain, &creds)
	delete(creds, "inboxId")
	plain, _ = json.Marshal(creds)
	for _, stmt := range []string{
		`UPDATE subscriptions SET sealed_credentials = $1 WHERE id = $2`,
		`UPDATE devices SET secret_hash = NULL`,
		`INSERT INTO devices (tenant_id, device_id, mailbox_hash, platform, push_token, notification_level)
			SELECT tenant_id, 'bob-phone', mailbox_hash, 'ios', '` + tok("bob-phone") + `', 0 FROM devices WHERE device_id = 'alice-phone'`,
		`UPDATE devices SET state = 'inactive', state_reason = 'reverify: registered before mailbox binding' WHERE state = 'active'`,
	} {
		args := []any{}
		if strings.Contains(stmt, "$1") {
			args = []any{key.Seal(sub.PublicID, plain), sub.ID}
		}
		if _, err := pool.Exec(ctx, stmt, args...); err != nil {
			t.Fatal(err)
		}
	}

	e.deliver(alice, mailForAlice)
	e.waitFor("the reverify pushes", func() bool { return len(e.pushes.pushes("")) == 2 })
	e.settle()
	for _, dev := range []string{"alice-phone", "bob-phone"} {
		if p := e.pushes.pushes(tok(dev)); len(p) != 1 || p[0].Kind != push.Reregister {
			t.Fatalf("%s got %+v, want one register-again push and no mail", dev, p)
		}
	}
	if got, _ := e.store.SubscriptionByPublicID(ctx, sub.PublicID); got.State != store.SubscriptionFailed || got.StateReason != store.ReasonReverify {
		t.Fatalf("the old subscription: %s/%s", got.State, got.StateReason)
	}

	// Bob cannot get alice's mailbox back, under either id.
	bobAsAlice := e.basicDevice("bob-phone", alice, bobPW, 0)
	bobAsAlice.Credentials["username"] = bob
	if st, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(bobAsAlice)); st != 403 {
		t.Fatalf("bob re-registering under alice's address: %d %v", st, body)
	}
	if st, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(e.basicDevice("bob-phone", bob, bobPW, 0))); st != 404 {
		t.Fatalf("bob claiming his old row of alice's mailbox: %d %v", st, body)
	}
	// Alice can, and her mail is hers again.
	e.register(e.basicDevice("alice-phone", alice, alicePW, 0))
	e.deliver(alice, mailForAlice)
	e.waitFor("alice's mail", func() bool { return len(e.pushes.pushes(tok("alice-phone"))) == 2 })
	e.settle()
	if p := e.pushes.pushes(tok("bob-phone")); len(p) != 1 {
		t.Fatalf("bob's phone got %d pushes, want only the register-again one", len(p))
	}
}

// A captured callback URL and body, sent in a loop, are answered 503 past
// the subscription's rate, before any work: no claims, no GetItem.
func TestCallbackFloodIsLimitedPerSubscription(t *testing.T) {
	e := newEnv(t, envOptions{callbackRate: 1})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	callback, body := e.newMailNotification(alice, "AAMkAGNotThere=")
	before := e.sim.Counters().Requests["GetItem"]
	refused := 0
	for range 12 {
		if st, _ := post(t, callback, body); st == http.StatusServiceUnavailable {
			refused++
		}
	}
	if refused < 5 {
		t.Fatalf("%d of 12 notifications at once refused, want most past the burst of 2", refused)
	}
	if n := e.sim.Counters().Requests["GetItem"] - before; n > 12-int64(refused) {
		t.Fatalf("%d GetItem calls for %d admitted notifications", n, 12-refused)
	}
}

// While the database is away, the device API answers 503 with Retry-After
// (apps retry), never 500.
func TestDatabaseAwayIsAnsweredWithRetryAfter(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	down, err := store.Open(context.Background(), "postgres://ensgate@127.0.0.1:1/ensgate?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(down.Close)
	e.restart(func(c *ens.Config) { c.Store = down })
	for _, tc := range []struct {
		method, path string
		body         any
	}{
		{"GET", "/api/ens/status?deviceId=phone", nil},
		{"POST", "/api/ens/publickey", map[string]string{"deviceId": "phone", "email": alice}},
		{"POST", "/api/ens/unregister", e.unregisterBody("phone")},
	} {
		req, _ := http.NewRequest(tc.method, e.api.URL+tc.path, nil)
		if tc.body != nil {
			b, _ := json.Marshal(tc.body)
			req, _ = http.NewRequest(tc.method, e.api.URL+tc.path, strings.NewReader(string(b)))
		}
		req.Header.Set("Authorization", "Bearer "+e.token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s %s with the database away: %d, Retry-After %q; want 503 with Retry-After", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
}

// Readiness (for the load balancer) says what a node is missing: the
// database, the first compliance load, or its workers.
func TestReadyNamesWhatTheNodeIsMissing(t *testing.T) {
	e := newEnv(t, envOptions{compliance: true})
	ready := e.ready
	e.waitFor("ready", func() bool { st, _ := ready(); return st == 200 })
	e.svc.Stop()
	if st, body := ready(); st != 503 || fmt.Sprint(body["missing"]) != "[workers]" {
		t.Fatalf("stopped workers: %d %v", st, body)
	}
	down, err := store.Open(context.Background(), "postgres://ensgate@127.0.0.1:1/ensgate?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(down.Close)
	e.restart(func(c *ens.Config) { c.Store = down })
	// The job workers cannot start without the database either.
	if st, body := ready(); st != 503 || fmt.Sprint(body["missing"]) != "[database workers]" {
		t.Fatalf("database away: %d %v", st, body)
	}
}

// A node works on a bounded number of callbacks at once: past it, Exchange
// is answered 503 with Retry-After at once (and retries), nothing is
// buffered. A push accepted counts in the webhook-to-push histogram.
func TestCallbacksInFlightAreBounded(t *testing.T) {
	e := newEnv(t, envOptions{inFlight: 1, statusFrequency: 30})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	if _, err := e.sim.InjectFault(ewssim.Fault{Kind: ewssim.FaultDelay, User: alice, Operation: "GetItem", Count: 1, Delay: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	before := gatherMetrics(t)
	item := e.deliver(alice, mailForAlice) // its callback now waits on GetItem
	e.waitFor("the callback in flight", func() bool { return e.sim.Counters().Requests["GetItem"] == 1 })
	callback, body := e.newMailNotification(alice, item.ID)
	req, _ := http.NewRequest("POST", callback, strings.NewReader(string(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a second callback while one is in flight: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	e.waitFor("the push", func() bool { return len(e.pushes.pushes("")) == 1 })
	if b, a := histogramCount(before), histogramCount(gatherMetrics(t)); a != fmt.Sprint(atoi(b)+1) {
		t.Fatalf("webhook-to-push observations %q before, %q after one push", b, a)
	}
}

// histogramCount is the webhook-to-push histogram's count in metrics text.
func histogramCount(metrics string) string {
	for line := range strings.Lines(metrics) {
		if v, ok := strings.CutPrefix(line, "ensgate_ens_webhook_to_push_seconds_count "); ok {
			return strings.TrimSpace(v)
		}
	}
	return "0"
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

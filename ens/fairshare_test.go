package ens_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
)

// answer is a device API response as a test sees it.
type answer struct {
	status     int
	body       map[string]any
	retryAfter string
}

// callFrom sends a device API request as the client at addr (the test's
// ClientIP reads X-Test-Client).
func callFrom(e *env, token, addr, method, path string, body any) answer {
	e.t.Helper()
	return callFromWithSecret(e, token, addr, "", method, path, body)
}

// callFromWithSecret is callFrom with the X-Device-Secret header, if not
// empty.
func callFromWithSecret(e *env, token, addr, secret, method, path string, body any) answer {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, e.api.URL+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Test-Client", addr)
	if secret != "" {
		req.Header.Set(ens.DeviceSecretHeader, secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	if err := json.NewDecoder(resp.Body).Decode(&a.body); err != nil {
		e.t.Fatalf("%s %s: %d answer is not JSON: %v", method, path, resp.StatusCode, err)
	}
	return a
}

// withClientIP restarts ENS with change applied and the client address
// taken from X-Test-Client, as a trusted proxy would pass it.
func withClientIP(e *env, change func(*ens.Config)) {
	e.restart(func(c *ens.Config) {
		c.ClientIP = func(r *http.Request) string { return r.Header.Get("X-Test-Client") }
		if change != nil {
			change(c)
		}
	})
}

func publicKeyBody(deviceID string) map[string]string {
	return map[string]string{"deviceId": deviceID, "email": alice}
}

// checkLimited fails unless a is a 429 rate_limited naming scope, with a
// Retry-After.
func checkLimited(t *testing.T, a answer, scope string) {
	t.Helper()
	if s, err := strconv.Atoi(a.retryAfter); a.status != http.StatusTooManyRequests || a.body["error"] != "rate_limited" ||
		err != nil || s < 1 || !strings.Contains(a.body["message"].(string), scope) {
		t.Errorf("want a 429 rate_limited %s with Retry-After, got %d %v (Retry-After %q)", scope, a.status, a.body, a.retryAfter)
	}
}

// Finding 4: a device spamming publickey is limited on its own and keeps
// getting its one key; another device of the tenant, elsewhere, is served.
func TestPublicKeySpamIsLimitedPerDevice(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.waitFor("a full pool", func() bool { return freePairs(e) == 4 })
	withClientIP(e, nil)
	var keyID any
	limited := 0
	for range 60 {
		a := callFrom(e, e.token, "192.0.2.1", "POST", "/api/ens/publickey", publicKeyBody("spammer"))
		switch a.status {
		case http.StatusOK:
			if keyID == nil {
				keyID = a.body["keyId"]
			} else if a.body["keyId"] != keyID {
				t.Fatalf("asking again gave another key pair: %v, then %v", keyID, a.body["keyId"])
			}
		case http.StatusTooManyRequests:
			if limited == 0 {
				checkLimited(t, a, "for this device")
			}
			limited++
		default:
			t.Fatalf("spammer: %d %v", a.status, a.body)
		}
	}
	if limited == 0 {
		t.Fatal("60 publickey calls of one device at once were all served")
	}
	if a := callFrom(e, e.token, "198.51.100.7", "POST", "/api/ens/publickey", publicKeyBody("phone")); a.status != http.StatusOK {
		t.Fatalf("another device of the tenant during the spam: %d %v", a.status, a.body)
	}
}

// One address over its rate is refused alone; the tenant's ceiling stops
// a whole tenant's flood from many addresses.
func TestRateLimitsPerAddressAndTenantCeiling(t *testing.T) {
	e := newEnv(t, envOptions{})
	withClientIP(e, nil)
	limited := 0
	for i := range 60 {
		a := callFrom(e, e.token, "2001:db8:1:2::1", "GET", fmt.Sprintf("/api/ens/status?deviceId=random-%d", i), nil)
		if a.status == http.StatusTooManyRequests {
			if limited == 0 {
				checkLimited(t, a, "from this address")
			}
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("60 requests from one address at once were all served")
	}
	// The same /56 is the same client: an attacker holding one has 256
	// /64s.
	limited = 0
	for i := range 30 {
		a := callFrom(e, e.token, fmt.Sprintf("2001:db8:1:%x::1", 0x10+i), "GET", fmt.Sprintf("/api/ens/status?deviceId=other-%d", i), nil)
		if a.status == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("other /64s of the flooding /56 were all served")
	}
	if a := callFrom(e, e.token, "2001:db8:1:100::1", "GET", "/api/ens/status?deviceId=phone", nil); a.status == http.StatusTooManyRequests {
		t.Fatalf("a device at another address during the flood: %d %v", a.status, a.body)
	}

	withClientIP(e, func(c *ens.Config) { c.TenantRateLimit = 2 }) // bursts of 5
	limited = 0
	for i := range 10 {
		a := callFrom(e, e.token, fmt.Sprintf("203.0.113.%d", i), "GET", fmt.Sprintf("/api/ens/status?deviceId=d%d", i), nil)
		if a.status == http.StatusTooManyRequests {
			if limited == 0 {
				checkLimited(t, a, "for this tenant")
			}
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("10 requests at once over a tenant ceiling of 2/s were all served")
	}
}

// Finding 4 (fair shares): anyone with the tenant's token may name any
// device id, and the device's limit is checked before its secret. A flood
// for a known device id from one address leaves the device itself, at its
// own address, able to check its status and ask for a key.
func TestFloodForADeviceFromOneAddressDoesNotLockItOut(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	secret := e.devices().Secret("phone")
	// Bursts of 2 and a token every 2 s: the flood would hold the
	// device's budget, were it shared, for longer than this test runs.
	withClientIP(e, func(c *ens.Config) { c.DeviceRateLimit = 0.5 })
	// The device's own publickey below needs a free pair, not a refill.
	e.waitFor("a full pool", func() bool { return freePairs(e) == 4 })
	limited := 0
	for range 10 {
		if a := callFrom(e, e.token, "192.0.2.66", "POST", "/api/ens/publickey", publicKeyBody("phone")); a.status == http.StatusTooManyRequests {
			if limited == 0 {
				checkLimited(t, a, "for this device")
			}
			limited++
		}
		callFrom(e, e.token, "192.0.2.66", "GET", "/api/ens/status?deviceId=phone", nil)
	}
	if limited == 0 {
		t.Fatal("10 publickey calls for one device from one address at once were all served")
	}
	if a := callFromWithSecret(e, e.token, "198.51.100.7", secret, "GET", "/api/ens/status?deviceId=phone", nil); a.status != http.StatusOK || a.body["registered"] != true {
		t.Fatalf("the device's status from its own address during the flood: %d %v", a.status, a.body)
	}
	if a := callFrom(e, e.token, "198.51.100.7", "POST", "/api/ens/publickey", publicKeyBody("phone")); a.status != http.StatusOK {
		t.Fatalf("the device's publickey from its own address during the flood: %d %v", a.status, a.body)
	}
}

// Finding 4 (fair shares): an app asking for keys with random device ids
// from one address is stopped at the address's cap, below the tenant's, so
// the tenant's other devices still register.
func TestOneAddressAtItsKeyCapLeavesTheTenantToOthers(t *testing.T) {
	e := newEnv(t, envOptions{keyPool: 12})
	e.waitFor("a full pool", func() bool { return freePairs(e) == 12 })
	withClientIP(e, func(c *ens.Config) { c.KeyPairsPerTenant, c.KeyPairsPerAddress = 6, 3 })
	got := 0
	for i := range 10 {
		a := callFrom(e, e.token, "192.0.2.1", "POST", "/api/ens/publickey", publicKeyBody(fmt.Sprintf("random-%d", i)))
		switch {
		case a.status == http.StatusOK:
			got++
		case i == 3:
			checkLimited(t, a, "this address holds too many unused keys")
			if s, _ := strconv.Atoi(a.retryAfter); s < 60 || s > 601 {
				t.Errorf("Retry-After %q, want the time until the address's oldest key expires", a.retryAfter)
			}
		case a.status != http.StatusTooManyRequests:
			t.Fatalf("spammer's call %d: %d %v", i, a.status, a.body)
		}
	}
	if got != 3 {
		t.Fatalf("one address got %d key pairs under its cap of 3", got)
	}
	for i := range 3 {
		if a := callFrom(e, e.token, fmt.Sprintf("198.51.100.%d", i), "POST", "/api/ens/publickey", publicKeyBody(fmt.Sprintf("phone-%d", i))); a.status != http.StatusOK {
			t.Fatalf("a device of the tenant at another address: %d %v", a.status, a.body)
		}
	}
}

// Finding 4 (fair shares): asking again for a key returns it but does not
// extend its life, so asking every 9 minutes cannot hold pairs for ever.
func TestKeyPairAskedAgainStillExpiresOnTime(t *testing.T) {
	e := newEnv(t, envOptions{})
	pending := e.registerBody(e.basicDevice("phone", alice, alicePW, 0))
	age := func(d string) {
		t.Helper()
		if _, err := e.store.Pool().Exec(context.Background(),
			`UPDATE key_pairs SET assigned_at = assigned_at - $2::interval WHERE key_id = $1`, pending["keyId"], d); err != nil {
			t.Fatal(err)
		}
	}
	age("9 minutes")
	if status, body := e.call("POST", "/api/ens/publickey", publicKeyBody("phone")); status != http.StatusOK || body["keyId"] != pending["keyId"] {
		t.Fatalf("asked again after 9 minutes: %d %v, want %v", status, body, pending["keyId"])
	}
	age("2 minutes")
	status, body := e.call("POST", "/api/ens/registerdevicev2", pending)
	if status != http.StatusBadRequest || !strings.Contains(body["message"].(string), "expired") {
		t.Fatalf("registration 11 minutes after the key was first handed out: %d %v", status, body)
	}
}

// heldPairs counts the tenant's handed-out, unused key pairs.
func heldPairs(e *env, tenantID int64) int {
	e.t.Helper()
	var n int
	if err := e.store.Pool().QueryRow(context.Background(),
		`SELECT count(*) FROM key_pairs WHERE tenant_id = $1`, tenantID).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// freePairs counts the pool.
func freePairs(e *env) int {
	e.t.Helper()
	var n int
	if err := e.store.Pool().QueryRow(context.Background(),
		`SELECT count(*) FROM key_pairs WHERE assigned_at IS NULL`).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// Finding 4: a device that asks again gets its own unused key back, and
// registers with it.
func TestPublicKeyAskedAgainIsTheSameKey(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.waitFor("a full pool", func() bool { return freePairs(e) == 4 })
	first := callFrom(e, e.token, "192.0.2.1", "POST", "/api/ens/publickey", publicKeyBody("phone"))
	second := callFrom(e, e.token, "192.0.2.1", "POST", "/api/ens/publickey", publicKeyBody("phone"))
	if first.status != 200 || second.status != 200 || first.body["keyId"] != second.body["keyId"] {
		t.Fatalf("asked twice: %d %v, then %d %v", first.status, first.body["keyId"], second.status, second.body["keyId"])
	}
	if n := heldPairs(e, e.tenant.ID); n != 1 {
		t.Fatalf("the tenant holds %d key pairs after one device asked twice", n)
	}
	body := e.registerBody(e.basicDevice("phone", alice, alicePW, 0))
	if body["keyId"] != first.body["keyId"] {
		t.Errorf("the app's third request got %v, want %v", body["keyId"], first.body["keyId"])
	}
	if status, answer := e.call("POST", "/api/ens/registerdevicev2", body); status != 200 {
		t.Fatalf("register with the key asked for thrice: %d %v", status, answer)
	}
	if n := heldPairs(e, e.tenant.ID); n != 0 {
		t.Errorf("%d key pairs held after the registration used its pair", n)
	}
}

// Finding 4: a tenant at its cap gets 429 and takes nothing from the pool;
// another tenant's publickey goes on; the pairs kept stay bounded.
func TestTenantAtItsKeyCapDoesNotStarveAnother(t *testing.T) {
	e := newEnv(t, envOptions{keyPool: 12})
	e.waitFor("a full pool", func() bool { return freePairs(e) == 12 })
	withClientIP(e, func(c *ens.Config) { c.KeyPairsPerTenant = 4 })
	other, _, _ := e.store.CreateTenant(context.Background(), "fabrikam", 0)
	otherToken := e.newToken(other.ID)

	got := 0
	for i := range 30 {
		// One device id and address each: only the key cap can stop them.
		a := callFrom(e, e.token, fmt.Sprintf("192.0.2.%d", i), "POST", "/api/ens/publickey", publicKeyBody(fmt.Sprintf("random-%d", i)))
		switch {
		case a.status == http.StatusOK:
			got++
		case i == 4:
			checkLimited(t, a, "unused keys")
			if s, _ := strconv.Atoi(a.retryAfter); s < 60 || s > 601 {
				t.Errorf("Retry-After %q, want the time until the oldest key expires", a.retryAfter)
			}
		case a.status != http.StatusTooManyRequests:
			t.Fatalf("spammer's call %d: %d %v", i, a.status, a.body)
		}
	}
	if got != 4 {
		t.Fatalf("the spammer got %d key pairs under a cap of 4", got)
	}
	for i := range 4 { // up to the same cap
		if a := callFrom(e, otherToken, "198.51.100.7", "POST", "/api/ens/publickey", publicKeyBody(fmt.Sprintf("phone-%d", i))); a.status != 200 {
			t.Fatalf("the other tenant's publickey %d: %d %v", i, a.status, a.body)
		}
	}
	e.waitFor("the pool to refill", func() bool { return freePairs(e) == 12 })
	var total int
	e.store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM key_pairs`).Scan(&total)
	if total != 12+4+4 {
		t.Errorf("%d key pairs exist, want the pool (12) and the 8 handed out", total)
	}
}

// Finding 4: below its cap, a tenant taking many keys at once leaves half
// of the pool to tenants that hold few.
func TestHeavyTenantLeavesHalfThePoolToOthers(t *testing.T) {
	e := newEnv(t, envOptions{keyPool: 12})
	e.waitFor("a full pool", func() bool { return freePairs(e) == 12 })
	withClientIP(e, nil)
	e.svc.Stop() // no refill: the pool holds what it has
	other, _, _ := e.store.CreateTenant(context.Background(), "fabrikam", 0)
	otherToken := e.newToken(other.ID)

	got := 0
	for i := range 20 {
		a := callFrom(e, e.token, fmt.Sprintf("192.0.2.%d", i), "POST", "/api/ens/publickey", publicKeyBody(fmt.Sprintf("random-%d", i)))
		switch a.status {
		case http.StatusOK:
			got++
		case http.StatusServiceUnavailable:
		default:
			t.Fatalf("spammer's call %d: %d %v", i, a.status, a.body)
		}
	}
	if got != 6 {
		t.Errorf("the spammer got %d of the pool's 12 key pairs, want 6", got)
	}
	for i := range 6 {
		if a := callFrom(e, otherToken, "198.51.100.7", "POST", "/api/ens/publickey", publicKeyBody(fmt.Sprintf("phone-%d", i))); a.status != 200 {
			t.Fatalf("the other tenant's publickey %d: %d %v", i, a.status, a.body)
		}
	}
}

// Finding 4: a key pair left unused expires: a registration with it is
// refused with a clear 400, and the clean-up deletes it.
func TestExpiredKeyPairIsRefusedAndDeleted(t *testing.T) {
	e := newEnv(t, envOptions{})
	pending := e.registerBody(e.basicDevice("phone", alice, alicePW, 0))
	if _, err := e.store.Pool().Exec(context.Background(),
		`UPDATE key_pairs SET assigned_at = now() - interval '11 minutes' WHERE key_id = $1`, pending["keyId"]); err != nil {
		t.Fatal(err)
	}
	status, body := e.call("POST", "/api/ens/registerdevicev2", pending)
	if status != http.StatusBadRequest || !strings.Contains(body["message"].(string), "call publickey again") {
		t.Fatalf("registration with an expired key: %d %v", status, body)
	}
	e.svc.Stop()
	e.svc.Start() // the clean-up runs at once on start
	e.waitFor("the expired key pair's deletion", func() bool { return heldPairs(e, e.tenant.ID) == 0 })
	status, body = e.call("POST", "/api/ens/registerdevicev2", pending)
	if status != http.StatusBadRequest || !strings.Contains(body["message"].(string), "call publickey") {
		t.Fatalf("registration with a deleted key: %d %v", status, body)
	}
	e.register(e.basicDevice("phone", alice, alicePW, 0))
}

// Finding 9: a blocked or wiped device gets no key; unblocked, it does.
func TestBlockedDeviceGetsNoPublicKey(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.waitFor("a full pool", func() bool { return freePairs(e) == 4 })
	ctx := context.Background()
	for _, state := range []string{"blocked", "wiped"} {
		if err := e.store.SetCompliance(ctx, e.tenant.ID, "phone", state); err != nil {
			t.Fatal(err)
		}
		status, body := e.call("POST", "/api/ens/publickey", publicKeyBody("phone"))
		if status != http.StatusForbidden || body["error"] != "device_blocked" {
			t.Fatalf("publickey of a %s device: %d %v", state, status, body)
		}
	}
	if n := heldPairs(e, e.tenant.ID); n != 0 {
		t.Fatalf("a refused device holds %d key pairs", n)
	}
	if status, body := e.call("POST", "/api/ens/publickey", publicKeyBody("tablet")); status != 200 {
		t.Fatalf("another device: %d %v", status, body)
	}
	if err := e.store.SetCompliance(ctx, e.tenant.ID, "phone", "compliant"); err != nil {
		t.Fatal(err)
	}
	if status, body := e.call("POST", "/api/ens/publickey", publicKeyBody("phone")); status != 200 {
		t.Fatalf("publickey once unblocked: %d %v", status, body)
	}
}

// Finding 3: Exchange throttling bob does not stop alice: she registers and
// her mail is pushed, while bob's retry waits without reaching Exchange.
func TestOneUsersThrottlingDoesNotBlockOthers(t *testing.T) {
	e := newEnv(t, envOptions{})
	if _, err := e.sim.InjectFault(ewssim.Fault{Kind: ewssim.FaultServerBusy, User: bob, Operation: "Subscribe", Count: 1}); err != nil {
		t.Fatal(err)
	}
	bobs := e.basicDevice("bobs-phone", bob, bobPW, 0)
	status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(bobs))
	if status != http.StatusBadGateway || !strings.Contains(body["message"].(string), "ErrorServerBusy") {
		t.Fatalf("bob while Exchange throttles him: %d %v", status, body)
	}
	subscribes := e.sim.Counters().Requests["Subscribe"]
	status, body = e.call("POST", "/api/ens/registerdevicev2", e.registerBody(bobs))
	if status != http.StatusBadGateway || !strings.Contains(body["message"].(string), "ErrorServerBusy") {
		t.Fatalf("bob during his back-off: %d %v", status, body)
	}
	if n := e.sim.Counters().Requests["Subscribe"]; n != subscribes {
		t.Fatalf("bob's retry during his back-off reached Exchange (%d Subscribe calls, was %d)", n, subscribes)
	}

	e.register(e.basicDevice("alices-phone", alice, alicePW, 0))
	e.deliver(alice, mailFromCarol)
	e.waitFor("alice's push", func() bool { return len(e.pushes.pushes(tok("alices-phone"))) == 1 })
}

// Rate limits are kept per node (docs/api.md): behind a balancer, one
// client address gets each node's burst and rate, so N nodes allow N times
// the figures. This test pins that bound: two nodes on one database admit
// exactly twice one node's burst.
func TestRateLimitsAreKeptPerNode(t *testing.T) {
	e := newEnv(t, envOptions{})
	withClientIP(e, func(c *ens.Config) { c.RateLimit = 0.01 }) // a burst of 1, then one request per 100 s
	other, err := ens.New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	nodeB := httptest.NewServer(other.Handler())
	t.Cleanup(nodeB.Close)
	admitted := 0
	for _, base := range []string{e.api.URL, nodeB.URL} {
		for range 3 {
			req, _ := http.NewRequest("GET", base+"/api/ens/status?deviceId=phone", nil)
			req.Header.Set("Authorization", "Bearer "+e.token)
			req.Header.Set("X-Test-Client", "192.0.2.9")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusTooManyRequests {
				admitted++
			}
		}
	}
	if admitted != 2 {
		t.Fatalf("%d of 6 requests from one address admitted by two nodes, want each node's burst of 1", admitted)
	}
}

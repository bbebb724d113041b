package ens_test

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/store"
)

// send makes a request with the Authorization header given verbatim.
func send(t *testing.T, h http.Handler, method, path, authorization string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// Authentication schemes are case-insensitive (RFC 7235): apps and scripts
// that send "bearer" are not refused.
func TestBearerSchemeIsCaseInsensitive(t *testing.T) {
	admin := strings.Repeat("a", 40)
	e := newEnv(t, envOptions{adminToken: admin})
	h := e.svc.Handler()
	for _, scheme := range []string{"Bearer", "bearer", "BEARER", "bEaReR  "} {
		if w := send(t, h, "POST", "/api/ens/publickey", scheme+" "+e.token); w.Code == http.StatusUnauthorized {
			t.Errorf("device API with %q: %d %s", scheme, w.Code, w.Body)
		}
		if w := send(t, h, "GET", "/api/ens/admin/tenants/contoso/devices", scheme+" "+admin); w.Code != http.StatusOK {
			t.Errorf("admin API with %q: %d %s", scheme, w.Code, w.Body)
		}
	}
	for _, bad := range []string{"Basic " + e.token, "Bearer", "Bearer ", e.token, "Bearer" + e.token} {
		if w := send(t, h, "POST", "/api/ens/publickey", bad); w.Code != http.StatusUnauthorized {
			t.Errorf("device API with Authorization %q: %d, want 401", bad, w.Code)
		}
	}
	// The admin token too counts only with the Bearer scheme (5 failures,
	// below the admin login limit).
	for _, bad := range []string{"Basic " + admin, "x " + admin, admin, "Bearer" + admin, "Token " + admin} {
		if w := send(t, h, "GET", "/api/ens/admin/tenants/contoso/devices", bad); w.Code != http.StatusUnauthorized {
			t.Errorf("admin API with Authorization %q: %d, want 401", bad, w.Code)
		}
	}
}

// The admin API can be kept off a handler, or served alone by it, so that it
// gets a listener of its own.
func TestAdminAPICanBeServedApart(t *testing.T) {
	admin := strings.Repeat("a", 40)
	e := newEnv(t, envOptions{adminToken: admin})
	const devices = "/api/ens/admin/tenants/contoso/devices"
	for _, tc := range []struct {
		mode               ens.AdminAPI
		adminCode, devCode int
	}{
		{ens.AdminOn, http.StatusOK, http.StatusOK},
		{ens.AdminOff, http.StatusNotFound, http.StatusOK},
		{ens.AdminOnly, http.StatusOK, http.StatusNotFound},
	} {
		h := ens.ServeAdminAPI(e.svc.Handler(), tc.mode)
		if w := send(t, h, "GET", devices, "Bearer "+admin); w.Code != tc.adminCode {
			t.Errorf("admin_api %s: the admin API answered %d, want %d", tc.mode, w.Code, tc.adminCode)
		}
		if w := send(t, h, "GET", "/api/ens/./admin/tenants/contoso/devices", "Bearer "+admin); tc.mode == ens.AdminOff && w.Code == http.StatusOK {
			t.Errorf("admin_api off: an unclean path reached the admin API")
		}
		if w := send(t, h, "GET", "/api/ens/alive", ""); w.Code != tc.devCode {
			t.Errorf("admin_api %s: the device API answered %d, want %d", tc.mode, w.Code, tc.devCode)
		}
	}
	for _, v := range []string{"", "on", "off", "only"} {
		if _, err := ens.ParseAdminAPI(v); err != nil {
			t.Errorf("ParseAdminAPI(%q): %v", v, err)
		}
	}
	if _, err := ens.ParseAdminAPI("yes"); err == nil || !strings.Contains(err.Error(), "must be on, off or only") {
		t.Errorf("ParseAdminAPI(yes): %v", err)
	}
}

// After 10 wrong admin tokens from one address, that address gets 429 with
// Retry-After for the rest of the minute, even with the right token.
func TestFailedAdminLoginsAreLimited(t *testing.T) {
	admin := strings.Repeat("a", 40)
	e := newEnv(t, envOptions{adminToken: admin})
	h := e.svc.Handler()
	const devices = "/api/ens/admin/tenants/contoso/devices"
	for i := range 10 {
		if w := send(t, h, "GET", devices, "Bearer wrong-token"); w.Code != http.StatusUnauthorized {
			t.Fatalf("wrong token %d: %d", i+1, w.Code)
		}
	}
	w := send(t, h, "GET", devices, "Bearer "+admin)
	if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" {
		t.Fatalf("after 10 failures: %d, Retry-After %q", w.Code, w.Header().Get("Retry-After"))
	}
	if !strings.Contains(w.Body.String(), "rate_limited") {
		t.Errorf("429 body %s", w.Body)
	}
	// The device API is not the admin API: its callers are not affected.
	if w := send(t, h, "POST", "/api/ens/publickey", "Bearer "+e.token); w.Code == http.StatusTooManyRequests {
		t.Errorf("the device API is limited by admin login failures")
	}
}

// The admin API's subscription health counts states and reasons and times
// the last callbacks; it names no mailbox, nor its hash.
func TestAdminSubscriptionHealth(t *testing.T) {
	admin := strings.Repeat("a", 40)
	// Exchange minutes of a real minute: the simulator's status pings do not
	// refresh the times set below while the test runs.
	e := newEnv(t, envOptions{adminToken: admin, simConfig: ewssim.Config{ClockScale: time.Minute}})
	const health = "/api/ens/admin/tenants/contoso/subscriptions"
	status, body := e.callWith(admin, "GET", health, nil)
	if status != http.StatusOK || body["active"] != 0.0 || body["lastHeard"] != nil || len(body["byReason"].([]any)) != 0 {
		t.Fatalf("a tenant without subscriptions: %d %v", status, body)
	}

	ctx := context.Background()
	e.register(e.basicDevice("phone", alice, alicePW, 1))
	live := e.register(e.basicDevice("tablet", alice, alicePW, 1)) // supersedes phone's
	refused := e.register(e.basicDevice("bobphone", bob, bobPW, 1))
	sub, err := e.store.SubscriptionByPublicID(ctx, refused)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.StopSubscription(ctx, sub.ID, store.SubscriptionFailed, store.ReasonUnauthorized, nil); err != nil {
		t.Fatal(err)
	}
	// Past the 1-minute status frequency, not yet twice it (silent).
	if _, err := e.store.Pool().Exec(ctx, `UPDATE subscriptions SET last_seen_at = now() - interval '90 seconds' WHERE public_id = $1`, live); err != nil {
		t.Fatal(err)
	}

	w := send(t, e.svc.Handler(), "GET", health, "Bearer "+admin)
	var got struct {
		Tenant                         string
		AsOf                           time.Time
		Active, Overdue, Failed, Ended int
		LastHeard                      *struct{ Oldest, Newest time.Time }
		ByReason                       []struct {
			State, Reason string
			Count         int
		}
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); w.Code != http.StatusOK || err != nil {
		t.Fatalf("subscription health: %d %s, %v", w.Code, w.Body, err)
	}
	t.Logf("GET %s: %s", health, w.Body)
	if got.Tenant != "contoso" || got.Active != 1 || got.Overdue != 1 || got.Failed != 1 || got.Ended != 1 {
		t.Errorf("counts %+v, want 1 active (1 overdue), 1 failed, 1 ended", got)
	}
	wantGroups := "[{active  1} {failed unauthorized 1} {ended superseded 1}]"
	if groups := fmt.Sprint(got.ByReason); groups != wantGroups {
		t.Errorf("byReason %s, want %s", groups, wantGroups)
	}
	if got.LastHeard == nil || got.LastHeard.Oldest != got.LastHeard.Newest ||
		got.AsOf.Sub(got.LastHeard.Oldest) < 90*time.Second || got.AsOf.Sub(got.LastHeard.Oldest) > 2*time.Minute {
		t.Errorf("lastHeard %+v as of %v, want the one live subscription's, 90 seconds before", got.LastHeard, got.AsOf)
	}
	rows, _ := e.store.Pool().Query(ctx, `SELECT mailbox_hash FROM subscriptions`)
	hashes, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil || len(hashes) != 3 {
		t.Fatalf("mailbox hashes: %d, %v", len(hashes), err)
	}
	for _, h := range hashes {
		for _, enc := range []string{hex.EncodeToString(h), base64.StdEncoding.EncodeToString(h), base64.RawURLEncoding.EncodeToString(h)} {
			if strings.Contains(w.Body.String(), enc) {
				t.Errorf("the answer holds a mailbox hash (%s)", enc)
			}
		}
	}
	if strings.Contains(w.Body.String(), "@") {
		t.Errorf("the answer names a mailbox: %s", w.Body)
	}

	if w := send(t, e.svc.Handler(), "GET", "/api/ens/admin/tenants/nobody/subscriptions", "Bearer "+admin); w.Code != http.StatusNotFound {
		t.Errorf("an unknown tenant: %d, want 404", w.Code)
	}
	if w := send(t, e.svc.Handler(), "GET", health, "Bearer "+e.token); w.Code != http.StatusUnauthorized {
		t.Errorf("a tenant token: %d, want 401", w.Code)
	}
}

// The admin API lists, allows and removes a tenant's endpoints, EWS URLs
// and Graph roots alike, with the CLI's rules and defaults; a registration
// for a Graph root it allowed works, and its removal ends the subscription.
func TestAdminAPIManagesEndpoints(t *testing.T) {
	admin := strings.Repeat("a", 40)
	e := newEnv(t, envOptions{adminToken: admin})
	h := e.svc.Handler()
	do := func(method, path, body string) (int, map[string]any) {
		t.Helper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+admin)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		var out map[string]any
		json.Unmarshal(w.Body.Bytes(), &out)
		return w.Code, out
	}
	const path = "/api/ens/admin/tenants/contoso/endpoints"
	if status, body := do("POST", path, `{"graph": true}`); status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["message"]), "client id") {
		t.Errorf("Graph without a client id: %d %v", status, body)
	}
	status, body := do("POST", path, `{"graph": true, "clientId": "app-id"}`)
	if status != http.StatusCreated || body["kind"] != "graph" || body["url"] != "https://graph.microsoft.com/" ||
		body["authority"] != ens.DefaultAuthority || body["scope"] != "https://graph.microsoft.com/.default offline_access" {
		t.Fatalf("adding Graph: %d %v", status, body)
	}
	if status, _ := do("POST", path, `{"graph": true, "clientId": "app-id"}`); status != http.StatusConflict {
		t.Errorf("adding it again: %d, want 409", status)
	}
	if status, body := do("POST", path, `{"url": "https://mail.contoso.test/EWS/Exchange.asmx", "fingerprint": "sha256:zz"}`); status != http.StatusBadRequest {
		t.Errorf("a bad pin: %d %v", status, body)
	}
	status, body = do("GET", path, "")
	list, _ := body["endpoints"].([]any)
	if status != http.StatusOK || len(list) != 2 {
		t.Fatalf("list: %d %v; want the simulator's EWS URL and Graph", status, body)
	}
	if status, body := do("DELETE", path+"?url=https://graph.microsoft.com", ""); status != http.StatusOK || body["subscriptionsEnded"] != float64(0) {
		t.Errorf("removing Graph: %d %v", status, body)
	}
	if status, _ := do("DELETE", path+"?url=https://graph.microsoft.com", ""); status != http.StatusNotFound {
		t.Errorf("removing it again: %d, want 404", status)
	}
	if w := send(t, h, "GET", path, "Bearer "+e.token); w.Code != http.StatusUnauthorized {
		t.Errorf("the tenant's token on the admin API: %d, want 401", w.Code)
	}
}

package ens_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/ens"
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

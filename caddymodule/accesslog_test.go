package caddymodule

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestRedactRequestHidesTheCallbackKeyAndTheDeviceSecret(t *testing.T) {
	for uri, want := range map[string]string{
		"/api/ens/notify?id=abc&f=SECRET":    "/api/ens/notify?id=abc&f=REDACTED",
		"/api/ens/notify?f=SECRET&f=SECRET2": "/api/ens/notify?f=REDACTED&f=REDACTED",
		"/api/ens/notify?%66=SECRET&id=abc":  "/api/ens/notify?%66=REDACTED&id=abc",
		"/api/ens/notify?id=abc&%zz=SECRET":  "/api/ens/notify?id=abc&%zz=REDACTED",
		"/api/ens/notify?id=abc&ff=keep&f":   "/api/ens/notify?id=abc&ff=keep&f=REDACTED",
		"/api/ens/status?deviceId=phone":     "/api/ens/status?deviceId=phone",
		"/api/ens/alive":                     "/api/ens/alive",
	} {
		r := httptest.NewRequest("GET", uri, nil)
		r.Header.Set("X-Device-Secret", "SECRET")
		c := redactRequest(r)
		if c.RequestURI != want || strings.Contains(c.Header.Get("X-Device-Secret"), "SECRET") {
			t.Errorf("%s: logged as %s with X-Device-Secret %q; want %s", uri, c.RequestURI, c.Header.Get("X-Device-Secret"), want)
		}
		if r.RequestURI != uri || r.Header.Get("X-Device-Secret") != "SECRET" {
			t.Errorf("%s: the request itself was changed", uri)
		}
	}
}

func TestENSDirectiveAdminAPI(t *testing.T) {
	var h ENSHandler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("ens {\n admin_api only\n}")); err != nil || h.AdminAPI != "only" {
		t.Errorf("admin_api only: %q, %v", h.AdminAPI, err)
	}
	for input, want := range map[string]string{
		"ens {\n admin_api maybe\n}":  `admin_api "maybe": must be on, off or only`,
		"ens {\n admin_api\n}":        "admin_api needs a value",
		"ens {\n admin_api on off\n}": "admin_api takes one value",
		"ens {\n admin off\n}":        `unrecognized ens subdirective "admin" (known: admin_api)`,
	} {
		var h ENSHandler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", input, err, want)
		}
	}
}

package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
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

// The EWS proxy's entries hide the mailbox address, ENS's attestation and
// the password, which the proxy still forwards; they carry the proxy's
// fields and the status Caddy answers a proxy error with.
func TestEWSProxyAccessLogEntry(t *testing.T) {
	var out bytes.Buffer
	access := accessLog{logger: zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&out), zapcore.DebugLevel))}
	r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader("<soap/>"))
	r.Header.Set("X-AnchorMailbox", "alice@contoso.test")
	r.Header.Set("X-Ensgate-Devices", "v2;1;1;phone;MAC")
	r.SetBasicAuth("alice@contoso.test", "password")
	vars := map[string]any{}
	ctx := context.WithValue(r.Context(), caddyhttp.ServerCtxKey, &caddyhttp.Server{Logs: &caddyhttp.ServerLogConfig{}})
	r = r.WithContext(context.WithValue(ctx, caddyhttp.VarsCtxKey, vars))

	var forwarded http.Header
	err := access.serve(httptest.NewRecorder(), r, func(w http.ResponseWriter, r *http.Request) error {
		forwarded = r.Header.Clone()
		annotateAccessLog(r, "GetItem", "forwarded")
		return caddyhttp.Error(http.StatusBadGateway, errors.New("connection refused"))
	})
	if err == nil || forwarded.Get("X-AnchorMailbox") != "alice@contoso.test" || forwarded.Get("X-Ensgate-Devices") == redacted {
		t.Fatalf("the request went on with %v, error %v", forwarded, err)
	}
	if vars[caddyhttp.LogSkipVar] != true {
		t.Error("Caddy's own entry, which holds the address, is not skipped")
	}
	var entry struct {
		Level        string
		Status       int
		EWSOperation string `json:"ews_operation"`
		EWSDecision  string `json:"ews_decision"`
		Request      struct{ Headers map[string][]string }
	}
	if err := json.Unmarshal(out.Bytes(), &entry); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	for _, h := range []string{"X-Anchormailbox", "X-Ensgate-Devices", "Authorization"} {
		if v := entry.Request.Headers[h]; len(v) != 1 || v[0] != redacted {
			t.Errorf("%s logged as %q", h, v)
		}
	}
	if strings.Contains(out.String(), "alice") || entry.Level != "error" || entry.Status != http.StatusBadGateway ||
		entry.EWSOperation != "GetItem" || entry.EWSDecision != "forwarded" {
		t.Errorf("entry: %s", out.String())
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

package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
)

// withAccessLogs writes Caddyfile.example with an access log of its own in
// each site, as an admin adds one (docs/operations.md), and Caddy at debug
// level, so that every line anything would log is written. The default
// log gets the filter docs/proxy.md gives for the lines of Caddy's that
// hold a request's headers as they are (the error log's, reverse_proxy's
// debug lines); the access logs, which do not pass through it, must
// redact on their own.
func withAccessLogs(t *testing.T) string {
	t.Helper()
	example, err := os.ReadFile(filepath.Join(repoRoot(t), "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	// The example's own default log (with its filter), at debug level.
	config := regexp.MustCompile(`(?m)^\{$`).ReplaceAllString(string(example), "{\n\tdebug")
	sites := regexp.MustCompile(`(?m)^(\S.*) \{$`)
	if n := len(sites.FindAllString(config, -1)); n != 2 {
		t.Fatalf("Caddyfile.example has %d sites, want the public one and the admin API's", n)
	}
	config = sites.ReplaceAllString(config, "$1 {\n\tlog {\n\t\toutput stderr\n\t}")
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// With access logging on, a registration, Exchange's notifications (and
// ENS's EWS calls through the proxy they cause), a status query and admin
// API calls leave no secret in any log line: not the callback key f (with
// a database dump it opens the credentials), not the API token, the admin
// token, the device secret or the password, and no mail address (ENS's
// EWS calls carry the mailbox in X-AnchorMailbox, which Exchange needs).
func TestNoSecretInAnyLogLine(t *testing.T) {
	const (
		email    = "alice@contoso.test"
		sender   = "carol@fabrikam.test"
		password = "correct-horse-battery-staple-42"
		apns     = "5a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
	)
	dbURL := pgtest.NewDatabase(t)
	db := []string{"DATABASE_URL=" + dbURL}
	sim := ewssim.Start(t, ewssim.Config{Users: []ewssim.User{{Address: email, Password: password}}, ClockScale: time.Second})
	sinkEnv, sink := startPushSink(t)
	env, base := gatewayEnv(t, dbURL, sim.URL)
	env = append(env, sinkEnv...)
	adminToken := envValue(env, "ENS_ADMIN_TOKEN")
	token := tenantBehindOwnProxy(t, db, base)
	_, logs := runGateway(t, env, withAccessLogs(t))
	waitFor(t, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()

	devices := &deviceclient.Client{BaseURL: base + "/api/ens", Token: token}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := devices.Register(ctx, deviceclient.Device{ID: "phone", Email: email, Platform: "ios", PushToken: apns,
		EWSURL: base + "/EWS/Exchange.asmx", AuthType: "basic", Credentials: map[string]string{"username": email, "password": password}}); err != nil {
		t.Fatalf("registration: %v", err)
	}
	sim.Deliver(email, ewssim.Mail{From: sender, Subject: "one", Body: "b"})
	deadline := time.Now().Add(20 * time.Second)
	for pushesTo(sink, apns) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no push; sink:\n%s", sink.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st, err := devices.Status(ctx, "phone"); err != nil || st.Subscription != "active" {
		t.Fatalf("status: %+v, %v", st, err)
	}
	adminBase := "http://127.0.0.1:" + envValue(env, "ENS_ADMIN_API_PORT")
	for _, auth := range []string{"Bearer " + adminToken, "Bearer wrong-" + adminToken} {
		req, _ := http.NewRequest("GET", adminBase+"/api/ens/admin/tenants/contoso/devices", nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}

	subs := sim.Subscriptions()
	if len(subs) != 1 {
		t.Fatalf("%d subscriptions at Exchange, want 1", len(subs))
	}
	callback, err := url.Parse(subs[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"the callback key f":   callback.Query().Get("f"),
		"the API token":        token,
		"the admin token":      adminToken,
		"the device secret":    devices.Secret("phone"),
		"the password":         password,
		"the mailbox address":  email,
		"the sender's address": sender,
	}
	for name, v := range secrets {
		if len(v) < 16 {
			t.Fatalf("%s is %q: too short to look for", name, v)
		}
	}
	// A device's own request while Exchange is down: Caddy's error log
	// holds it as it arrived, with the address (the filter's case).
	sim.Close()
	req, _ := http.NewRequest("POST", base+"/EWS/Exchange.asmx", strings.NewReader("<soap/>"))
	req.Header.Set("X-Device-Id", "phone")
	req.Header.Set("X-AnchorMailbox", email)
	req.SetBasicAuth(email, password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("with Exchange down: %s, want 502", resp.Status)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), `"logger":"http.log.error`) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}

	// The entries that would hold secrets are written, redacted.
	var notified, ensCalls, deviceCall, errorLogged bool
	for _, line := range strings.Split(logs.String(), "\n") {
		var entry struct {
			Logger   string
			Status   int
			Decision string `json:"ews_decision"`
			Request  struct {
				URI     string
				Headers map[string]json.RawMessage
			}
		}
		if json.Unmarshal([]byte(line), &entry) == nil {
			anchor := string(entry.Request.Headers["X-Anchormailbox"])
			access := strings.HasPrefix(entry.Logger, "http.log.access")
			switch {
			case access && strings.HasPrefix(entry.Request.URI, "/api/ens/notify?") && strings.Contains(entry.Request.URI, "f=REDACTED"):
				notified = true
			case access && entry.Request.URI == "/EWS/Exchange.asmx" && anchor == `["REDACTED"]` && entry.Decision == "forwarded":
				if entry.Status == http.StatusBadGateway {
					deviceCall = true
				} else {
					ensCalls = true
				}
			case strings.HasPrefix(entry.Logger, "http.log.error") && entry.Request.URI == "/EWS/Exchange.asmx" && anchor == `"REDACTED"`:
				errorLogged = true
			}
		}
		for name, v := range secrets {
			if strings.Contains(line, v) {
				t.Errorf("a log line holds %s: %s", name, line)
			}
		}
	}
	for what, ok := range map[string]bool{
		"Exchange's notification (with f redacted)":                     notified,
		"ENS's EWS calls (with X-AnchorMailbox redacted)":               ensCalls,
		"the device's request with Exchange down (access log, 502)":     deviceCall,
		"the device's request with Exchange down (error log, filtered)": errorLogged,
	} {
		if !ok {
			t.Errorf("no log entry for %s", what)
		}
	}
}

// envValue is the value of key in env.
func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

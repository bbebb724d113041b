package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/gateway"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

var randomKey = gateway.RandomKey

// gatewayEnv is a complete environment for Caddyfile.example.
var gatewayEnv = gateway.Env

// startGateway runs `ensgate run --config Caddyfile.example` until the test ends.
func startGateway(t *testing.T, env []string) *exec.Cmd {
	t.Helper()
	cmd, _ := runGateway(t, env, "Caddyfile.example")
	return cmd
}

// runGateway runs `ensgate run --config config` until the test ends and
// returns its output.
func runGateway(t *testing.T, env []string, config string) (*exec.Cmd, *syncbuf.Buffer) {
	t.Helper()
	return gateway.Run(t, ensgate, repoRoot(t), env, config)
}

func TestRunServesAliveAndProxiesEWS(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	for _, args := range [][]string{{"ens", "migrate"}, {"ens", "tenant", "create", "--name", "contoso"},
		{"ens", "device", "unblock", "--tenant", "contoso", "--device", "phone"}} {
		if r := cli(t, []string{"DATABASE_URL=" + dbURL}, args...); r.code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	var mu sync.Mutex
	var seen []string
	exchange := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.Path+" "+string(body))
		mu.Unlock()
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		io.WriteString(w, "<ok/>")
	}))
	defer exchange.Close()

	env, base := gatewayEnv(t, dbURL, exchange.URL)
	startGateway(t, env)

	resp := waitFor(t, base+"/api/ens/alive", http.StatusOK, 30*time.Second)
	var alive map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&alive); err != nil || alive["status"] != "ok" || alive["version"] == "" {
		t.Fatalf("alive = %v, %v", alive, err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("alive Content-Type = %q", ct)
	}

	resp, err := http.Get(base + "/api/ens/nothing-here")
	if err != nil {
		t.Fatal(err)
	}
	var apiErr map[string]string
	json.NewDecoder(resp.Body).Decode(&apiErr)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || apiErr["error"] != "not_found" {
		t.Errorf("unknown device API path: %d %v", resp.StatusCode, apiErr)
	}

	for _, path := range []string{"/EWS/Exchange.asmx", "/ews/exchange.asmx"} {
		req, _ := http.NewRequest("POST", base+path, strings.NewReader("<soap>"+path+"</soap>"))
		req.Header.Set("Content-Type", "text/xml")
		req.Header.Set("X-Device-Id", "phone")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "<ok/>" {
			t.Errorf("POST %s through the proxy: %d %q", path, resp.StatusCode, body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"POST /EWS/Exchange.asmx <soap>/EWS/Exchange.asmx</soap>", "POST /ews/exchange.asmx <soap>/ews/exchange.asmx</soap>"}
	if strings.Join(seen, "|") != strings.Join(want, "|") {
		t.Errorf("Exchange saw %q, want %q", seen, want)
	}
}

func TestRunRefusesAnUnmigratedDatabase(t *testing.T) {
	env, _ := gatewayEnv(t, pgtest.NewDatabase(t), "http://127.0.0.1:1")
	r := cli(t, env, "run", "--config", "Caddyfile.example")
	if r.code == 0 || !strings.Contains(r.stderr, "run `ensgate ens migrate`") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

func TestAdaptAndValidateCaddyfileExample(t *testing.T) {
	r := cli(t, nil, "adapt", "--config", "Caddyfile.example")
	if r.code != 0 {
		t.Fatalf("adapt: %+v", r)
	}
	var cfg struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &cfg); err != nil {
		t.Fatalf("adapt output is not JSON: %v", err)
	}
	if !strings.Contains(string(cfg.Apps["ens"]), `"database_url":"{env.DATABASE_URL}"`) {
		t.Errorf("adapted ens app = %s; secrets must stay placeholders", cfg.Apps["ens"])
	}

	env, _ := gatewayEnv(t, "postgres://ens@127.0.0.1:1/ens", "http://127.0.0.1:1")
	if r := cli(t, env, "validate", "--config", "Caddyfile.example"); r.code != 0 || !strings.Contains(r.stdout+r.stderr, "Valid configuration") {
		t.Fatalf("validate: %+v", r)
	}
	bad := append(env, "ENS_MASTER_KEY=c2hvcnQ=", "ENS_PUBLIC_URL=ftp://example.test")
	r = cli(t, bad, "validate", "--config", "Caddyfile.example")
	if r.code == 0 || !strings.Contains(r.stderr, "master_key must be base64 of exactly 32 bytes (got 5 bytes)") ||
		!strings.Contains(r.stderr, "public_url") {
		t.Fatalf("validate with a bad master key: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if strings.Contains(r.stderr, "c2hvcnQ=") {
		t.Errorf("the error reveals the master key:\n%s", r.stderr)
	}
}

func TestBrokenCaddyfilesNameTheProblem(t *testing.T) {
	for name, tc := range map[string]struct{ caddyfile, want string }{
		"unknown ens option":         {"{\n\tens {\n\t\tdatabse_url x\n\t}\n}\n:8080\n", `unrecognized ens option "databse_url"`},
		"unknown apns option":        {"{\n\tens {\n\t\tapns {\n\t\t\tkeyfile x\n\t\t}\n\t}\n}\n:8080\n", `unrecognized apns option "keyfile"`},
		"ews_proxy without upstream": {":8080 {\n\tews_proxy\n}\n", "ews_proxy needs the Exchange upstream"},
		"ens with an argument":       {":8080 {\n\tens extra\n}\n", "wrong argument count"},
	} {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "Caddyfile")
			os.WriteFile(file, []byte(tc.caddyfile), 0o600)
			r := cli(t, nil, "adapt", "--config", file)
			msg := logMessages(r.stderr)
			if r.code == 0 || !strings.Contains(msg, tc.want) || !strings.Contains(msg, file+":") {
				t.Errorf("exit %d, log %q; want %q with the file and line", r.code, msg, tc.want)
			}
		})
	}
}

// logMessages returns the msg fields of Caddy's JSON log lines, unescaped.
func logMessages(logs string) string {
	var msgs []string
	for _, line := range strings.Split(logs, "\n") {
		var entry struct{ Msg string }
		if json.Unmarshal([]byte(line), &entry) == nil {
			msgs = append(msgs, entry.Msg)
		}
	}
	return strings.Join(msgs, "\n")
}

// A config reload (caddy reload via the admin endpoint) keeps serving and
// keeps the database pool: the new config is provisioned before the old
// one lets go of it.
func TestReloadKeepsServing(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	for _, args := range [][]string{{"ens", "migrate"}, {"ens", "tenant", "create", "--name", "contoso"}} {
		if r := cli(t, []string{"DATABASE_URL=" + dbURL}, args...); r.code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	env, base := gatewayEnv(t, dbURL, "http://127.0.0.1:1")
	startGateway(t, env)
	waitFor(t, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()
	token := lastLine(cli(t, []string{"DATABASE_URL=" + dbURL}, "ens", "tenant", "create", "--name", "fabrikam").stdout)
	status := func() int {
		req, _ := http.NewRequest("GET", base+"/api/ens/status?deviceId=x", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := status(); s != 404 {
		t.Fatalf("status before the reload: %d, want 404 unknown_device (the database answered)", s)
	}
	for i := range 3 {
		if r := cli(t, env, "reload", "--config", "Caddyfile.example", "--address", adminAddr(env), "--force"); r.code != 0 {
			t.Fatalf("reload %d: %+v", i, r)
		}
		if s := status(); s != 404 {
			t.Fatalf("status after reload %d: %d", i, s)
		}
	}
}

var adminSocket = gateway.AdminSocket

// adminAddr is the --address of the gateway's admin endpoint.
func adminAddr(env []string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "ENS_CADDY_ADMIN_SOCKET="); ok {
			return "unix/" + v
		}
	}
	return ""
}

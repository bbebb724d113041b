package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/sim/graphsim"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

// start runs the command with args and returns its base URL.
func start(t *testing.T, args ...string) (string, *syncbuf.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncbuf.Buffer{}
	urls := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"-listen", "127.0.0.1:0"}, args...), logs, func(u string) { urls <- u })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case u := <-urls:
		return u, logs
	case err := <-done:
		t.Fatalf("run: %v\n%s", err, logs)
	case <-time.After(5 * time.Second):
		t.Fatal("server did not start")
	}
	return "", nil
}

// do sends a request and decodes a JSON answer into a map.
func do(t *testing.T, method, u, ctlToken string, body io.Reader, header map[string]string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, u, body)
	if ctlToken != "" {
		req.Header.Set("X-Sim-Token", ctlToken)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestRunServesTokensGraphAndControl(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	os.WriteFile(users, []byte(`[{"address":"alice@fabrikam.test","displayName":"Alice"}]`), 0o600)
	envFile := filepath.Join(dir, "graphsim.env")
	const tenant = "11111111-2222-4333-8444-555555555555"

	base, logs := start(t, "-users", users, "-user", "bob@fabrikam.test", "-tenant-id", tenant,
		"-control-token", "ctl", "-allow-http", "-clock-scale", "10ms", "-env", envFile)

	env, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"GRAPHSIM_URL='" + base + "'",
		"GRAPHSIM_GRAPH_URL='" + base + "/v1.0'",
		"GRAPHSIM_AUTHORITY='" + base + "/" + tenant + "'",
		"GRAPHSIM_TOKEN_URL='" + base + "/" + tenant + "/oauth2/v2.0/token'",
		"GRAPHSIM_TENANT_ID='" + tenant + "'",
		"GRAPHSIM_CLIENT_ID='" + graphsim.DefaultClientID + "'",
	} {
		if !strings.Contains(string(env), line+"\n") {
			t.Errorf("env file lacks %s:\n%s", line, env)
		}
	}

	if status, _ := do(t, "GET", base+"/_sim/health", "", nil, nil); status != http.StatusForbidden {
		t.Errorf("control without token: %d", status)
	}
	if status, _ := do(t, "GET", base+"/_sim/health", "ctl", nil, nil); status != http.StatusOK {
		t.Errorf("control with token: %d", status)
	}

	// A refresh token from the control API, redeemed at the authority,
	// opens /me of each user (the -users file's and the -user flag's).
	for _, user := range []string{"alice@fabrikam.test", "bob@fabrikam.test"} {
		status, out := do(t, "POST", base+"/_sim/users/"+user+"/refresh-tokens", "ctl",
			strings.NewReader(`{"clientId":"`+graphsim.DefaultClientID+`"}`), nil)
		rt, _ := out["refreshToken"].(string)
		if status != http.StatusCreated || rt == "" {
			t.Fatalf("%s: minting a refresh token: %d %v", user, status, out)
		}
		form := url.Values{"grant_type": {"refresh_token"}, "client_id": {graphsim.DefaultClientID}, "refresh_token": {rt}}
		status, out = do(t, "POST", base+"/"+tenant+"/oauth2/v2.0/token", "", strings.NewReader(form.Encode()),
			map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
		at, _ := out["access_token"].(string)
		if status != http.StatusOK || at == "" {
			t.Fatalf("%s: redeeming: %d %v", user, status, out)
		}
		status, out = do(t, "GET", base+"/v1.0/me", "", nil, map[string]string{"Authorization": "Bearer " + at})
		if status != http.StatusOK || out["mail"] != user {
			t.Errorf("%s: /me: %d %v", user, status, out)
		}
	}

	// Mail delivered through the control API is in the Inbox.
	status, _ := do(t, "POST", base+"/_sim/users/alice@fabrikam.test/mail", "ctl",
		strings.NewReader(`{"from":"carol@contoso.test","subject":"Hi","body":"Hello"}`), nil)
	if status != http.StatusCreated {
		t.Errorf("delivering: %d", status)
	}

	out := logs.String()
	if !strings.Contains(out, "graphsim listening") || !strings.Contains(out, "allowHTTP=true") ||
		!strings.Contains(out, "authority="+base+"/"+tenant) {
		t.Errorf("startup log: %s", out)
	}
	for _, secret := range []string{"alice@", "bob@", "ctl", "Hello"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains %q: %s", secret, out)
		}
	}
}

func TestRunOwnClientAndDefaultTenant(t *testing.T) {
	base, _ := start(t, "-user", "alice@fabrikam.test", "-client-id", "my-mail-app")
	status, out := do(t, "POST", base+"/_sim/users/alice@fabrikam.test/refresh-tokens", "",
		strings.NewReader(`{"clientId":"my-mail-app"}`), nil)
	if status != http.StatusCreated {
		t.Errorf("the -client-id app: %d %v", status, out)
	}
	// The default client is registered only when no -client-id is given.
	status, out = do(t, "POST", base+"/_sim/users/alice@fabrikam.test/refresh-tokens", "", strings.NewReader(`{}`), nil)
	if status != http.StatusBadRequest {
		t.Errorf("the default client with -client-id: %d %v", status, out)
	}
}

func TestEnvFileRemovedOnStop(t *testing.T) {
	envFile := filepath.Join(t.TempDir(), "env")
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-listen", "127.0.0.1:0", "-env", envFile}, io.Discard, func(u string) { ready <- u })
	}()
	<-ready
	if _, err := os.Stat(envFile); err != nil {
		t.Fatalf("env file while running: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(envFile); !os.IsNotExist(err) {
		t.Errorf("env file after stop: %v", err)
	}
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-tls-cert", "x.pem"},
		{"-clock-scale", "0s"},
		{"-tenant-id", "a/b"},
		{"-users", "/nonexistent/users.json"},
		{"-log-level", "loud"},
		{"stray"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-user", "not-an-address"}, io.Discard, nil); err == nil {
		t.Error("invalid user address accepted")
	}
}

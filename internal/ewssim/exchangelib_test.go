package ewssim_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/ewssim"
)

// python is Debian's interpreter: python3-exchangelib installs into its
// dist-packages, which a pyenv or virtualenv python on PATH does not see.
const python = "/usr/bin/python3"

// exchangelibMissing is why exchangelib cannot be used, or "" if it can;
// checked once, as starting Python takes a while.
var exchangelibMissing = sync.OnceValue(func() string {
	out, err := exec.Command(python, "-I", "-c", "import exchangelib").CombinedOutput()
	if err == nil {
		return ""
	}
	return "exchangelib is not importable by " + python + " (apt-get install -y python3-exchangelib): " +
		strings.TrimSpace(err.Error()+" "+string(out))
})

// requireExchangelib skips the test when exchangelib is not installed,
// unless CI or ENSGATE_REQUIRE_EXCHANGELIB is set: there a missing client
// must fail the run rather than silently drop the interoperability check.
func requireExchangelib(t *testing.T) {
	t.Helper()
	msg := exchangelibMissing()
	if msg == "" {
		return
	}
	for _, v := range []string{"CI", "ENSGATE_REQUIRE_EXCHANGELIB"} {
		if os.Getenv(v) != "" {
			t.Fatalf("%s is set, so the exchangelib client is required: %s", v, msg)
		}
	}
	t.Skip(msg)
}

// moduleRoot walks up from the test's directory to go.mod.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// clientCommand prepares the exchangelib client script with args; the
// password goes in its environment, not on the command line.
func clientCommand(t *testing.T, password string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	script := filepath.Join(moduleRoot(t), "internal", "e2e", "testdata", "exchangelib_client.py")
	// -I: ignore PYTHONPATH and user site-packages, which a pyenv setup may point elsewhere.
	cmd := exec.CommandContext(ctx, python, append([]string{"-I", script}, args...)...)
	cmd.Env = append(os.Environ(), "EWS_PASSWORD="+password)
	return cmd
}

// headerRecorder is a reverse proxy in front of the simulator that keeps
// one header of every request passing through.
type headerRecorder struct {
	name string
	mu   sync.Mutex
	got  []string
}

func (h *headerRecorder) start(t *testing.T, target string) string {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.got = append(h.got, r.Header.Get(h.name))
		h.mu.Unlock()
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func (h *headerRecorder) values() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

type clientResult struct {
	Unread   int `json:"unread"`
	Messages []struct {
		Subject  string `json:"subject"`
		From     string `json:"from"`
		FromName string `json:"fromName"`
	} `json:"messages"`
}

// TestExchangelibReadsInbox runs a real third-party EWS client, exchangelib,
// against the simulator: version probe, folder lookups, FindItem and
// GetItem must all be answered the way it expects, and the extra header it
// is told to send must reach the server on every request.
func TestExchangelibReadsInbox(t *testing.T) {
	requireExchangelib(t)
	t.Parallel()
	const (
		user     = "alice@example.com"
		password = "alice-password"
		deviceID = "device-0123"
	)
	sim := ewssim.Start(t, ewssim.Config{Users: []ewssim.User{{Address: user, Password: password}}})
	received := time.Now().Add(-time.Hour)
	older, err := sim.Deliver(user, ewssim.Mail{From: "carol@example.net", FromName: "Carol", Subject: "Quarterly report", Body: "Numbers inside.", Received: received})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sim.Deliver(user, ewssim.Mail{From: "dave@example.org", FromName: "Dave", Subject: "Lunch?", Body: "At noon.", Received: received.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	// One read of two, so the unread count cannot pass for the total.
	if err := sim.MarkRead(user, older.ID, true); err != nil {
		t.Fatal(err)
	}
	rec := &headerRecorder{name: "X-Device-Id"}
	base := rec.start(t, sim.URL)

	cmd := clientCommand(t, password, "--url", base+ewssim.EWSPath, "--user", user, "--header", "X-Device-Id="+deviceID)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	t.Logf("exchangelib client took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("exchangelib client: %v\nstderr: %s", err, stderr.String())
	}

	var got clientResult
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("client output is not the expected JSON: %v\n%s", err, out)
	}
	if got.Unread != 1 {
		t.Errorf("unread = %d, want 1", got.Unread)
	}
	type msg struct{ subject, from, name string }
	var msgs []msg
	for _, m := range got.Messages {
		msgs = append(msgs, msg{m.Subject, m.From, m.FromName})
	}
	want := []msg{{"Lunch?", "dave@example.org", "Dave"}, {"Quarterly report", "carol@example.net", "Carol"}}
	if !slices.Equal(msgs, want) {
		t.Errorf("messages, newest first = %+v, want %+v", msgs, want)
	}

	headers := rec.values()
	if len(headers) == 0 {
		t.Fatal("no request reached the simulator")
	}
	for i, h := range headers {
		if h != deviceID {
			t.Errorf("request %d of %d: X-Device-Id = %q, want %q", i+1, len(headers), h, deviceID)
		}
	}
	c := sim.Counters()
	t.Logf("EWS requests: %v; auth: %v", c.Requests, c.Auth)
	for _, op := range []string{"FindItem", "GetItem"} {
		if c.Requests[op] == 0 {
			t.Errorf("no %s request: the client did not read the Inbox through the simulator (%v)", op, c.Requests)
		}
	}
}

// TestExchangelibWrongPassword checks the client fails clearly, with a
// non-zero status, when Exchange refuses its credentials.
func TestExchangelibWrongPassword(t *testing.T) {
	requireExchangelib(t)
	t.Parallel()
	sim := ewssim.Start(t, ewssim.Config{Users: []ewssim.User{{Address: "bob@example.com", Password: "right"}}})
	out, err := clientCommand(t, "wrong", "--url", sim.EWSURL, "--user", "bob@example.com").CombinedOutput()
	if _, exited := errors.AsType[*exec.ExitError](err); !exited {
		t.Fatalf("want a non-zero exit, got %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "UnauthorizedError") {
		t.Errorf("error output does not say why:\n%s", out)
	}
}

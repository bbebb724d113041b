package ewssim_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/testenv/exchangelib"
)

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

// TestExchangelibReadsInbox runs a real third-party EWS client, exchangelib,
// against the simulator: version probe, folder lookups, FindItem and
// GetItem must all be answered the way it expects, and the extra header it
// is told to send must reach the server on every request.
func TestExchangelibReadsInbox(t *testing.T) {
	exchangelib.Require(t)
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

	start := time.Now()
	got, err := exchangelib.Read(t, base+ewssim.EWSPath, user, password, "--header", "X-Device-Id="+deviceID)
	t.Logf("exchangelib client took %v", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatal(err)
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
	exchangelib.Require(t)
	t.Parallel()
	sim := ewssim.Start(t, ewssim.Config{Users: []ewssim.User{{Address: "bob@example.com", Password: "right"}}})
	out, err := exchangelib.Command(t, "wrong", "--url", sim.EWSURL, "--user", "bob@example.com").CombinedOutput()
	if _, exited := errors.AsType[*exec.ExitError](err); !exited {
		t.Fatalf("want a non-zero exit, got %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "UnauthorizedError") {
		t.Errorf("error output does not say why:\n%s", out)
	}
}

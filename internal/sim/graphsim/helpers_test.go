package graphsim

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	alice = "alice@contoso.test"
	bob   = "bob@contoso.test"
)

var t0 = time.Date(2026, 10, 1, 9, 0, 0, 0, time.UTC)

// frozen starts a simulator whose clock moves only by Advance.
func frozen(t *testing.T, mod ...func(*Config)) *TestServer {
	t.Helper()
	cfg := Config{
		Users:       []User{{Address: alice, DisplayName: "Alice"}, {Address: bob}},
		FrozenClock: true, Start: t0, AllowHTTP: true,
		DeliveryTimeout: 500 * time.Millisecond, ValidationTimeout: 500 * time.Millisecond,
	}
	for _, f := range mod {
		f(&cfg)
	}
	return Start(t, cfg)
}

// redeem runs the refresh-token grant and returns the decoded answer and
// status.
func redeem(t *testing.T, ts *TestServer, client, rt, scope string) (map[string]any, int) {
	t.Helper()
	form := url.Values{"grant_type": {"refresh_token"}, "client_id": {client}, "refresh_token": {rt}}
	if scope != "" {
		form.Set("scope", scope)
	}
	resp, err := http.PostForm(ts.TokenURL, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out, resp.StatusCode
}

// getToken mints a refresh token for user and redeems it.
func getToken(t *testing.T, ts *TestServer, user string, scopes ...string) string {
	t.Helper()
	rt, err := ts.MintRefreshToken(user, DefaultClientID, scopes...)
	if err != nil {
		t.Fatal(err)
	}
	out, status := redeem(t, ts, DefaultClientID, rt, "")
	if status != 200 {
		t.Fatalf("token: %d %v", status, out)
	}
	return out["access_token"].(string)
}

// call makes a Graph request and decodes the JSON answer (nil if none).
func call(t *testing.T, ts *TestServer, tok, method, path string, body any, hdr ...string) (*http.Response, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	u := path
	if !strings.HasPrefix(u, "http") {
		u = ts.GraphURL + path
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: %d, not JSON: %q", method, path, resp.StatusCode, b)
		}
	}
	return resp, out
}

func errCode(v map[string]any) string {
	e, _ := v["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// listener is a webhook receiver: it answers validation requests by
// echoing the token and records every notification POST.
type listener struct {
	*httptest.Server
	mu          sync.Mutex
	validations []string // decoded tokens received
	posts       [][]map[string]any
	// answer decides the status of a notification POST (default 202);
	// delay holds it first.
	answer func(n int) int
	delay  time.Duration
	// validate, if set, replaces the echo of validation requests.
	validate func(w http.ResponseWriter, token string)
	got      chan struct{}
}

func newListener(t *testing.T) *listener {
	l := &listener{got: make(chan struct{}, 1000)}
	l.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok := r.URL.Query().Get("validationToken"); tok != "" {
			l.mu.Lock()
			l.validations = append(l.validations, tok)
			v := l.validate
			l.mu.Unlock()
			if v != nil {
				v(w, tok)
				return
			}
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, tok)
			return
		}
		var body struct {
			Value []map[string]any `json:"value"`
		}
		json.NewDecoder(r.Body).Decode(&body)
		l.mu.Lock()
		l.posts = append(l.posts, body.Value)
		n := len(l.posts)
		answer, delay := l.answer, l.delay
		l.mu.Unlock()
		if delay > 0 {
			time.Sleep(delay)
		}
		status := http.StatusAccepted
		if answer != nil {
			status = answer(n)
		}
		w.WriteHeader(status)
		l.got <- struct{}{}
	}))
	t.Cleanup(l.Close)
	return l
}

func (l *listener) set(f func(l *listener)) {
	l.mu.Lock()
	f(l)
	l.mu.Unlock()
}

func (l *listener) allPosts() [][]map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([][]map[string]any(nil), l.posts...)
}

// notifications flattens every POST's notifications.
func (l *listener) notifications() []map[string]any {
	var out []map[string]any
	for _, p := range l.allPosts() {
		out = append(out, p...)
	}
	return out
}

// subscribe creates a subscription on alice's Inbox; it fails the test
// unless Graph answers 201.
func subscribe(t *testing.T, ts *TestServer, tok string, body map[string]any) map[string]any {
	t.Helper()
	resp, out := call(t, ts, tok, "POST", "/subscriptions", body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create subscription: %d %v", resp.StatusCode, out)
	}
	return out
}

func subBody(l, lc *listener, exp time.Time) map[string]any {
	b := map[string]any{
		"changeType": "created", "notificationUrl": l.URL + "/notify?x=1",
		"resource": "me/mailFolders('inbox')/messages", "expirationDateTime": exp.Format(time.RFC3339Nano),
		"clientState": "secret-state",
	}
	if lc != nil {
		b["lifecycleNotificationUrl"] = lc.URL + "/lifecycle"
	}
	return b
}

package ews

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/ewsschema"
)

const (
	testMailbox  = "alice@example.com"
	testPassword = "pa55-w0rd!"
	testToken    = "eyJ0eXAi.token.sig"
)

var basicAccount = Account{Mailbox: testMailbox, Auth: BasicAuth{Username: "EXAMPLE\\alice", Password: testPassword}}

// capture records what an httptest server received.
type capture struct {
	mu      sync.Mutex
	headers []http.Header
	bodies  map[string][]byte
	calls   atomic.Int32
}

func (c *capture) record(r *http.Request) []byte {
	body, _ := io.ReadAll(r.Body)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.headers = append(c.headers, r.Header.Clone())
	if c.bodies == nil {
		c.bodies = map[string][]byte{}
	}
	c.bodies[fmt.Sprintf("request-%d", len(c.bodies))] = body
	c.calls.Add(1)
	return body
}

// serve answers every request with status and body after recording it.
func serve(t *testing.T, c *capture, status int, body []byte) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record(r)
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.WriteHeader(status)
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// noSecrets fails if an error string carries a credential or the mailbox.
func noSecrets(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range []string{testMailbox, testPassword, testToken, "alice"} {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error %q contains %q", err, s)
		}
	}
}

func TestClientGetItemSendsHeadersAndBasicAuth(t *testing.T) {
	var c capture
	srv := serve(t, &c, http.StatusOK, sample(t, "10-getitem.response.xml"))
	cl := newClient(t, Config{URL: srv.URL + "/EWS/Exchange.asmx", UserAgent: "ENSGate-test/1.0"})
	item, err := cl.GetItem(context.Background(), basicAccount, ItemID{ID: "AAMkAGItem1=", ChangeKey: "CQAAAA=="})
	if err != nil {
		t.Fatal(err)
	}
	if item.Subject != "Quarterly report" || item.From.EmailAddress != "alice@example.com" {
		t.Errorf("item %+v", item)
	}
	h := c.headers[0]
	r := http.Request{Header: h}
	user, pass, ok := r.BasicAuth()
	if !ok || user != "EXAMPLE\\alice" || pass != testPassword {
		t.Errorf("basic auth %q %q %t", user, pass, ok)
	}
	for name, want := range map[string]string{
		"X-Anchormailbox": testMailbox,
		"User-Agent":      "ENSGate-test/1.0",
		"Content-Type":    "text/xml; charset=utf-8",
	} {
		if got := h.Get(name); got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	if _, sent := h["Idempotency-Key"]; sent {
		t.Error("the replay marker went on the wire")
	}
	ewsschema.Check(t, c.bodies)
}

func TestClientGetInboxBearerAuth(t *testing.T) {
	var c capture
	srv := serve(t, &c, http.StatusOK, sample(t, "12-getfolder-inbox.response.xml"))
	cl := newClient(t, Config{URL: srv.URL})
	f, err := cl.GetInbox(context.Background(), Account{Mailbox: testMailbox, Auth: BearerAuth{Token: testToken}})
	if err != nil || f.UnreadCount != 7 {
		t.Fatalf("%+v, %v", f, err)
	}
	h := c.headers[0]
	if h.Get("Authorization") != "Bearer "+testToken || h.Get("User-Agent") != DefaultUserAgent || h.Get("X-AnchorMailbox") != testMailbox {
		t.Errorf("headers %v", h)
	}
	ewsschema.Check(t, c.bodies)
	if !strings.Contains(string(c.bodies["request-0"]), "folder:UnreadCount") {
		t.Error("GetFolder does not ask for UnreadCount")
	}
}

func TestClientSubscribe(t *testing.T) {
	var c capture
	srv := serve(t, &c, http.StatusOK, sample(t, "02-subscribe.response.xml"))
	cl := newClient(t, Config{URL: srv.URL, ServerVersion: "Exchange2016"})
	callback := "https://ens.example.com/api/ens/notify?id=abc&f=KEY"
	s, err := cl.Subscribe(context.Background(), basicAccount, SubscribeRequest{URL: callback, StatusFrequency: 15, Watermark: "WM"})
	if err != nil || s.ID == "" || s.Watermark != "AQAAAE0NHLpGbA9HjwSmPXXJyw5makMAAAAAAAE=" {
		t.Fatalf("%+v, %v", s, err)
	}
	ewsschema.Check(t, c.bodies)
	body := string(c.bodies["request-0"])
	for _, want := range []string{`Version="Exchange2016"`, "<t:URL>https://ens.example.com/api/ens/notify?id=abc&amp;f=KEY</t:URL>", "<t:StatusFrequency>15<", "<t:Watermark>WM<"} {
		if !strings.Contains(body, want) {
			t.Errorf("request lacks %s:\n%s", want, body)
		}
	}

	// An invalid request is refused before any network call.
	if _, err := cl.Subscribe(context.Background(), basicAccount, SubscribeRequest{URL: callback, StatusFrequency: 0}); err == nil {
		t.Error("StatusFrequency 0 accepted")
	}
	if n := c.calls.Load(); n != 1 {
		t.Errorf("%d calls, want 1", n)
	}
}

func TestClientAcceptsGzip(t *testing.T) {
	var sawGzip atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawGzip.Store(strings.Contains(r.Header.Get("Accept-Encoding"), "gzip"))
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		zw.Write(sample(t, "12-getfolder-inbox.response.xml"))
		zw.Close()
	}))
	defer srv.Close()
	f, err := newClient(t, Config{URL: srv.URL}).GetInbox(context.Background(), basicAccount)
	if err != nil || f.UnreadCount != 7 {
		t.Fatalf("%+v, %v", f, err)
	}
	if !sawGzip.Load() {
		t.Error("request did not accept gzip")
	}
}

func TestClientStatusAndErrorMapping(t *testing.T) {
	busy := sample(t, "13-error-serverbusy.soapfault-http500.xml")
	for name, tc := range map[string]struct {
		status     int
		header     http.Header
		body       []byte
		is         error
		httpStatus int
		retryAfter time.Duration
	}{
		"401 without body":   {status: 401, is: ErrUnauthorized, httpStatus: 401},
		"503 Retry-After":    {status: 503, header: http.Header{"Retry-After": {"7"}}, is: ErrServiceUnavailable, httpStatus: 503, retryAfter: 7 * time.Second},
		"503 bare":           {status: 503, is: ErrServiceUnavailable, httpStatus: 503},
		"503 huge":           {status: 503, header: http.Header{"Retry-After": {"99999999999999999"}}, is: ErrServiceUnavailable, httpStatus: 503, retryAfter: maxBackOff},
		"404":                {status: 404, body: []byte("<html>not here</html>"), httpStatus: 404},
		"403":                {status: 403, httpStatus: 403},
		"500 html":           {status: 500, body: []byte("<html>oops</html>"), httpStatus: 500},
		"500 busy fault":     {status: 500, body: busy, is: ErrServerBusy, retryAfter: 297749 * time.Millisecond},
		"200 item not found": {status: 200, body: sample(t, "14-getitem-error-itemnotfound.response.xml"), is: ErrItemNotFound},
		"200 garbage":        {status: 200, body: []byte("<html/>"), is: ErrMalformed},
		"200 doctype":        {status: 200, body: []byte(billionLaughs + "<x>&lol9;</x>"), is: ErrDTD},
		"302 not followed":   {status: 302, header: http.Header{"Location": {"/elsewhere"}}, httpStatus: 302},
	} {
		t.Run(name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if calls.Add(1) > 1 {
					t.Errorf("second request to %s", r.URL.Path)
				}
				for k, v := range tc.header {
					w.Header()[k] = v
				}
				w.WriteHeader(tc.status)
				w.Write(tc.body)
			}))
			defer srv.Close()
			_, err := newClient(t, Config{URL: srv.URL}).GetItem(context.Background(), basicAccount, ItemID{ID: "x"})
			if err == nil {
				t.Fatal("no error")
			}
			noSecrets(t, err)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v is not %v", err, tc.is)
			}
			if tc.is != ErrUnauthorized && errors.Is(err, ErrUnauthorized) {
				t.Errorf("%v matches ErrUnauthorized", err)
			}
			var he *HTTPError
			if got := errors.As(err, &he); got != (tc.httpStatus != 0) || (got && he.StatusCode != tc.httpStatus) {
				t.Errorf("HTTPError: %#v", err)
			}
			if got := RetryAfter(err); got != tc.retryAfter {
				t.Errorf("RetryAfter = %v, want %v", got, tc.retryAfter)
			}
		})
	}
}

func TestParseRetryAfterDate(t *testing.T) {
	now := time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC)
	if got := parseRetryAfter(now.Add(90*time.Second).Format(http.TimeFormat), now); got != 90*time.Second {
		t.Errorf("date: %v", got)
	}
	for _, v := range []string{"", "-3", "0", "soon", now.Add(-time.Minute).Format(http.TimeFormat)} {
		if got := parseRetryAfter(v, now); got != 0 {
			t.Errorf("%q: %v", v, got)
		}
	}
}

// perMailbox answers ServerBusy to the mailboxes in busy and the Inbox to
// the others, counting the requests that reach it per mailbox.
type perMailbox struct {
	mu    sync.Mutex
	busy  map[string]bool
	calls map[string]int
}

func (p *perMailbox) serve(t *testing.T) *httptest.Server {
	busy := sample(t, "13-error-serverbusy.soapfault-http500.xml")
	inbox := sample(t, "12-getfolder-inbox.response.xml")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mailbox := r.Header.Get("X-AnchorMailbox")
		p.mu.Lock()
		p.calls[mailbox]++
		isBusy := p.busy[mailbox]
		p.mu.Unlock()
		if isBusy {
			w.WriteHeader(http.StatusInternalServerError)
			w.Write(busy)
			return
		}
		w.Write(inbox)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func (p *perMailbox) count(mailbox string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[mailbox]
}

// Exchange throttles per user: bob's ErrorServerBusy stops bob's calls
// until its back-off has passed, without touching the network, and
// nobody else's.
func TestClientBacksOffPerCredential(t *testing.T) {
	p := &perMailbox{busy: map[string]bool{"bob@example.com": true}, calls: map[string]int{}}
	cl := newClient(t, Config{URL: p.serve(t).URL})
	now := time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC)
	cl.now = func() time.Time { return now }
	bob := Account{Mailbox: "bob@example.com", Auth: BasicAuth{Username: "EXAMPLE\\bob", Password: "pw"}}
	bobToken := Account{Mailbox: "bob@example.com", Auth: BearerAuth{Token: "bobs-token"}}

	if _, err := cl.GetInbox(context.Background(), bob); !errors.Is(err, ErrServerBusy) {
		t.Fatalf("bob's first call: %v", err)
	}
	p.mu.Lock()
	p.busy = nil
	p.mu.Unlock()
	now = now.Add(time.Minute)

	if f, err := cl.GetInbox(context.Background(), basicAccount); err != nil || f.UnreadCount != 7 {
		t.Fatalf("alice's call during bob's back-off: %+v, %v", f, err)
	}
	_, err := cl.GetItem(context.Background(), bob, ItemID{ID: "x"})
	var te *ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, ErrServerBusy) {
		t.Fatalf("bob's second call: %v", err)
	}
	if want := 297749*time.Millisecond - time.Minute; te.Remaining != want || RetryAfter(err) != want {
		t.Errorf("remaining %v, want %v", te.Remaining, want)
	}
	// The same user with another password is the same credential.
	bobNewPassword := Account{Mailbox: "Bob@Example.com", Auth: BasicAuth{Username: "example\\BOB", Password: "new"}}
	if _, err := cl.GetInbox(context.Background(), bobNewPassword); !errors.As(err, &te) {
		t.Fatalf("bob with another password: %v", err)
	}
	if n := p.count("bob@example.com"); n != 1 {
		t.Fatalf("%d of bob's requests reached the server during his back-off", n)
	}
	// Another credential for the same mailbox is another throttling budget.
	if _, err := cl.GetInbox(context.Background(), bobToken); err != nil {
		t.Fatalf("bob's token during his password's back-off: %v", err)
	}

	now = now.Add(297749*time.Millisecond - time.Minute)
	if f, err := cl.GetInbox(context.Background(), bob); err != nil || f.UnreadCount != 7 {
		t.Fatalf("after back-off: %+v, %v", f, err)
	}
	if n := p.count("bob@example.com"); n != 3 {
		t.Fatalf("%d of bob's requests, want 3", n)
	}
}

// A certificate is one credential per mailbox.
func TestClientCertificateBackOffIsPerMailbox(t *testing.T) {
	if credentialOf(Account{Mailbox: "bob@example.com"}, "cert") == credentialOf(Account{Mailbox: testMailbox}, "cert") {
		t.Error("two mailboxes of a certificate share a back-off")
	}
	if credentialOf(Account{Mailbox: testMailbox}, "cert") == credentialOf(Account{Mailbox: testMailbox}, "another cert") {
		t.Error("two certificates for one mailbox share a back-off")
	}
	if credentialOf(Account{Mailbox: testMailbox, Auth: BearerAuth{Token: "a"}}, "") == credentialOf(Account{Mailbox: testMailbox, Auth: BearerAuth{Token: "b"}}, "") {
		t.Error("two tokens share a back-off")
	}
	if credentialOf(basicAccount, "") != credentialOf(Account{Mailbox: testMailbox, Auth: &BasicAuth{Username: "example\\ALICE"}}, "") {
		t.Error("the same Basic user is two credentials")
	}
}

// ENS makes a Client per request for a certificate user: given the
// endpoint's BackOff, the next Client with the same certificate and mailbox
// is refused without a request, while another certificate goes on.
func TestCertificateClientsShareTheEndpointsBackOff(t *testing.T) {
	_, cert := newClientCert(t)
	_, otherCert := newClientCert(t)
	busy := sample(t, "13-error-serverbusy.soapfault-http500.xml")
	inbox := sample(t, "12-getfolder-inbox.response.xml")
	var calls atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			w.Write(busy)
			return
		}
		w.Write(inbox)
	}))
	// Each certificate has a CA of its own: the server asks for any.
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	shared := &BackOff{}
	acct := Account{Mailbox: testMailbox}
	client := func(cert tls.Certificate) *Client {
		return newClient(t, Config{URL: srv.URL, RootCAs: rootsFor(srv), Certificate: &cert, BackOff: shared})
	}
	if _, err := client(cert).GetInbox(context.Background(), acct); !errors.Is(err, ErrServerBusy) {
		t.Fatalf("first call: %v", err)
	}
	_, err := client(cert).GetInbox(context.Background(), acct)
	var te *ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, ErrServerBusy) {
		t.Fatalf("a new Client with the same certificate during its back-off: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d requests reached the server, want 1", n)
	}
	if f, err := client(otherCert).GetInbox(context.Background(), acct); err != nil || f.UnreadCount != 7 {
		t.Fatalf("another certificate for the mailbox: %+v, %v", f, err)
	}
}

// Remembered credentials are dropped once their back-off has passed, so
// the map does not grow with every user ever throttled.
func TestClientForgetsExpiredBackOffs(t *testing.T) {
	busy := map[string]bool{}
	for i := range 3 * minSweep {
		busy[fmt.Sprintf("user%d@example.com", i)] = true
	}
	p := &perMailbox{busy: busy, calls: map[string]int{}}
	cl := newClient(t, Config{URL: p.serve(t).URL})
	now := time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC)
	cl.now = func() time.Time { return now }
	peak := 0
	for i := range 3 * minSweep {
		cl.GetInbox(context.Background(), Account{Mailbox: fmt.Sprintf("user%d@example.com", i), Auth: BearerAuth{Token: "t"}})
		now = now.Add(30 * time.Second) // each back-off (297.7 s) outlives about ten more
		cl.backOff.mu.Lock()
		peak = max(peak, len(cl.backOff.credentials))
		cl.backOff.mu.Unlock()
	}
	if peak > minSweep {
		t.Errorf("%d credentials remembered at once, with at most 10 back-offs running", peak)
	}
}

// An HTTP Retry-After speaks for the server: it stops every caller, but for
// at most maxEndpointBackOff however long it asks for.
func TestClientEndpointBackOffIsBrief(t *testing.T) {
	var c capture
	var unavailable atomic.Bool
	unavailable.Store(true)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record(r)
		if unavailable.Load() {
			w.Header().Set("Retry-After", "3600")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write(sample(t, "12-getfolder-inbox.response.xml"))
	}))
	defer srv.Close()
	cl := newClient(t, Config{URL: srv.URL})
	now := time.Date(2024, 5, 1, 9, 0, 0, 0, time.UTC)
	cl.now = func() time.Time { return now }

	if _, err := cl.GetInbox(context.Background(), basicAccount); !errors.Is(err, ErrServiceUnavailable) || RetryAfter(err) != time.Hour {
		t.Fatalf("first call: %v", err)
	}
	unavailable.Store(false)
	bob := Account{Mailbox: "bob@example.com", Auth: BearerAuth{Token: "t"}}
	_, err := cl.GetInbox(context.Background(), bob)
	var te *ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, ErrServiceUnavailable) || te.Remaining != maxEndpointBackOff {
		t.Fatalf("another user's call during the server's back-off: %v", err)
	}
	if n := c.calls.Load(); n != 1 {
		t.Fatalf("%d requests reached the server during its back-off", n)
	}
	now = now.Add(maxEndpointBackOff)
	if _, err := cl.GetInbox(context.Background(), bob); err != nil {
		t.Fatalf("after %v: %v", maxEndpointBackOff, err)
	}
	if n := c.calls.Load(); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
}

func TestClientHonoursRetryAfter(t *testing.T) {
	var c capture
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record(r)
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	cl := newClient(t, Config{URL: srv.URL})
	for range 3 {
		_, err := cl.GetInbox(context.Background(), basicAccount)
		if !errors.Is(err, ErrServiceUnavailable) {
			t.Fatalf("got %v", err)
		}
	}
	if n := c.calls.Load(); n != 1 {
		t.Fatalf("%d requests reached the server, want 1", n)
	}
}

func TestClientTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
	defer srv.Close()
	defer close(release)
	start := time.Now()
	_, err := newClient(t, Config{URL: srv.URL, Timeout: 100 * time.Millisecond}).GetInbox(context.Background(), basicAccount)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestClientResponseSizeLimit(t *testing.T) {
	var c capture
	srv := serve(t, &c, http.StatusOK, sample(t, "10-getitem.response.xml"))
	_, err := newClient(t, Config{URL: srv.URL, MaxResponseSize: 100}).GetItem(context.Background(), basicAccount, ItemID{ID: "x"})
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v", err)
	}
}

// tlsServer starts an HTTPS server that records whether any request, and
// any Authorization header, reached it.
func tlsServer(t *testing.T, configure func(*tls.Config)) (*httptest.Server, *capture) {
	var c capture
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.record(r)
		w.Write(sample(t, "12-getfolder-inbox.response.xml"))
	}))
	if configure != nil {
		srv.TLS = &tls.Config{}
		configure(srv.TLS)
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, &c
}

func rootsFor(srv *httptest.Server) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return pool
}

func TestClientPinning(t *testing.T) {
	srv, c := tlsServer(t, nil)
	leaf := srv.Certificate()
	certSum, spkiSum := sha256.Sum256(leaf.Raw), sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	other := sha256.Sum256([]byte("some other certificate"))
	for name, tc := range map[string]struct {
		pin   string
		match bool
	}{
		"cert match":      {"sha256:" + strings.ToUpper(hex.EncodeToString(certSum[:])), true},
		"spki match":      {"spki-sha256:" + hex.EncodeToString(spkiSum[:]), true},
		"cert mismatch":   {"sha256:" + hex.EncodeToString(other[:]), false},
		"spki mismatch":   {"spki-sha256:" + hex.EncodeToString(other[:]), false},
		"spki as cert":    {"sha256:" + hex.EncodeToString(spkiSum[:]), false},
		"cert as spki":    {"spki-sha256:" + hex.EncodeToString(certSum[:]), false},
		"no pin, trusted": {"", true},
	} {
		t.Run(name, func(t *testing.T) {
			var pin Fingerprint
			if tc.pin != "" {
				var err error
				if pin, err = ParseFingerprint(tc.pin); err != nil {
					t.Fatal(err)
				}
			}
			before := c.calls.Load()
			cl := newClient(t, Config{URL: srv.URL, Pin: pin, RootCAs: rootsFor(srv)})
			f, err := cl.GetInbox(context.Background(), basicAccount)
			reached := c.calls.Load() > before
			if tc.match {
				if err != nil || f.UnreadCount != 7 || !reached {
					t.Fatalf("%+v, %v", f, err)
				}
				return
			}
			if !errors.Is(err, ErrPinMismatch) {
				t.Fatalf("want ErrPinMismatch, got %v", err)
			}
			if reached {
				t.Fatal("a request (with its Authorization header) reached a server whose pin did not match")
			}
			noSecrets(t, err)
		})
	}
	// Pinning adds to chain verification; it does not replace it.
	pin, _ := ParseFingerprint("sha256:" + hex.EncodeToString(certSum[:]))
	if _, err := newClient(t, Config{URL: srv.URL, Pin: pin}).GetInbox(context.Background(), basicAccount); err == nil {
		t.Error("an untrusted certificate was accepted because its pin matched")
	}
	for _, h := range c.headers {
		if h.Get("Authorization") == "" {
			t.Error("a successful call carried no Authorization header")
		}
	}
}

// newClientCert makes a CA and a client certificate it signed.
func newClientCert(t *testing.T) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "alice-device"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return pool, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestClientCertificateAuth(t *testing.T) {
	cas, cert := newClientCert(t)
	var subject atomic.Value
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		subject.Store(r.TLS.PeerCertificates[0].Subject.CommonName)
		if r.Header.Get("Authorization") != "" {
			t.Error("certificate call sent an Authorization header")
		}
		w.Write(sample(t, "12-getfolder-inbox.response.xml"))
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: cas}
	srv.StartTLS()
	defer srv.Close()

	cl := newClient(t, Config{URL: srv.URL, RootCAs: rootsFor(srv), Certificate: &cert})
	f, err := cl.GetInbox(context.Background(), Account{Mailbox: testMailbox})
	if err != nil || f.UnreadCount != 7 || subject.Load() != "alice-device" {
		t.Fatalf("%+v, %v, subject %v", f, err, subject.Load())
	}

	// Without the certificate the server refuses the connection.
	if _, err := newClient(t, Config{URL: srv.URL, RootCAs: rootsFor(srv)}).GetInbox(context.Background(), Account{Mailbox: testMailbox}); err == nil {
		t.Fatal("call without a client certificate succeeded")
	}
}

func TestNewClientValidation(t *testing.T) {
	pin, _ := ParseFingerprint("sha256:" + strings.Repeat("ab", 32))
	cert := tls.Certificate{}
	for name, cfg := range map[string]Config{
		"empty":           {},
		"relative":        {URL: "/EWS/Exchange.asmx"},
		"ftp":             {URL: "ftp://mail.example.com/EWS"},
		"pin over http":   {URL: "http://mail.example.com/EWS/Exchange.asmx", Pin: pin},
		"cert over http":  {URL: "http://mail.example.com/EWS/Exchange.asmx", Certificate: &cert},
		"unknown version": {URL: "https://mail.example.com/EWS/Exchange.asmx", ServerVersion: "Exchange2030"},
	} {
		if _, err := NewClient(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewClient(Config{URL: "https://mail.example.com/EWS/Exchange.asmx", Pin: pin, Certificate: &cert}); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
}

// Credentials and addresses never show when printed or logged.
func TestCredentialsRedacted(t *testing.T) {
	bearer := Account{Mailbox: testMailbox, Auth: BearerAuth{Token: testToken}}
	var out bytes.Buffer
	for _, v := range []any{basicAccount, bearer, basicAccount.Auth, bearer.Auth, &basicAccount, []Account{basicAccount}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
	}
	slog.New(slog.NewJSONHandler(&out, nil)).Info("call", "account", basicAccount, "auth", bearer.Auth)
	slog.New(slog.NewTextHandler(&out, nil)).Info("call", "account", bearer, "auth", basicAccount.Auth)
	for _, secret := range []string{testMailbox, testPassword, testToken, "alice", hex.EncodeToString([]byte(testPassword))} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("output contains %q:\n%s", secret, out.String())
		}
	}
}

// A signer sees the request as it is sent, credentials included (its
// signature may cover them), and the body sent; the answer's header comes
// back, also with an error status (a proxy's refusal carries it too).
func TestCallOptionsSignTheRequestAndReturnTheAnswersHeader(t *testing.T) {
	var received []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received, _ = io.ReadAll(r.Body)
		w.Header().Set("X-Answer", "from "+r.Header.Get("X-Question"))
		if r.Header.Get("X-Question") == "a stranger" {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.Write(sample(t, "12-getfolder-inbox.response.xml"))
	}))
	defer srv.Close()
	c, err := NewClient(Config{URL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	acct := Account{Mailbox: "a@example.test", Auth: BasicAuth{Username: "alice", Password: "pw"}}
	signer := func(question string, signed *[]byte) CallOption {
		return WithRequestSigner(func(r *http.Request, body []byte) {
			if r.Header.Get("Authorization") == "" {
				t.Error("signed before the credentials were set")
			}
			*signed = body
			r.Header.Set("X-Question", question)
		})
	}

	var signed []byte
	var h http.Header
	if _, err := c.GetInbox(context.Background(), acct, signer("the proxy", &signed), ResponseHeader(&h)); err != nil {
		t.Fatal(err)
	}
	if got := h.Get("X-Answer"); got != "from the proxy" {
		t.Errorf("response header %q", got)
	}
	if len(signed) == 0 || !bytes.Equal(signed, received) {
		t.Errorf("signed body %q, sent %q", signed, received)
	}

	var he *HTTPError
	_, err = c.GetInbox(context.Background(), acct, signer("a stranger", &signed), ResponseHeader(&h))
	if !errors.As(err, &he) || he.StatusCode != http.StatusForbidden {
		t.Fatalf("err %v, want the 403", err)
	}
	if got := h.Get("X-Answer"); got != "from a stranger" {
		t.Errorf("response header of the refusal %q", got)
	}
}

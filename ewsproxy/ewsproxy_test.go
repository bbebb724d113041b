package ewsproxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/attest"
	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/ewsproxy"
	"github.com/ensgate/ensgate/internal/testenv/ewsschema"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

var quiet = slog.New(slog.DiscardHandler)

func newStore(t *testing.T, url string) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// runCompliance starts a node's cache and waits for its first load.
func runCompliance(t *testing.T, s *store.Store) *compliance.Cache {
	t.Helper()
	c := compliance.New(s, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.Loaded():
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for the first load")
	}
	if _, err := c.State(store.DeviceKey{DeviceID: "x"}); err != nil {
		t.Fatalf("loaded, yet: %v", err)
	}
	return c
}

func waitUntil(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

func TestComplianceChangesReachEveryNodeAtOnce(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	admin := newStore(t, url)
	if _, _, err := admin.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	tenant, _, _ := admin.CreateTenant(ctx, "contoso", 0)
	other, _, _ := admin.CreateTenant(ctx, "fabrikam", 0)
	admin.SetCompliance(ctx, tenant.ID, "known", store.Compliant)

	nodeA, nodeB := runCompliance(t, newStore(t, url)), runCompliance(t, newStore(t, url))
	key := store.DeviceKey{TenantID: tenant.ID, DeviceID: "phone-1"}
	for _, n := range []*compliance.Cache{nodeA, nodeB} {
		if s, _ := n.State(store.DeviceKey{TenantID: tenant.ID, DeviceID: "known"}); s != store.Compliant {
			t.Fatalf("the first load missed a state: %q", s)
		}
	}
	for _, state := range []string{store.Blocked, store.Compliant, store.Wiped} {
		if err := admin.SetCompliance(ctx, tenant.ID, "phone-1", state); err != nil {
			t.Fatal(err)
		}
		for name, n := range map[string]*compliance.Cache{"A": nodeA, "B": nodeB} {
			took := waitUntil(t, "node "+name+" to see "+state, func() bool { s, _ := n.State(key); return s == state })
			if took > time.Second {
				t.Errorf("node %s saw %s after %v, want within a second", name, state, took)
			}
		}
	}
	// Without a tenant, the most restrictive state across tenants applies.
	admin.SetCompliance(ctx, other.ID, "shared", store.Compliant)
	admin.SetCompliance(ctx, tenant.ID, "shared", store.Blocked)
	waitUntil(t, "the shared device", func() bool {
		s, _ := nodeA.State(store.DeviceKey{DeviceID: "shared"})
		return s == store.Blocked
	})
	if s, _ := nodeA.State(store.DeviceKey{TenantID: other.ID, DeviceID: "shared"}); s != store.Compliant {
		t.Errorf("tenant-scoped state %q", s)
	}
}

// upstream records what reached Exchange.
type upstream struct {
	calls   int
	headers http.Header
	body    []byte
	bound   bool // the last request was forwarded as connection-bound (Kerberos)
}

func (u *upstream) forward(w http.ResponseWriter, r *http.Request, connectionBound bool) error {
	u.calls++
	u.bound = connectionBound
	u.headers = r.Header.Clone()
	u.body, _ = io.ReadAll(r.Body)
	w.Header().Add("WWW-Authenticate", "Negotiate")
	w.Header().Add("WWW-Authenticate", "NTLM")
	w.Header().Add("WWW-Authenticate", `Basic realm="mail"`)
	w.Header().Add("WWW-Authenticate", `Bearer authorization_uri="https://login.example"`)
	w.WriteHeader(http.StatusUnauthorized)
	return nil
}

const getItem = `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/>` +
	`<s:Body><m:GetItem xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/></s:Body></s:Envelope>`

func TestGuardDecidesBeforeTheUpstream(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, pgtest.NewDatabase(t))
	s.Migrate(ctx)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	for id, state := range map[string]string{"good": store.Compliant, "blocked": store.Blocked, "wiped": store.Wiped, "bad": store.NonCompliant} {
		s.SetCompliance(ctx, tenant.ID, id, state)
	}
	compliance := runCompliance(t, s)
	secret := []byte("shared secret between ENS and the proxy")
	att := attest.Attestation{Secret: secret}

	for _, tc := range []struct {
		name          string
		allowUnknown  bool
		header, query string
		attested      []string
		forged        bool
		replayed      bool // an attestation made for another request
		status        int
		accepted      string
	}{
		{name: "compliant by header", header: "good", status: 401},
		{name: "compliant by query", query: "good", status: 401},
		{name: "blocked", header: "blocked", status: 403},
		{name: "wiped", header: "wiped", status: 403},
		{name: "noncompliant", header: "bad", status: 403},
		{name: "unknown, deny", header: "stranger", status: 403},
		{name: "unknown, allow", header: "stranger", allowUnknown: true, status: 401},
		{name: "no id, deny", status: 403},
		{name: "no id, allow", allowUnknown: true, status: 401},
		{name: "ENS, some accepted", attested: []string{"blocked", "good", "wiped"}, status: 401, accepted: "good"},
		{name: "ENS, none accepted", attested: []string{"blocked", "wiped"}, status: 403, accepted: ""},
		{name: "ENS, forged", attested: []string{"good"}, forged: true, status: 403},
		{name: "ENS, replayed", attested: []string{"good"}, replayed: true, status: 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := ewsproxy.NewGuard(ewsproxy.Config{TenantID: tenant.ID, DeviceHeader: "X-Device-Id", DeviceQuery: "deviceId",
				AllowUnknown: tc.allowUnknown, RemoveUnsupportedAuth: true, Attestation: att, Realm: "mail"}, compliance, quiet)
			target := "/EWS/Exchange.asmx"
			if tc.query != "" {
				target += "?deviceId=" + tc.query
			}
			r := httptest.NewRequest("POST", target, strings.NewReader(getItem))
			if tc.header != "" {
				r.Header.Set("X-Device-Id", tc.header)
			}
			if tc.attested != nil {
				signer := att
				if tc.forged {
					signer = attest.Attestation{Secret: []byte("a device's guess")}
				}
				signed := getItem
				if tc.replayed {
					signed = strings.Replace(getItem, "GetItem", "GetFolder", 2)
				}
				r.Header.Set(attest.DevicesHeader, signer.SignRequest(tenant.ID, tc.attested, r, []byte(signed)))
			}
			w := httptest.NewRecorder()
			up := &upstream{}
			if err := g.Serve(w, r, up.forward); err != nil {
				t.Fatal(err)
			}
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if want := map[bool]int{true: 1, false: 0}[tc.status != 403]; up.calls != want {
				t.Fatalf("%d upstream calls, want %d", up.calls, want)
			}
			if tc.attested != nil && !tc.forged && !tc.replayed && w.Header().Get(attest.AcceptedHeader) != tc.accepted {
				t.Errorf("accepted devices %q, want %q", w.Header().Get(attest.AcceptedHeader), tc.accepted)
			}
			if up.calls == 1 {
				if up.headers.Get(attest.DevicesHeader) != "" {
					t.Error("ENS's attestation leaked to Exchange")
				}
				if string(up.body) != getItem {
					t.Errorf("the upstream got a different body: %q", up.body)
				}
				if got := w.Header().Values("WWW-Authenticate"); strings.Join(got, "|") != `Basic realm="mail"|Bearer authorization_uri="https://login.example"` {
					t.Errorf("challenges passed on: %q", got)
				}
			}
			if w.Code == 403 {
				checkFault(t, w.Body.Bytes())
			}
		})
	}
}

// A node's HTTP server may take a request before the compliance cache has
// finished its first load. Such a request waits for that load and is judged
// by it, rather than answered 503.
func TestRequestsToAStartingNodeWaitForTheFirstLoad(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, pgtest.NewDatabase(t))
	s.Migrate(ctx)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	s.SetCompliance(ctx, tenant.ID, "good", store.Compliant)
	compliance := compliance.New(s, quiet) // not running yet
	g := ewsproxy.NewGuard(ewsproxy.Config{TenantID: tenant.ID, DeviceHeader: "X-Device-Id"}, compliance, quiet)

	r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
	r.Header.Set("X-Device-Id", "good")
	w := httptest.NewRecorder()
	up := &upstream{}
	answered := make(chan error)
	go func() { answered <- g.Serve(w, r, up.forward) }()
	select {
	case err := <-answered:
		t.Fatalf("answered %d (%v) before compliance was loaded", w.Code, err)
	case <-time.After(200 * time.Millisecond):
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { compliance.Run(runCtx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := <-answered; err != nil {
		t.Fatal(err)
	}
	if w.Code != 401 || up.calls != 1 {
		t.Fatalf("status %d with %d upstream calls, want the upstream's 401: %s", w.Code, up.calls, w.Body)
	}
}

// With the database down from the start, the proxy fails closed with 503
// as soon as the first load has failed, rather than after the start-up wait.
func TestUnreachableDatabaseFailsClosedAtOnce(t *testing.T) {
	s := newStore(t, "postgres://ens:pw@127.0.0.1:1/ens?connect_timeout=2")
	compliance := compliance.New(s, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { compliance.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, DeviceHeader: "X-Device-Id"}, compliance, quiet)

	r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
	r.Header.Set("X-Device-Id", "good")
	w := httptest.NewRecorder()
	up := &upstream{}
	start := time.Now()
	if err := g.Serve(w, r, up.forward); err != nil {
		t.Fatal(err)
	}
	if w.Code != 503 || up.calls != 0 || !strings.Contains(w.Body.String(), "ErrorServerBusy") {
		t.Fatalf("status %d with %d upstream calls: %s", w.Code, up.calls, w.Body)
	}
	// A refused connection settles the first load at once: no request
	// waits on a database that is known to be down.
	if waited := time.Since(start); waited > 3*time.Second {
		t.Errorf("answered after %v, want no start-up wait once the database is known to be down", waited)
	}
}

// checkFault: the 403 is an EWS SOAP fault, schema-valid, that the ews
// client maps to ErrAccessDenied.
func checkFault(t *testing.T, body []byte) {
	t.Helper()
	ewsschema.Check(t, map[string][]byte{"fault": body})
	if _, err := ews.ParseGetItemResponse(body); !errors.Is(err, ews.ErrAccessDenied) {
		t.Errorf("the ews client reads the 403 as %v, want ErrAccessDenied", err)
	}
}

func TestNTLMRequestsGetBasicOnly(t *testing.T) {
	g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, RemoveUnsupportedAuth: true, Realm: "mail.contoso.test"},
		nil, quiet)
	for _, auth := range []string{"NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==",
		"Negotiate TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw=="} {
		r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
		r.Header.Set("Authorization", auth)
		w := httptest.NewRecorder()
		up := &upstream{}
		g.Serve(w, r, up.forward)
		if w.Code != 401 || up.calls != 0 || strings.Join(w.Header().Values("WWW-Authenticate"), "|") != `Basic realm="mail.contoso.test"` ||
			!strings.Contains(w.Body.String(), "NTLM") {
			t.Errorf("%.12s…: %d, %d upstream calls, challenges %q, body %q", auth, w.Code, up.calls, w.Header().Values("WWW-Authenticate"), w.Body)
		}
	}
}

func TestOperationPeekKeepsLargeBodiesIntact(t *testing.T) {
	big := getItem[:len(getItem)-len("</s:Body></s:Envelope>")] + strings.Repeat("<x>attachment data</x>", 50000) + "</s:Body></s:Envelope>"
	// withHeader puts n bytes of SOAP header before the body.
	withHeader := func(n int) string {
		return `<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header>` +
			strings.Repeat("<t:Pad>x</t:Pad>", n/16) + `</s:Header><s:Body><m:GetItem/></s:Body></s:Envelope>`
	}
	for _, tc := range []struct{ body, want string }{
		{getItem, "GetItem"},
		{big, "GetItem"},
		{withHeader(5000), "GetItem"},  // beyond the first read
		{withHeader(15000), "GetItem"}, // within the 16 KiB peek
		{withHeader(20000), ""},        // beyond it: unnamed, still forwarded intact
		{"not xml at all", ""},
		{"", ""},
	} {
		r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(tc.body))
		op := ewsproxy.Operation(r)
		rest, _ := io.ReadAll(r.Body)
		if !bytes.Equal(rest, []byte(tc.body)) {
			t.Fatalf("body of %d bytes came out as %d bytes", len(tc.body), len(rest))
		}
		if op != tc.want {
			t.Errorf("body of %d bytes: operation %q, want %q", len(tc.body), op, tc.want)
		}
	}
}

// delegator answers as configured and records the certificates it saw.
type delegator struct {
	header string
	err    error
	seen   []string
}

func (d *delegator) Authorization(_ context.Context, cert *x509.Certificate) (string, error) {
	d.seen = append(d.seen, cert.Subject.CommonName)
	return d.header, d.err
}

type statusError int

func (e statusError) Error() string   { return "no such user" }
func (e statusError) HTTPStatus() int { return int(e) }

func TestCertificateClientsGetKerberosInsteadOfTheirCredentials(t *testing.T) {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "alice"}}
	for _, tc := range []struct {
		name       string
		withCert   bool
		unverified bool
		d          *delegator
		status     int
		auth       string
		challenges string
	}{
		{"certificate", true, false, &delegator{header: "Negotiate YIIkerberos"}, 401, "Negotiate YIIkerberos",
			`Negotiate|Basic realm="mail"|Bearer authorization_uri="https://login.example"`},
		{"no certificate", false, false, &delegator{header: "Negotiate YII"}, 401, "Basic Y2xpZW50",
			`Basic realm="mail"|Bearer authorization_uri="https://login.example"`},
		{"unverified certificate", true, true, &delegator{header: "Negotiate YII"}, 401, "Basic Y2xpZW50",
			`Basic realm="mail"|Bearer authorization_uri="https://login.example"`},
		{"unknown user", true, false, &delegator{err: statusError(403)}, 403, "", ""},
		{"KDC down", true, false, &delegator{err: errors.New("kdc unreachable")}, 502, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, RemoveUnsupportedAuth: true, Delegator: tc.d}, nil, quiet)
			r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
			r.Header.Set("Authorization", "Basic Y2xpZW50")
			if tc.withCert {
				r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
				if !tc.unverified {
					r.TLS.VerifiedChains = [][]*x509.Certificate{{cert}}
				}
			}
			w := httptest.NewRecorder()
			up := &upstream{}
			g.Serve(w, r, up.forward)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.status, w.Body)
			}
			if tc.status >= 403 {
				if up.calls != 0 {
					t.Fatal("a failed delegation still reached Exchange")
				}
				checkFault(t, w.Body.Bytes())
				return
			}
			if got := up.headers.Get("Authorization"); got != tc.auth {
				t.Errorf("Exchange got Authorization %q, want %q", got, tc.auth)
			}
			if want := strings.HasPrefix(tc.auth, "Negotiate"); up.bound != want {
				t.Errorf("forwarded as connection-bound: %v, want %v", up.bound, want)
			}
			if got := strings.Join(w.Header().Values("WWW-Authenticate"), "|"); got != tc.challenges {
				t.Errorf("challenges %q, want %q", got, tc.challenges)
			}
		})
	}
}

// TestClientKerberosIsConnectionBound: a client's own Kerberos goes to
// Exchange as is, on connections no other request shares; Basic does not
// need that.
func TestClientKerberosIsConnectionBound(t *testing.T) {
	g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, RemoveUnsupportedAuth: true}, nil, quiet)
	// A truncated token such as "YII" counts as NTLM in disguise, so the
	// lower-case one is a well-formed SPNEGO Kerberos token.
	kerberos := base64.StdEncoding.EncodeToString(spnego(t, true, true, []asn1.ObjectIdentifier{oidKerberos}, []byte{0x60, 0x03, 0x06, 0x01, 0x00}))
	for auth, bound := range map[string]bool{"NEGOTIATE " + kerberos: true, "negotiate " + kerberos: true, "Basic Y2xpZW50": false, "": false} {
		r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		up := &upstream{}
		g.Serve(httptest.NewRecorder(), r, up.forward)
		if up.calls != 1 || up.bound != bound || up.headers.Get("Authorization") != auth {
			t.Errorf("%q: %d calls, connection-bound %v (want %v), Authorization %q", auth, up.calls, up.bound, bound, up.headers.Get("Authorization"))
		}
	}
}

package ewsproxy_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/ewsproxy"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

// challengeUpstream answers 401 with the given WWW-Authenticate lines.
func challengeUpstream(lines ...string) ewsproxy.Forward {
	return func(w http.ResponseWriter, r *http.Request, _ bool) error {
		for _, l := range lines {
			w.Header().Add("WWW-Authenticate", l)
		}
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	}
}

func TestNTLMChallengesAreRemovedWhereverTheyStand(t *testing.T) {
	for _, tc := range []struct {
		name     string
		in       []string
		want     string // the lines passed on, joined by |
		kerberos bool   // the proxy does Kerberos for this client
	}{
		{name: "after Basic", in: []string{`Basic realm="x", NTLM`}, want: `Basic realm="x"`},
		{name: "before Basic", in: []string{`Negotiate, NTLM, Basic realm="x"`}, want: `Basic realm="x"`},
		{name: "tab before a token68", in: []string{"NTLM\tabc"}, want: ""},
		{name: "any case, with a token68", in: []string{`ntlm TlRMTVNTUAACAAAA==, basic realm="x"`}, want: `basic realm="x"`},
		{name: "between challenges with parameters",
			in:   []string{`Bearer authorization_uri="https://login.example/a,b", NTLM, Basic realm="mail", charset="UTF-8"`},
			want: `Bearer authorization_uri="https://login.example/a,b", Basic realm="mail", charset="UTF-8"`},
		{name: "quoted comma and escaped quote", in: []string{`Basic realm="a, NTLM \", b", NEGOTIATE`}, want: `Basic realm="a, NTLM \", b"`},
		{name: "tabs around parameters", in: []string{"Basic\trealm\t=\t\"x\"\t,\tNTLM"}, want: "Basic\trealm\t=\t\"x\""},
		{name: "empty list elements", in: []string{`, NTLM ,, Basic realm="x" ,`}, want: `Basic realm="x"`},
		{name: "a line left empty is dropped", in: []string{"NTLM", "Negotiate, NTLM", `Basic realm="x"`}, want: `Basic realm="x"`},
		{name: "untouched lines stay byte for byte", in: []string{`Basic realm="x",  Bearer  realm="y"`}, want: `Basic realm="x",  Bearer  realm="y"`},
		{name: "malformed lines are dropped", in: []string{`Basic realm="unterminated, NTLM`, `Basic realm="x"`}, want: `Basic realm="x"`},
		{name: "Negotiate stays with Kerberos", in: []string{`Negotiate, NTLM, Basic realm="x"`}, want: `Negotiate, Basic realm="x"`, kerberos: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ewsproxy.Config{AllowUnknown: true, RemoveUnsupportedAuth: true}
			r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
			if tc.kerberos {
				cfg.Delegator = &delegator{header: "Negotiate YII"}
				r.TLS = certificateClient()
			}
			w := httptest.NewRecorder()
			if err := ewsproxy.NewGuard(cfg, nil, quiet).Serve(w, r, challengeUpstream(tc.in...)); err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(w.Header().Values("WWW-Authenticate"), "|"); got != tc.want {
				t.Errorf("challenges %q, want %q", got, tc.want)
			}
		})
	}
}

// certificateClient is the TLS state of a client whose certificate the
// TLS layer verified.
func certificateClient() *tls.ConnectionState {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "alice"}}
	return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
}

// spnego builds a SPNEGO token: a NegTokenInit (init) or a NegTokenResp,
// framed as a GSS-API InitialContextToken if gss.
func spnego(t *testing.T, init, gss bool, mechs []asn1.ObjectIdentifier, token []byte) []byte {
	t.Helper()
	var seq []byte
	var err error
	if init {
		seq, err = asn1.Marshal(struct {
			Mechs []asn1.ObjectIdentifier `asn1:"explicit,tag:0"`
			Token []byte                  `asn1:"explicit,optional,tag:2"`
		}{mechs, token})
	} else {
		var mech asn1.ObjectIdentifier
		if len(mechs) > 0 {
			mech = mechs[0]
		}
		seq, err = asn1.Marshal(struct {
			State asn1.Enumerated       `asn1:"explicit,tag:0"`
			Mech  asn1.ObjectIdentifier `asn1:"explicit,optional,tag:1"`
			Token []byte                `asn1:"explicit,optional,tag:2"`
		}{1, mech, token})
	}
	if err != nil {
		t.Fatal(err)
	}
	tag := 1
	if init {
		tag = 0
	}
	choice, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, IsCompound: true, Bytes: seq})
	if !gss {
		return choice
	}
	oid, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 2})
	out, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassApplication, Tag: 0, IsCompound: true, Bytes: append(oid, choice...)})
	return out
}

var (
	oidNTLM      = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 2, 10}
	oidKerberos  = asn1.ObjectIdentifier{1, 2, 840, 113554, 1, 2, 2}
	oidMSKerbero = asn1.ObjectIdentifier{1, 2, 840, 48018, 1, 2, 2}
)

func TestNTLMInDisguiseIsRefused(t *testing.T) {
	ntlm, _ := base64.StdEncoding.DecodeString("TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==")
	ntlm = append(ntlm, 0xfb, 0xff)               // so that the URL alphabet differs
	apReq := []byte{0x60, 0x03, 0x06, 0x01, 0x00} // stands for a Kerberos token
	std := base64.StdEncoding.EncodeToString
	for _, tc := range []struct {
		name, auth string
		refused    bool
	}{
		{"NTLM, tab", "NTLM\t" + std(ntlm), true},
		{"NTLM, lower case", "ntlm " + std(ntlm), true},
		{"NTLM, mixed case, no token", "nTlM", true},
		{"Negotiate, unpadded", "Negotiate " + base64.RawStdEncoding.EncodeToString(ntlm), true},
		{"Negotiate, URL alphabet", "Negotiate " + base64.URLEncoding.EncodeToString(ntlm), true},
		{"Negotiate, URL alphabet unpadded", "NEGOTIATE\t" + base64.RawURLEncoding.EncodeToString(ntlm), true},
		{"SPNEGO init preferring NTLM", "Negotiate " + std(spnego(t, true, true, []asn1.ObjectIdentifier{oidNTLM, oidKerberos}, nil)), true},
		{"SPNEGO init with an NTLM mechToken", "Negotiate " + std(spnego(t, true, true, []asn1.ObjectIdentifier{oidKerberos}, ntlm)), true},
		{"SPNEGO init without GSS framing", "Negotiate " + std(spnego(t, true, false, []asn1.ObjectIdentifier{oidNTLM}, ntlm)), true},
		{"SPNEGO response with an NTLM token", "Negotiate " + std(spnego(t, false, false, nil, ntlm)), true},
		{"SPNEGO response selecting NTLM", "Negotiate " + std(spnego(t, false, false, []asn1.ObjectIdentifier{oidNTLM}, nil)), true},
		{"SPNEGO that cannot be parsed", "Negotiate " + std([]byte{0x60, 0x80, 0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02}), true},
		{"Negotiate that is not base64", "Negotiate TlRMTVNTUAAB*AAAA", true},
		{"second Authorization header", "Basic Y2xpZW50\x00NTLM " + std(ntlm), true},

		{"SPNEGO Kerberos", "Negotiate " + std(spnego(t, true, true, []asn1.ObjectIdentifier{oidMSKerbero, oidKerberos, oidNTLM}, apReq)), false},
		{"lower-case negotiate Kerberos", "negotiate " + std(spnego(t, true, true, []asn1.ObjectIdentifier{oidKerberos}, apReq)), false},
		{"Basic", "Basic Y2xpZW50", false},
		{"BASIC", "BASIC Y2xpZW50", false},
		{"bearer", "bearer eyJ0eXAi", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, RemoveUnsupportedAuth: true, Realm: "mail"}, nil, quiet)
			r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
			for _, v := range strings.Split(tc.auth, "\x00") {
				r.Header.Add("Authorization", v)
			}
			w := httptest.NewRecorder()
			up := &upstream{}
			g.Serve(w, r, up.forward)
			refused := up.calls == 0
			if refused != tc.refused {
				t.Fatalf("refused %v, want %v (%d %s)", refused, tc.refused, w.Code, w.Body)
			}
			if refused && (w.Code != 401 || !strings.Contains(w.Body.String(), "NTLM authentication is not supported") ||
				w.Header().Get("WWW-Authenticate") != `Basic realm="mail"`) {
				t.Errorf("refusal: %d, %q, %q", w.Code, w.Header().Values("WWW-Authenticate"), w.Body)
			}
			if !refused && strings.Join(up.headers.Values("Authorization"), "\x00") != tc.auth {
				t.Errorf("Exchange got Authorization %q", up.headers.Values("Authorization"))
			}
		})
	}
}

// recordingUpstream notes the path and the body that reached it, and
// returns the body's read error as the reverse proxy would.
type recordingUpstream struct {
	calls int
	path  string
	raw   string // the path as it would go on the wire
	body  []byte
}

func (u *recordingUpstream) forward(w http.ResponseWriter, r *http.Request, _ bool) error {
	u.calls++
	u.path, u.raw = r.URL.Path, r.URL.EscapedPath()
	var err error
	u.body, err = io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func TestPathsThatLeaveEWSAreRefusedBeforeTheUpstream(t *testing.T) {
	g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, RemoveUnsupportedAuth: true}, nil, quiet)
	for _, target := range []string{
		`/EWS/..%5cowa/auth/logon.aspx`,
		`/EWS/..%5c..%5cecp/default.aspx`,
		`/EWS/..%5Cowa`,
		`/EWS/%2e%2e/owa/`,
		`/EWS/%2E%2E/owa/`,
		`/EWS/..%2fowa`,
		`/EWS/../owa/`,
		`/EWS/./Exchange.asmx`,
		`/EWS/%2e/Exchange.asmx`,
		`/EWS/..%20/owa`,
		`/EWS/...`,
		`/EWS/a%2fb`,
		`/EWS/%252e%252e/owa`,
		`/EWS/Exchange.asmx%00.txt`,
		`/EWS/a%0d%0aX-Injected:%201`,
		`/EWS/%ef%bc%8fowa`, // fullwidth solidus
		`/EWS/%c0%ae%c0%ae/owa`,
		`/EWS/..;/owa/`,
		`/EWS/Exchange.asmx;jsessionid=42`,
		`/owa/auth/logon.aspx`,
		`/EWSX/Exchange.asmx`,
		`/`,
	} {
		r := httptest.NewRequest("POST", target, strings.NewReader(getItem))
		w := httptest.NewRecorder()
		up := &recordingUpstream{}
		if err := g.Serve(w, r, up.forward); err != nil {
			t.Fatal(err)
		}
		if w.Code != 400 || up.calls != 0 || !strings.HasPrefix(w.Body.String(), "Bad request path: it contains ") {
			t.Errorf("%s: %d, %d upstream calls, %q", target, w.Code, up.calls, w.Body)
		}
	}
	for target, want := range map[string]string{
		"/EWS/Exchange.asmx":              "/EWS/Exchange.asmx",
		"/ews/exchange.asmx?deviceId=x":   "/ews/exchange.asmx",
		"/Ews/Exchange%2Easmx":            "/Ews/Exchange.asmx", // one decoding, then forwarded as checked
		"/EWS":                            "/EWS",
		"/EWS/Services.wsdl":              "/EWS/Services.wsdl",
		"/EWS/mrsproxy.svc":               "/EWS/mrsproxy.svc",
		"/EWS/a..b/Exchange.asmx":         "/EWS/a..b/Exchange.asmx",
		"/EWS/%41%42":                     "/EWS/AB",
		"/EWS/Exchange.asmx/with%20space": "/EWS/Exchange.asmx/with space",
	} {
		r := httptest.NewRequest("POST", target, strings.NewReader(getItem))
		w := httptest.NewRecorder()
		up := &recordingUpstream{}
		g.Serve(w, r, up.forward)
		if w.Code != 200 || up.calls != 1 || up.path != want {
			t.Errorf("%s: %d, %d upstream calls, path %q, want %q: %s", target, w.Code, up.calls, up.path, want, w.Body)
		}
	}
}

// chunked hides a body's length, as Transfer-Encoding: chunked does.
type chunked struct{ io.Reader }

func TestBodiesOverTheLimitGet413(t *testing.T) {
	const limit = 64 << 10
	g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, MaxRequestBody: limit}, nil, quiet)
	big := getItem + strings.Repeat(" ", limit)
	for _, tc := range []struct {
		name     string
		body     string
		chunked  bool
		status   int
		upstream int // calls that reached the upstream
	}{
		{name: "declared length under the limit", body: getItem, status: 200, upstream: 1},
		{name: "exactly the limit, chunked", body: big[:limit], chunked: true, status: 200, upstream: 1},
		{name: "declared length over the limit", body: big, status: 413},
		{name: "chunked over the limit", body: big, chunked: true, status: 413, upstream: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var body io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				body = chunked{body}
			}
			r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", body)
			w := httptest.NewRecorder()
			up := &recordingUpstream{}
			if err := g.Serve(w, r, up.forward); err != nil {
				t.Fatal(err)
			}
			if w.Code != tc.status || up.calls != tc.upstream {
				t.Fatalf("%d with %d upstream calls, want %d with %d: %.100s", w.Code, up.calls, tc.status, tc.upstream, w.Body)
			}
			if tc.status == 413 && !strings.Contains(w.Body.String(), "at most 65536 bytes") {
				t.Errorf("413 body %q", w.Body)
			}
			if len(up.body) > limit {
				t.Errorf("the upstream got %d bytes, over the %d-byte limit", len(up.body), limit)
			}
		})
	}
}

// With a tenant, the route judges devices by that tenant's states only;
// without one, by the most restrictive state across tenants.
func TestARouteWithATenantIgnoresOtherTenantsBlocks(t *testing.T) {
	ctx := context.Background()
	s := newStore(t, pgtest.NewDatabase(t))
	s.Migrate(ctx)
	a, _, _ := s.CreateTenant(ctx, "a", 0)
	b, _, _ := s.CreateTenant(ctx, "b", 0)
	s.SetCompliance(ctx, a.ID, "phone-1", store.Compliant)
	s.SetCompliance(ctx, b.ID, "phone-1", store.Blocked)
	s.SetCompliance(ctx, a.ID, "phone-2", store.Blocked)
	s.SetCompliance(ctx, b.ID, "phone-2", store.Compliant)
	compliance := runCompliance(t, s)
	lookups := 0
	findA := func(ctx context.Context) (int64, error) {
		lookups++
		if lookups == 1 {
			return 0, errors.New("database down")
		}
		tn, err := s.TenantByName(ctx, "a")
		return tn.ID, err
	}
	tenantA := ewsproxy.NewGuard(ewsproxy.Config{FindTenant: findA, DeviceHeader: "X-Device-Id"}, compliance, quiet)
	anyTenant := ewsproxy.NewGuard(ewsproxy.Config{DeviceHeader: "X-Device-Id"}, compliance, quiet)
	status := func(g *ewsproxy.Guard, device string) int {
		r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
		r.Header.Set("X-Device-Id", device)
		w := httptest.NewRecorder()
		g.Serve(w, r, (&upstream{}).forward)
		return w.Code
	}
	if got := status(tenantA, "phone-1"); got != 503 {
		t.Errorf("while the tenant cannot be looked up: %d, want 503", got)
	}
	for _, tc := range []struct {
		g      *ewsproxy.Guard
		name   string
		device string
		want   int
	}{
		{tenantA, "tenant a", "phone-1", 401}, // the upstream's answer: let through
		{tenantA, "tenant a", "phone-2", 403},
		{anyTenant, "no tenant", "phone-1", 403},
		{anyTenant, "no tenant", "phone-2", 403},
	} {
		if got := status(tc.g, tc.device); got != tc.want {
			t.Errorf("%s, %s: %d, want %d", tc.name, tc.device, got, tc.want)
		}
	}
	if lookups != 2 {
		t.Errorf("%d tenant lookups, want 2 (one failed, then found for good)", lookups)
	}
}

// The largest limit a config can give is no limit at all, not a panic.
func TestLargestBodyLimitForwardsTheBody(t *testing.T) {
	g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, MaxRequestBody: math.MaxInt64}, nil, quiet)
	r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", chunked{strings.NewReader(getItem)})
	w := httptest.NewRecorder()
	up := &recordingUpstream{}
	if err := g.Serve(w, r, up.forward); err != nil {
		t.Fatal(err)
	}
	if w.Code != 200 || up.calls != 1 || string(up.body) != getItem {
		t.Fatalf("%d with %d upstream calls, body %d bytes", w.Code, up.calls, len(up.body))
	}
}

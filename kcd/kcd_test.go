package kcd

import (
	"bytes"
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jcmturner/gokrb5/v8/credentials"
	"github.com/jcmturner/gokrb5/v8/iana/patype"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/service"
	"github.com/jcmturner/gokrb5/v8/spnego"
	"github.com/jcmturner/gokrb5/v8/types"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ensgate/ensgate/internal/testenv/kdctest"
	"github.com/ensgate/ensgate/internal/testenv/testca"
)

func TestMain(m *testing.M) { os.Exit(kdctest.Run(m)) }

// eachKDC runs f against Heimdal and against a Samba AD DC.
func eachKDC(t *testing.T, f func(t *testing.T, r *kdctest.Realm)) {
	t.Run("heimdal", func(t *testing.T) { f(t, kdctest.Heimdal(t)) })
	t.Run("samba", func(t *testing.T) { f(t, kdctest.Samba(t)) })
}

func newDelegator(t *testing.T, r *kdctest.Realm, change func(*Config)) *Delegator {
	t.Helper()
	cfg := Config{
		Realm:     r.Name,
		KDCs:      r.KDCs,
		Principal: r.ProxyPrincipal,
		Keytab:    r.ProxyKeytab,
		SPN:       r.ExchangeSPN,
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	}
	if change != nil {
		change(&cfg)
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// exchange verifies a Negotiate header as Exchange would, with its service
// keytab (and gokrb5's replay cache), and returns the authenticated client.
func exchange(t testing.TB, r *kdctest.Realm, header string) (*credentials.Credentials, error) {
	t.Helper()
	b64, ok := strings.CutPrefix(header, "Negotiate ")
	if !ok {
		t.Fatalf("not a Negotiate header: %.20q", header)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatal(err)
	}
	var tok spnego.SPNEGOToken
	if err := tok.Unmarshal(raw); err != nil || !tok.Init {
		t.Fatalf("not a SPNEGO NegTokenInit: %v", err)
	}
	var mech spnego.KRB5Token
	if err := mech.Unmarshal(tok.NegTokenInit.MechTokenBytes); err != nil || !mech.IsAPReq() {
		t.Fatalf("no Kerberos AP-REQ: %v", err)
	}
	settings := service.NewSettings(r.ExchangeKeytab, service.DecodePAC(false), service.KeytabPrincipal(r.ExchangeSPN))
	ok, creds, err := service.VerifyAPREQ(&mech.APReq, settings)
	if err == nil && !ok {
		err = errors.New("not verified")
	}
	return creds, err
}

// requests counts the KDC requests made by f.
func requests(r *kdctest.Realm, f func()) (as, tgs int64) {
	as0, tgs0 := r.Requests()
	f()
	as1, tgs1 := r.Requests()
	return as1 - as0, tgs1 - tgs0
}

func TestDelegatedTicketAuthenticatesTheUser(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *kdctest.Realm) {
		d := newDelegator(t, r, nil)
		for _, name := range []string{r.User, r.UserPrincipal} {
			h, err := d.Negotiate(context.Background(), name)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			creds, err := exchange(t, r, h)
			if err != nil {
				t.Fatalf("Exchange refused the header: %v", err)
			}
			// Active Directory canonicalises an enterprise name to the
			// account name; Heimdal keeps the UPN as the client name.
			user := creds.UserName()
			if !strings.EqualFold(creds.Domain(), r.Name) || !strings.EqualFold(user, r.UserPrincipal) && !strings.EqualFold(user, r.User) {
				t.Errorf("Exchange sees %s in %s, want %s or %s in %s", user, creds.Domain(), r.UserPrincipal, r.User, r.Name)
			}
		}
	})
}

func TestOneS4UPairPerUserPerTicketLifetime(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *kdctest.Realm) {
		d := newDelegator(t, r, nil)
		ctx := context.Background()
		var mu sync.Mutex
		headers := map[string]bool{}
		hits, misses := testutil.ToFloat64(cacheLookups.WithLabelValues("hit")), testutil.ToFloat64(cacheLookups.WithLabelValues("miss"))
		as, tgs := requests(r, func() {
			var wg sync.WaitGroup
			for range 16 {
				wg.Go(func() {
					for range 8 {
						h, err := d.Negotiate(ctx, r.User)
						if err != nil {
							t.Error(err)
							return
						}
						mu.Lock()
						headers[h] = true
						mu.Unlock()
					}
				})
			}
			wg.Wait()
		})
		// One AS exchange (two requests: the first learns the
		// pre-authentication type) and one S4U2Self + S4U2Proxy pair.
		if tgs != 2 || as < 1 || as > 2 {
			t.Errorf("128 requests for one user made %d AS-REQ and %d TGS-REQ, want 1-2 and 2", as, tgs)
		}
		// Concurrent first requests all miss and share one exchange.
		h := testutil.ToFloat64(cacheLookups.WithLabelValues("hit")) - hits
		m := testutil.ToFloat64(cacheLookups.WithLabelValues("miss")) - misses
		if h+m != 128 || h < 128-16 {
			t.Errorf("metrics: %v hits and %v misses for 128 requests from 16 clients", h, m)
		}
		if len(headers) != 128 {
			t.Errorf("%d distinct headers for 128 requests: authenticators must be fresh", len(headers))
		}
		for h := range headers {
			if _, err := exchange(t, r, h); err != nil {
				t.Fatalf("Exchange refused a header from the cache: %v", err)
			}
		}

		// Another user costs one more pair, not a login.
		other := r.AddUser(t, "carol")
		as, tgs = requests(r, func() {
			if _, err := d.Negotiate(ctx, other); err != nil {
				t.Fatal(err)
			}
		})
		if as != 0 || tgs != 2 {
			t.Errorf("a second user made %d AS-REQ and %d TGS-REQ, want 0 and 2", as, tgs)
		}

		// When a ticket is due for renewal, the next request gets a new one.
		d.mu.Lock()
		for _, e := range d.tickets {
			e.refresh = time.Now().Add(-time.Second)
		}
		d.mu.Unlock()
		_, tgs = requests(r, func() {
			h, err := d.Negotiate(ctx, r.User)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := exchange(t, r, h); err != nil {
				t.Fatal(err)
			}
		})
		if tgs != 2 {
			t.Errorf("renewing a ticket made %d TGS-REQ, want 2", tgs)
		}
	})
}

func TestRefreshTime(t *testing.T) {
	d := &Delegator{cfg: Config{RenewBefore: 5 * time.Minute}}
	start := time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		life, want time.Duration
	}{
		{10 * time.Hour, 10*time.Hour - 5*time.Minute},
		{10 * time.Minute, 5 * time.Minute},
		{4 * time.Minute, 2 * time.Minute},
	} {
		got := d.refreshTime(&credential{start: start, end: start.Add(tc.life)})
		if got.Sub(start) != tc.want {
			t.Errorf("lifetime %v: refreshed after %v, want %v", tc.life, got.Sub(start), tc.want)
		}
	}
}

func TestDelegationErrors(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *kdctest.Realm) {
		ctx := context.Background()
		for _, tc := range []struct {
			name   string
			change func(*Config)
			user   string
			want   error
			status int
		}{
			{"unknown user", nil, "nobody@" + strings.ToLower(r.Name), ErrUnknownPrincipal, 403},
			{"SPN not in the delegation list", func(c *Config) { c.SPN = r.OtherSPN }, r.User, ErrBadOption, 502},
			{"sensitive user", nil, r.SensitiveUser, ErrNotForwardable, 403},
			{"disabled user", nil, r.DisabledUser, ErrUserRefused, 403},
			{"proxy not trusted for protocol transition", func(c *Config) {
				c.Principal, c.Keytab = r.UntrustedProxyPrincipal, r.UntrustedProxyKeytab
			}, r.User, ErrNotForwardable, 403},
			{"clock skew", func(c *Config) { c.now = func() time.Time { return time.Now().Add(time.Hour) } }, r.User, ErrClockSkew, 502},
			{"proxy principal unknown to the KDC", func(c *Config) {
				c.Principal, c.Keytab = "HTTP/nobody."+kdctest.DNSDomain, keytab.New()
				if err := c.Keytab.AddEntry(c.Principal, r.Name, "pw", time.Now(), 1, 18); err != nil {
					t.Fatal(err)
				}
			}, r.User, ErrProxyLogin, 502},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d := newDelegator(t, r, tc.change)
				_, err := d.Negotiate(ctx, tc.user)
				if !errors.Is(err, tc.want) {
					t.Fatalf("error %v, want %v", err, tc.want)
				}
				var e *Error
				if !errors.As(err, &e) || e.HTTPStatus() != tc.status {
					t.Fatalf("error %#v: want an *Error with HTTP status %d", err, tc.status)
				}
				if strings.Contains(strings.ToLower(err.Error()), strings.ToLower(strings.Split(tc.user, "@")[0])) {
					t.Errorf("the error names the user: %v", err)
				}
				// Users the KDC refused are answered from the cache for a
				// while; gateway-side failures are retried.
				as, tgs := requests(r, func() {
					if _, err := d.Negotiate(ctx, tc.user); !errors.Is(err, tc.want) {
						t.Errorf("second attempt: %v", err)
					}
				})
				cached := tc.status == 403
				if cached && as+tgs != 0 {
					t.Errorf("a refused user was asked again: %d AS-REQ, %d TGS-REQ", as, tgs)
				}
				if !cached && as+tgs == 0 {
					t.Error("a gateway-side failure was cached")
				}
			})
		}
	})
}

// silentKDC accepts connections and never answers; accepted counts them.
func silentKDC(t *testing.T) (addr string, accepted *atomic.Int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted = new(atomic.Int64)
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().String(), accepted
}

// closedPort is an address nothing listens on.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestKDCFailoverAndOutages(t *testing.T) {
	r := kdctest.Heimdal(t)
	ctx := context.Background()

	t.Run("first KDCs down, the next answers and is asked first from then on", func(t *testing.T) {
		silent, accepted := silentKDC(t)
		d := newDelegator(t, r, func(c *Config) {
			c.KDCs = append([]string{closedPort(t), silent}, r.KDCs...)
			c.Timeout = 200 * time.Millisecond
		})
		h, err := d.Negotiate(ctx, r.User)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := exchange(t, r, h); err != nil {
			t.Fatal(err)
		}
		before := accepted.Load()
		if _, err := d.Negotiate(ctx, r.AddUser(t, "henry")); err != nil {
			t.Fatal(err)
		}
		if n := accepted.Load() - before; n != 0 {
			t.Errorf("the silent KDC was tried %d more times after another one answered", n)
		}
	})

	t.Run("all KDCs down", func(t *testing.T) {
		silent, _ := silentKDC(t)
		d := newDelegator(t, r, func(c *Config) { c.KDCs = []string{closedPort(t), silent}; c.Timeout = 200 * time.Millisecond })
		start := time.Now()
		_, err := d.Negotiate(ctx, r.User)
		if !errors.Is(err, ErrKDCUnreachable) {
			t.Fatalf("error %v, want ErrKDCUnreachable", err)
		}
		var e *Error
		if !errors.As(err, &e) || e.HTTPStatus() != http.StatusBadGateway || e.Step != StepLogin {
			t.Fatalf("error %#v, want a 502 at the login step", err)
		}
		// Bounded by the per-KDC timeout, not a hang (generous for CI).
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("took %v with a 200 ms timeout per KDC", took)
		}
	})

	t.Run("the caller's deadline wins", func(t *testing.T) {
		silent, _ := silentKDC(t)
		d := newDelegator(t, r, func(c *Config) { c.KDCs = []string{silent}; c.Timeout = time.Minute })
		ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := d.Negotiate(ctx, r.User); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("error %v, want the context's", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("took %v with a 100 ms deadline", took)
		}
	})

	t.Run("cached tickets outlive a KDC outage", func(t *testing.T) {
		d := newDelegator(t, r, nil)
		if _, err := d.Negotiate(ctx, r.User); err != nil {
			t.Fatal(err)
		}
		d.x.kdc = &transport{kdcs: []string{closedPort(t)}, timeout: time.Second}
		h, err := d.Negotiate(ctx, r.User)
		if err != nil {
			t.Fatalf("cached ticket not used while the KDC is down: %v", err)
		}
		if _, err := exchange(t, r, h); err != nil {
			t.Fatal(err)
		}
		// Also when it is due for renewal, while it is still valid.
		d.mu.Lock()
		for _, e := range d.tickets {
			e.refresh = time.Now().Add(-time.Second)
		}
		d.mu.Unlock()
		h, err = d.Negotiate(ctx, r.User)
		if err != nil {
			t.Fatalf("a ticket due for renewal not used while the KDC is down: %v", err)
		}
		if _, err := exchange(t, r, h); err != nil {
			t.Fatal(err)
		}
		// A KDC that does not answer is waited for once, not on every
		// request.
		silent, accepted := silentKDC(t)
		d.x.kdc = &transport{kdcs: []string{silent}, timeout: 200 * time.Millisecond}
		d.mu.Lock()
		for _, e := range d.tickets {
			e.refresh = time.Now().Add(-time.Second)
		}
		d.mu.Unlock()
		for range 5 {
			if _, err := d.Negotiate(ctx, r.User); err != nil {
				t.Fatal(err)
			}
		}
		if n := accepted.Load(); n != 1 {
			t.Errorf("5 requests during an outage tried the silent KDC %d times, want 1", n)
		}
	})
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := New(Config{KDCs: []string{"[::1"}, Principal: "HTTP/proxy@REALM", SPN: "exchange"})
	if err == nil {
		t.Fatal("accepted an empty configuration")
	}
	for _, want := range []string{"realm", "KDC", "principal", "SPN", "keytab"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// BenchmarkNegotiate splits a cached request's Kerberos cost: the
// gateway's share (a fresh authenticator, encrypted, in a SPNEGO token),
// and that plus Exchange's share (gokrb5's ticket and authenticator check
// with the service keytab, and its replay cache), as the simulator does it;
// and measures a cache miss (S4U2Self + S4U2Proxy with a local Heimdal).
func BenchmarkNegotiate(b *testing.B) {
	r := kdctest.Heimdal(b)
	d, err := New(Config{Realm: r.Name, KDCs: r.KDCs, Principal: r.ProxyPrincipal, Keytab: r.ProxyKeytab, SPN: r.ExchangeSPN})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Negotiate(ctx, r.User); err != nil {
		b.Fatal(err)
	}
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := d.Negotiate(ctx, r.User); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached_and_verified", func(b *testing.B) {
		for b.Loop() {
			h, err := d.Negotiate(ctx, r.User)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := exchange(b, r, h); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("miss", func(b *testing.B) {
		for b.Loop() {
			d.mu.Lock()
			clear(d.tickets)
			d.mu.Unlock()
			if _, err := d.Negotiate(ctx, r.User); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestTheProxysTGT(t *testing.T) {
	r := kdctest.Heimdal(t)
	ctx := context.Background()
	d := newDelegator(t, r, nil)
	if _, err := d.Negotiate(ctx, r.User); err != nil {
		t.Fatal(err)
	}
	// age moves the TGT's lifetime back by the given share of it.
	age := func(share float64) {
		d.mu.Lock()
		defer d.mu.Unlock()
		by := time.Duration(share * float64(d.tgt.end.Sub(d.tgt.start)))
		d.tgt.start, d.tgt.end = d.tgt.start.Add(-by), d.tgt.end.Add(-by)
	}
	newUser := func(name string) (as, tgs int64) {
		user := r.AddUser(t, name)
		return requests(r, func() {
			h, err := d.Negotiate(ctx, user)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := exchange(t, r, h); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("used for its first two thirds", func(t *testing.T) {
		age(0.6)
		if as, tgs := newUser("dave"); as != 0 || tgs != 2 {
			t.Errorf("%d AS-REQ, %d TGS-REQ; want 0 and 2", as, tgs)
		}
	})
	t.Run("renewed in its last third", func(t *testing.T) {
		age(0.1)
		if as, tgs := newUser("erin"); as == 0 || tgs != 2 {
			t.Errorf("%d AS-REQ, %d TGS-REQ; want a login and 2", as, tgs)
		}
	})
	t.Run("kept while a login fails and it is still valid", func(t *testing.T) {
		age(0.7)
		logins := 0
		d.login = func(context.Context) (*credential, error) {
			logins++
			return nil, &Error{Step: StepLogin, Kind: ErrProxyLogin}
		}
		defer func() { d.login = d.x.login }()
		if as, tgs := newUser("frank"); logins != 1 || as != 0 || tgs != 2 {
			t.Errorf("%d logins, %d AS-REQ, %d TGS-REQ; want a failed login, then 2 TGS-REQ with the old TGT", logins, as, tgs)
		}
	})
	t.Run("replaced when the KDC cannot read it", func(t *testing.T) {
		// A TGT from another KDC of the same realm name, as after a
		// krbtgt key change.
		other := newDelegator(t, kdctest.Heimdal(t), nil)
		foreign, err := other.loginTGT(ctx)
		if err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		d.tgt = foreign
		d.mu.Unlock()
		if as, tgs := newUser("grace"); as == 0 || tgs != 3 {
			t.Errorf("%d AS-REQ, %d TGS-REQ; want a login and 3 (one refused)", as, tgs)
		}
	})
}

// tee forwards Kerberos-over-TCP connections to kdc and records each
// request; it can play a misbehaving KDC or an attacker on the path by
// rewriting requests and replies.
type tee struct {
	mu         sync.Mutex
	requests   [][]byte
	rewriteReq func(req []byte) []byte
	rewriteRep func(req, rep []byte) []byte
}

func startTee(t *testing.T, kdc string) (*tee, string) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	te := &tee{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var size [4]byte
				if _, err := io.ReadFull(c, size[:]); err != nil {
					return
				}
				req := make([]byte, binary.BigEndian.Uint32(size[:]))
				if _, err := io.ReadFull(c, req); err != nil {
					return
				}
				te.mu.Lock()
				te.requests = append(te.requests, req)
				rewriteReq, rewriteRep := te.rewriteReq, te.rewriteRep
				te.mu.Unlock()
				if rewriteReq != nil {
					req = rewriteReq(req)
				}
				rep, err := (&transport{kdcs: []string{kdc}, timeout: 5 * time.Second}).roundTrip(context.Background(), kdc, req)
				if err != nil {
					return
				}
				if rewriteRep != nil {
					rep = rewriteRep(req, rep)
				}
				binary.BigEndian.PutUint32(size[:], uint32(len(rep)))
				c.Write(append(size[:], rep...))
			}()
		}
	}()
	return te, l.Addr().String()
}

// TestTimesAreUTC: KerberosTime must be UTC ("…Z", RFC 4120 5.2.3); MIT's
// KDC rejects a local zone offset. Heimdal accepts either, so the test
// reads the requests themselves.
func TestTimesAreUTC(t *testing.T) {
	r := kdctest.Heimdal(t)
	te, addr := startTee(t, r.KDCs[0])
	berlin := time.FixedZone("CET", 3600)
	d := newDelegator(t, r, func(c *Config) {
		c.KDCs = []string{addr}
		c.now = func() time.Time { return time.Now().In(berlin) }
	})
	if _, err := d.Negotiate(context.Background(), r.User); err != nil {
		t.Fatal(err)
	}
	te.mu.Lock()
	defer te.mu.Unlock()
	if len(te.requests) < 3 {
		t.Fatalf("%d requests seen", len(te.requests))
	}
	for i, req := range te.requests {
		if bytes.Contains(req, []byte("+0100")) {
			t.Errorf("request %d carries a local time (+0100)", i)
		}
	}
}

// isS4U2Self tells a TGS-REQ carrying PA-FOR-USER.
func isS4U2Self(req []byte) (messages.TGSReq, bool) {
	var tgs messages.TGSReq
	if err := tgs.Unmarshal(req); err != nil {
		return tgs, false
	}
	return tgs, tgs.PAData.Contains(patype.PA_FOR_USER)
}

// TestRepliesAreChecked: answers a real KDC never gives are refused, with
// 502 and no header.
func TestRepliesAreChecked(t *testing.T) {
	r := kdctest.Heimdal(t)
	ctx := context.Background()

	t.Run("a KDC that ignores PA-FOR-USER", func(t *testing.T) {
		te, addr := startTee(t, r.KDCs[0])
		te.rewriteReq = func(req []byte) []byte {
			tgs, ok := isS4U2Self(req)
			if !ok {
				return req
			}
			// Without PA-FOR-USER the KDC issues the proxy a ticket for
			// itself; the body, and so the authenticator's checksum, stay.
			tgs.PAData = slices.DeleteFunc(tgs.PAData, func(pa types.PAData) bool { return pa.PADataType == patype.PA_FOR_USER })
			b, err := tgs.Marshal()
			if err != nil {
				t.Error(err)
				return req
			}
			return b
		}
		d := newDelegator(t, r, func(c *Config) { c.KDCs = []string{addr} })
		_, err := d.Negotiate(ctx, r.User)
		var e *Error
		if !errors.As(err, &e) || e.Kind != ErrProtocol || e.Step != StepS4U2Self || e.HTTPStatus() != 502 || !strings.Contains(err.Error(), "ignored PA-FOR-USER") {
			t.Fatalf("error %v, want the S4U2Self check to refuse a ticket for the proxy itself", err)
		}
	})

	t.Run("another user's S4U2Self ticket in a fresh reply", func(t *testing.T) {
		// The ticket and client name are outside the reply's encrypted
		// part: an attacker on the path could pass an older ticket of
		// another user off as this one.
		te, addr := startTee(t, r.KDCs[0])
		var first *messages.TGSRep
		te.rewriteRep = func(req, rep []byte) []byte {
			if _, ok := isS4U2Self(req); !ok {
				return rep
			}
			var cur messages.TGSRep
			if err := cur.Unmarshal(rep); err != nil {
				return rep
			}
			if first == nil {
				first = &cur
				return rep
			}
			cur.Ticket, cur.CName, cur.CRealm = first.Ticket, first.CName, first.CRealm
			b, err := cur.Marshal()
			if err != nil {
				t.Error(err)
				return rep
			}
			return b
		}
		d := newDelegator(t, r, func(c *Config) { c.KDCs = []string{addr} })
		if _, err := d.Negotiate(ctx, r.User); err != nil {
			t.Fatal(err)
		}
		_, err := d.Negotiate(ctx, r.AddUser(t, "oscar"))
		var e *Error
		if !errors.As(err, &e) || e.Kind != ErrProtocol || e.HTTPStatus() != 502 || !strings.Contains(err.Error(), "not the one its reply was issued with") {
			t.Fatalf("error %v, want the swapped ticket refused", err)
		}
	})

	t.Run("another user's reply replayed", func(t *testing.T) {
		te, addr := startTee(t, r.KDCs[0])
		var first []byte
		te.rewriteRep = func(req, rep []byte) []byte {
			if _, ok := isS4U2Self(req); !ok {
				return rep
			}
			if first == nil {
				first = rep
				return rep
			}
			return first
		}
		d := newDelegator(t, r, func(c *Config) { c.KDCs = []string{addr} })
		if _, err := d.Negotiate(ctx, r.User); err != nil {
			t.Fatal(err)
		}
		_, err := d.Negotiate(ctx, r.AddUser(t, "mallory"))
		var e *Error
		if !errors.As(err, &e) || e.Kind != ErrProtocol || e.HTTPStatus() != 502 || !strings.Contains(err.Error(), "nonce") {
			t.Fatalf("error %v, want a nonce mismatch", err)
		}
	})
}

// TestConcurrentUsersGetTheirOwnTickets: many users at once, each header
// authenticates its own user at Exchange.
func TestConcurrentUsersGetTheirOwnTickets(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *kdctest.Realm) {
		d := newDelegator(t, r, nil)
		names := []string{"user1", "user2", "user3", "user4", "user5"}
		if r.Kind == "samba" { // Samba's users live as long as the test binary
			for i := range names {
				names[i] += "c"
			}
		}
		upns := make([]string, len(names))
		for i, n := range names {
			upns[i] = r.AddUser(t, n)
		}
		var wg sync.WaitGroup
		for round := range 4 {
			for i := range upns {
				wg.Go(func() {
					h, err := d.Negotiate(context.Background(), upns[i])
					if err != nil {
						t.Error(err)
						return
					}
					creds, err := exchange(t, r, h)
					if err != nil {
						t.Errorf("round %d, %s: %v", round, names[i], err)
						return
					}
					if got := creds.UserName(); !strings.EqualFold(got, names[i]) && !strings.EqualFold(got, upns[i]) {
						t.Errorf("%s's header authenticates %s", names[i], got)
					}
				})
			}
		}
		wg.Wait()
	})
}

// TestCacheIsBounded: a full cache evicts, and not on every new user.
func TestCacheIsBounded(t *testing.T) {
	for _, max := range []int{100, 3000} {
		d := &Delegator{cfg: Config{MaxEntries: max}, tickets: map[string]*cacheEntry{}, sweepAt: 1024}
		now := time.Now()
		sweeps, last := 0, 0
		for i := range 10 * max {
			d.store(fmt.Sprint("user", i), &cacheEntry{refresh: now.Add(time.Hour)}, now)
			if len(d.tickets) > max {
				t.Fatalf("%d entries, max %d", len(d.tickets), max)
			}
			if len(d.tickets) < last {
				sweeps++
			}
			last = len(d.tickets)
		}
		if sweeps > 100 {
			t.Errorf("%d sweeps for %d users into %d places; want about one per tenth", sweeps, 10*max, max)
		}
	}
}

// TestStrongMappingBySID: a certificate's SID (AD's strong mapping) must be
// the SID in the user's PAC; without a PAC it cannot be checked.
func TestStrongMappingBySID(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *kdctest.Realm) {
		d := newDelegator(t, r, nil)
		ctx := context.Background()
		wantMismatch := func(err error) {
			t.Helper()
			var e *Error
			if !errors.As(err, &e) || e.Kind != ErrSIDMismatch || e.HTTPStatus() != 403 {
				t.Errorf("error %v, want ErrSIDMismatch with 403", err)
			}
		}
		if r.Kind == "heimdal" { // no PAC
			_, err := d.NegotiateSID(ctx, r.User, "S-1-5-21-1-2-3-1104")
			wantMismatch(err)
			if err == nil || !strings.Contains(err.Error(), "no PAC") {
				t.Errorf("error %v does not say there is no PAC", err)
			}
			return
		}
		alice, bob := r.UserSID(t, "alice"), r.UserSID(t, "bob")
		h, err := d.NegotiateSID(ctx, r.User, alice)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := exchange(t, r, h); err != nil {
			t.Fatal(err)
		}
		// From the cache too: Bob's SID with Alice's UPN is refused.
		_, err = d.NegotiateSID(ctx, r.User, bob)
		wantMismatch(err)

		// Through the certificate delegator and its policies.
		ca, err := testca.NewCA()
		if err != nil {
			t.Fatal(err)
		}
		cert := func(sid string) *x509.Certificate {
			tc, err := ca.IssueClient(pkix.Name{CommonName: "Alice"}, r.User, sid)
			if err != nil {
				t.Fatal(err)
			}
			return tc.Leaf
		}
		mapper, err := NewIdentityMapper([]string{SourceUPN}, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			policy, sid string
			want        error
		}{
			{"", alice, nil},
			{"", "", nil},
			{"", bob, ErrSIDMismatch},
			{SIDRequire, alice, nil},
			{SIDRequire, "", ErrNoIdentity},
			{SIDRequire, bob, ErrSIDMismatch},
			{SIDOff, bob, nil},
			{"", "s-1-5-21-1-2", ErrSIDMismatch}, // present but malformed
			{SIDOff, "s-1-5-21-1-2", nil},
		} {
			cd := &CertificateDelegator{Identity: mapper, KCD: d, SID: tc.policy}
			_, err := cd.Authorization(ctx, cert(tc.sid))
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("policy %q, certificate SID %q: error %v, want %v", tc.policy, tc.sid, err, tc.want)
			}
		}
	})
}

// TestAuthenticatorIsAGSSInitiators: what gokrb5's service side does not
// check, Windows does: the authenticator carries the GSS-API checksum
// (type 0x8003: no channel bindings, integrity and confidentiality), names
// the delegated user in the ticket's realm, and its time is now.
func TestAuthenticatorIsAGSSInitiators(t *testing.T) {
	r := kdctest.Heimdal(t)
	d := newDelegator(t, r, nil)
	h, err := d.Negotiate(context.Background(), r.User)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(h, "Negotiate "))
	var tok spnego.SPNEGOToken
	if err := tok.Unmarshal(raw); err != nil {
		t.Fatal(err)
	}
	var mech spnego.KRB5Token
	if err := mech.Unmarshal(tok.NegTokenInit.MechTokenBytes); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	var st *serviceTicket
	for _, e := range d.tickets {
		st = e.ticket
	}
	d.mu.Unlock()
	if err := mech.APReq.DecryptAuthenticator(st.cred.key); err != nil {
		t.Fatal(err)
	}
	a := mech.APReq.Authenticator
	want := make([]byte, 24)
	want[0], want[20] = 16, 0x30 // Lgth 16; flags integ (0x20) | conf (0x10)
	if a.Cksum.CksumType != 0x8003 || !bytes.Equal(a.Cksum.Checksum, want) {
		t.Errorf("checksum type %#x %x, want 0x8003 %x", a.Cksum.CksumType, a.Cksum.Checksum, want)
	}
	if !a.CName.Equal(st.cred.cname) || a.CRealm != st.cred.crealm {
		t.Errorf("authenticator names %v@%s, the ticket %v@%s", a.CName, a.CRealm, st.cred.cname, st.cred.crealm)
	}
	if at := a.CTime.Add(time.Duration(a.Cusec) * time.Microsecond); time.Since(at).Abs() > time.Minute {
		t.Errorf("authenticator time %v", at)
	}
}

package kdctest

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jcmturner/gofork/encoding/asn1"
	"github.com/jcmturner/goidentity/v6"
	"github.com/jcmturner/gokrb5/v8/client"
	"github.com/jcmturner/gokrb5/v8/config"
	"github.com/jcmturner/gokrb5/v8/credentials"
	"github.com/jcmturner/gokrb5/v8/crypto/rfc4757"
	"github.com/jcmturner/gokrb5/v8/iana/chksumtype"
	"github.com/jcmturner/gokrb5/v8/iana/errorcode"
	"github.com/jcmturner/gokrb5/v8/iana/flags"
	"github.com/jcmturner/gokrb5/v8/iana/keyusage"
	"github.com/jcmturner/gokrb5/v8/iana/nametype"
	"github.com/jcmturner/gokrb5/v8/iana/patype"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/service"
	"github.com/jcmturner/gokrb5/v8/spnego"
	"github.com/jcmturner/gokrb5/v8/types"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

// eachKDC runs f against a Heimdal KDC and against the Samba DC.
func eachKDC(t *testing.T, f func(t *testing.T, r *Realm)) {
	t.Run("heimdal", func(t *testing.T) {
		t.Parallel()
		f(t, Heimdal(t))
	})
	t.Run("samba", func(t *testing.T) {
		t.Parallel()
		f(t, Samba(t))
	})
}

func clientConfig(t testing.TB, r *Realm) *config.Config {
	t.Helper()
	cfg, err := config.NewFromString(r.Krb5Conf)
	if err != nil {
		t.Fatalf("Krb5Conf: %v\n%s", err, r.Krb5Conf)
	}
	return cfg
}

func TestProxyLogin(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *Realm) {
		for _, p := range []struct {
			name string
			kt   *keytab.Keytab
		}{{r.ProxyPrincipal, r.ProxyKeytab}, {r.UntrustedProxyPrincipal, r.UntrustedProxyKeytab}} {
			as0, tgs0 := r.Requests()
			cl := client.NewWithKeytab(p.name, r.Name, p.kt, clientConfig(t, r), client.DisablePAFXFAST(true))
			if err := cl.Login(); err != nil {
				t.Fatalf("login as %s with its keytab: %v", p.name, err)
			}
			cl.Destroy()
			as, tgs := r.Requests()
			// Without pre-authentication first, answered PREAUTH_REQUIRED,
			// then with it.
			if as-as0 != 2 || tgs != tgs0 {
				t.Errorf("login as %s: the KDC saw %d AS-REQs and %d TGS-REQs, want 2 and 0", p.name, as-as0, tgs-tgs0)
			}
		}
		if errs := r.relay.kdcErrors(); !slices.Equal(errs, []int32{errorcode.KDC_ERR_PREAUTH_REQUIRED, errorcode.KDC_ERR_PREAUTH_REQUIRED}) {
			t.Errorf("KDC errors %v, want two PREAUTH_REQUIRED (25)", errs)
		}
	})
}

func TestUserPasswordLogin(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *Realm) {
		cl := client.NewWithPassword(r.UserPrincipal, r.Name, r.UserPassword, clientConfig(t, r), client.DisablePAFXFAST(true))
		if err := cl.Login(); err != nil {
			t.Fatalf("login as %s: %v", r.UserPrincipal, err)
		}
		cl.Destroy()
		bad := client.NewWithPassword(r.UserPrincipal, r.Name, "wrong"+r.UserPassword, clientConfig(t, r), client.DisablePAFXFAST(true))
		if err := bad.Login(); err == nil {
			t.Fatal("login with a wrong password succeeded")
		}
		// The disabled user: refused after pre-authentication.
		disabled := strings.TrimSuffix(r.DisabledUser, "@"+DNSDomain)
		dora := client.NewWithPassword(disabled, r.Name, r.UserPassword, clientConfig(t, r), client.DisablePAFXFAST(true))
		if err := dora.Login(); err == nil {
			t.Errorf("login as the disabled user %s succeeded", disabled)
		}
		want := map[string]int32{"heimdal": errorcode.KDC_ERR_POLICY, "samba": errorcode.KDC_ERR_CLIENT_REVOKED}[r.Kind]
		if errs := r.relay.kdcErrors(); len(errs) < 2 || !slices.Equal(errs[len(errs)-2:], []int32{errorcode.KDC_ERR_PREAUTH_REQUIRED, want}) {
			t.Errorf("login as the disabled user %s: KDC errors %v, want PREAUTH_REQUIRED (25) then %d", disabled, errs, want)
		}
		if as, _ := r.Requests(); as != 6 {
			t.Errorf("the KDC saw %d AS-REQs, want 6", as)
		}
	})
}

// TestExchangeVerifiesServiceTicket: a ticket for ExchangeSPN, presented as
// SPNEGO, is accepted by gokrb5's service side with ExchangeKeytab.
func TestExchangeVerifiesServiceTicket(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *Realm) {
		cl := client.NewWithPassword(r.UserPrincipal, r.Name, r.UserPassword, clientConfig(t, r), client.DisablePAFXFAST(true))
		if err := cl.Login(); err != nil {
			t.Fatal(err)
		}
		defer cl.Destroy()
		tkt, key, err := cl.GetServiceTicket(r.ExchangeSPN)
		if err != nil {
			t.Fatal(err)
		}
		if _, tgs := r.Requests(); tgs != 1 {
			t.Errorf("the KDC saw %d TGS-REQs, want 1", tgs)
		}
		if user := exchangeAccepts(t, r, cl, tkt, key); user != r.UserPrincipal+"@"+r.Name {
			t.Errorf("Exchange sees %q, want %s@%s", user, r.UserPrincipal, r.Name)
		}
		// A ticket for another service is refused.
		other, otherKey, err := cl.GetServiceTicket(r.OtherSPN)
		if err != nil {
			t.Fatal(err)
		}
		if user := exchangeAccepts(t, r, cl, other, otherKey); user != "" {
			t.Errorf("Exchange accepted a ticket for %s as %s", r.OtherSPN, user)
		}
	})
}

// exchangeAccepts presents tkt to an Exchange stand-in (gokrb5's SPNEGO
// service side with ExchangeKeytab) and returns the user it authenticated
// ("name@REALM"), or "" if it refused. The authenticator names cl's user.
func exchangeAccepts(t *testing.T, r *Realm, cl *client.Client, tkt messages.Ticket, key types.EncryptionKey) string {
	t.Helper()
	tok, err := spnego.NewNegTokenInitKRB5(cl, tkt, key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := (&spnego.SPNEGOToken{Init: true, NegTokenInit: tok}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var user string
	h := spnego.SPNEGOKRB5Authenticate(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		id := goidentity.FromHTTPRequestContext(req)
		user = id.UserName() + "@" + id.Domain()
	}), r.ExchangeKeytab, service.MaxClockSkew(time.Minute), service.Logger(log.New(testWriter{t}, "", 0)))
	req := httptest.NewRequest("GET", "http://exchange.corp.example.test/EWS/Exchange.asmx", nil)
	req.Header.Set("Authorization", "Negotiate "+base64.StdEncoding.EncodeToString(b))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if (rec.Code == http.StatusOK) != (user != "") {
		t.Fatalf("Exchange answered %d, user %q", rec.Code, user)
	}
	return user
}

// testWriter sends gokrb5's service log to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// heimdalTools runs Heimdal's client programs against a realm: an
// independent S4U client (kgetcred) to check the KDC setup.
type heimdalTools struct {
	t   *testing.T
	r   *Realm
	dir string
}

func newHeimdalTools(t *testing.T, r *Realm) *heimdalTools {
	t.Helper()
	for _, tool := range []string{"kinit.heimdal", "kgetcred"} {
		if HeimdalTool(tool) == "" {
			unavailable(t, fmt.Errorf("kdctest: Heimdal's %s is not installed: run scripts/install-heimdal.sh", tool))
		}
	}
	return &heimdalTools{t: t, r: r, dir: t.TempDir()}
}

// run runs a tool with the proxy's credentials cache ccache and returns its
// output and whether it succeeded.
func (h *heimdalTools) run(ccache, tool string, args ...string) (string, bool) {
	h.t.Helper()
	cmd := exec.Command(HeimdalTool(tool), args...)
	cmd.Env = append(os.Environ(), "KRB5_CONFIG="+h.r.Krb5ConfPath, "KRB5CCNAME=FILE:"+filepath.Join(h.dir, ccache))
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			h.t.Fatal(err)
		}
	}
	return strings.TrimSpace(string(out)), err == nil
}

// kinit gets a TGT for principal with its keytab into the cache named ccache.
func (h *heimdalTools) kinit(ccache, principal, keytabPath string) {
	h.t.Helper()
	if out, ok := h.run(ccache, "kinit.heimdal", "-k", "-t", keytabPath, principal+"@"+h.r.Name); !ok {
		h.t.Fatalf("kinit %s: %s", principal, out)
	}
}

// s4u2self asks for a ticket to the proxy itself in the user's name, into
// the cache named out, and returns it (nil if the KDC refused).
func (h *heimdalTools) s4u2self(ccache, proxy, user, out string) *credentials.Credential {
	h.t.Helper()
	msg, ok := h.run(ccache, "kgetcred", "--forwardable", "--impersonate="+user+"@"+h.r.Name,
		"--out-cache=FILE:"+filepath.Join(h.dir, out), proxy+"@"+h.r.Name)
	if !ok {
		h.t.Logf("S4U2Self for %s: %s", user, msg)
		return nil
	}
	return h.cred(out, proxy)
}

// s4u2proxy asks for a ticket to spn with the S4U2Self ticket in the cache
// named evidence, into the cache named out, and returns it (nil if the KDC
// refused).
func (h *heimdalTools) s4u2proxy(ccache, evidence, spn, out string) *credentials.Credential {
	h.t.Helper()
	msg, ok := h.run(ccache, "kgetcred", "--delegation-credential-cache=FILE:"+filepath.Join(h.dir, evidence),
		"--out-cache=FILE:"+filepath.Join(h.dir, out), spn+"@"+h.r.Name)
	if !ok {
		h.t.Logf("S4U2Proxy to %s: %s", spn, msg)
		return nil
	}
	return h.cred(out, spn)
}

// cred reads the ticket for server from the cache named ccache.
func (h *heimdalTools) cred(ccache, server string) *credentials.Credential {
	h.t.Helper()
	cc, err := credentials.LoadCCache(filepath.Join(h.dir, ccache))
	if err != nil {
		h.t.Fatal(err)
	}
	c, ok := cc.GetEntry(types.NewPrincipalName(nametype.KRB_NT_PRINCIPAL, server))
	if !ok {
		h.t.Fatalf("no ticket for %s in %s", server, ccache)
	}
	return c
}

func forwardable(c *credentials.Credential) bool {
	return types.IsFlagSet(&c.TicketFlags, flags.Forwardable)
}

// describe summarises a ticket from kgetcred for failure messages.
func describe(c *credentials.Credential) string {
	if c == nil {
		return "no ticket (the KDC refused)"
	}
	return fmt.Sprintf("a ticket for %s to %s, forwardable %v", c.Client.PrincipalName.PrincipalNameString(),
		c.Server.PrincipalName.PrincipalNameString(), forwardable(c))
}

// TestDelegation checks the KDCs' constrained delegation setup with
// Heimdal's kgetcred (S4U2Self, then S4U2Proxy), the positive case down to
// Exchange's SPNEGO check, and every negative case with its error code.
func TestDelegation(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *Realm) {
		h := newHeimdalTools(t, r)
		h.kinit("proxy", r.ProxyPrincipal, r.ProxyKeytabPath)
		lastError := func() int32 {
			errs := r.relay.kdcErrors()
			if len(errs) == 0 {
				return 0
			}
			return errs[len(errs)-1]
		}

		// alice: a forwardable S4U2Self ticket, then a ticket for Exchange
		// in her name that Exchange accepts.
		self := h.s4u2self("proxy", r.ProxyPrincipal, r.UserPrincipal, "alice-self")
		if self == nil || !forwardable(self) {
			t.Fatalf("S4U2Self for %s: want a forwardable ticket, got %s", r.UserPrincipal, describe(self))
		}
		_, tgs0 := r.Requests()
		c := h.s4u2proxy("proxy", "alice-self", r.ExchangeSPN, "alice-exchange")
		if c == nil {
			t.Fatalf("S4U2Proxy to %s for %s failed", r.ExchangeSPN, r.UserPrincipal)
		}
		if _, tgs := r.Requests(); tgs != tgs0+1 {
			t.Errorf("S4U2Proxy took %d TGS-REQs, want 1", tgs-tgs0)
		}
		var tkt messages.Ticket
		if err := tkt.Unmarshal(c.Ticket); err != nil {
			t.Fatal(err)
		}
		if err := tkt.DecryptEncPart(r.ExchangeKeytab, nil); err != nil {
			t.Fatalf("ExchangeKeytab does not decrypt the delegated ticket: %v", err)
		}
		if got := tkt.DecryptedEncPart.CName.PrincipalNameString(); got != r.UserPrincipal || tkt.DecryptedEncPart.CRealm != r.Name {
			t.Errorf("the delegated ticket names %s@%s, want %s@%s", got, tkt.DecryptedEncPart.CRealm, r.UserPrincipal, r.Name)
		}
		if tkt.EncPart.EType != 18 {
			t.Errorf("the delegated ticket's enctype is %d, want 18 (aes256-cts-hmac-sha1-96)", tkt.EncPart.EType)
		}
		// The authenticator must name the user, as the ticket does.
		asUser := client.NewWithPassword(r.UserPrincipal, r.Name, "unused", clientConfig(t, r))
		if user := exchangeAccepts(t, r, asUser, tkt, c.Key); user != r.UserPrincipal+"@"+r.Name {
			t.Errorf("Exchange sees %q, want %s@%s", user, r.UserPrincipal, r.Name)
		}

		// Not in the delegation list.
		if c := h.s4u2proxy("proxy", "alice-self", r.OtherSPN, "alice-other"); c != nil {
			t.Errorf("S4U2Proxy to %s (not in the delegation list) succeeded", r.OtherSPN)
		} else if code := lastError(); code != errorcode.KDC_ERR_BADOPTION {
			t.Errorf("S4U2Proxy to %s: KDC error %d, want KDC_ERR_BADOPTION (13)", r.OtherSPN, code)
		}

		// The sensitive user: S4U2Self works, but its ticket is not
		// forwardable, so S4U2Proxy fails.
		sensitive := strings.TrimSuffix(r.SensitiveUser, "@"+DNSDomain)
		self = h.s4u2self("proxy", r.ProxyPrincipal, sensitive, "bob-self")
		if self == nil || forwardable(self) {
			t.Fatalf("S4U2Self for %s (sensitive): want a ticket that is not forwardable, got %s", sensitive, describe(self))
		}
		if c := h.s4u2proxy("proxy", "bob-self", r.ExchangeSPN, "bob-exchange"); c != nil {
			t.Errorf("S4U2Proxy for the sensitive user %s succeeded", sensitive)
		} else if code := lastError(); code != errorcode.KDC_ERR_BADOPTION {
			t.Errorf("S4U2Proxy for %s: KDC error %d, want KDC_ERR_BADOPTION (13)", sensitive, code)
		}

		// The untrusted proxy: no protocol transition.
		h.kinit("untrusted", r.UntrustedProxyPrincipal, r.UntrustedProxyKeytabPath)
		self = h.s4u2self("untrusted", r.UntrustedProxyPrincipal, r.UserPrincipal, "untrusted-self")
		if self == nil || forwardable(self) {
			t.Fatalf("S4U2Self by %s: want a ticket that is not forwardable, got %s", r.UntrustedProxyPrincipal, describe(self))
		}
		if c := h.s4u2proxy("untrusted", "untrusted-self", r.ExchangeSPN, "untrusted-exchange"); c != nil {
			t.Errorf("S4U2Proxy by %s succeeded", r.UntrustedProxyPrincipal)
		} else if code := lastError(); code != errorcode.KDC_ERR_BADOPTION {
			t.Errorf("S4U2Proxy by %s: KDC error %d, want KDC_ERR_BADOPTION (13)", r.UntrustedProxyPrincipal, code)
		}

		// S4U2Self by enterprise name (the UPN), as the proxy asks: a
		// forwardable ticket that names the user by that enterprise name.
		rep, code := s4u2selfByUPN(t, r, r.User)
		if rep == nil {
			t.Errorf("S4U2Self for %s by enterprise name: KDC error %d, want a ticket", r.User, code)
		} else {
			if rep.CName.NameType != nametype.KRB_NT_ENTERPRISE || !slices.Equal(rep.CName.NameString, []string{r.User}) {
				t.Errorf("S4U2Self for %s by enterprise name: the ticket names %+v, want the enterprise name", r.User, rep.CName)
			}
			if !types.IsFlagSet(&rep.DecryptedEncPart.Flags, flags.Forwardable) {
				t.Errorf("S4U2Self for %s by enterprise name: the ticket is not forwardable", r.User)
			}
		}

		// The disabled user: S4U2Self is refused, by name and by
		// enterprise name, with KDC_ERR_POLICY on both KDCs (Samba 4.17
		// answers KDC_ERR_CLIENT_REVOKED to an AS-REQ only).
		disabled := strings.TrimSuffix(r.DisabledUser, "@"+DNSDomain)
		if self := h.s4u2self("proxy", r.ProxyPrincipal, disabled, "dora-self"); self != nil {
			t.Errorf("S4U2Self for the disabled user %s: got %s", disabled, describe(self))
		} else if code := lastError(); code != errorcode.KDC_ERR_POLICY {
			t.Errorf("S4U2Self for the disabled user %s: KDC error %d, want KDC_ERR_POLICY (12)", disabled, code)
		}
		if rep, code := s4u2selfByUPN(t, r, r.DisabledUser); rep != nil {
			t.Errorf("S4U2Self for the disabled user %s by enterprise name: got a ticket", r.DisabledUser)
		} else if code != errorcode.KDC_ERR_POLICY {
			t.Errorf("S4U2Self for the disabled user %s by enterprise name: KDC error %d, want KDC_ERR_POLICY (12)", r.DisabledUser, code)
		}

		// An unknown user.
		if self := h.s4u2self("proxy", r.ProxyPrincipal, "nobody", "nobody-self"); self != nil {
			t.Error("S4U2Self for an unknown user succeeded")
		} else if code := lastError(); code != errorcode.KDC_ERR_C_PRINCIPAL_UNKNOWN && code != errorcode.KDC_ERR_S_PRINCIPAL_UNKNOWN {
			t.Errorf("S4U2Self for an unknown user: KDC error %d, want a PRINCIPAL_UNKNOWN", code)
		}
		t.Logf("KDC errors seen: %v", r.relay.kdcErrors())
	})
}

func TestAddUser(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *Realm) {
		name := fmt.Sprintf("carol%d", time.Now().UnixNano()%1e6)
		if upn := r.AddUser(t, name); upn != name+"@corp.example.test" {
			t.Errorf("AddUser returned %q", upn)
		}
		cl := client.NewWithPassword(name, r.Name, r.UserPassword, clientConfig(t, r), client.DisablePAFXFAST(true))
		if err := cl.Login(); err != nil {
			t.Fatalf("login as the new user: %v", err)
		}
		cl.Destroy()
		h := newHeimdalTools(t, r)
		h.kinit("proxy", r.ProxyPrincipal, r.ProxyKeytabPath)
		self := h.s4u2self("proxy", r.ProxyPrincipal, name, "self")
		if self == nil || !forwardable(self) {
			t.Fatalf("S4U2Self for the new user: want a forwardable ticket, got %s", describe(self))
		}
		if h.s4u2proxy("proxy", "self", r.ExchangeSPN, "exchange") == nil {
			t.Fatal("S4U2Proxy for the new user failed")
		}
	})
}

// s4u2selfByUPN asks, as the proxy (with gokrb5 for the AS exchange), for
// an S4U2Self ticket to itself in the name of upn as an enterprise name
// (name type 10), as the proxy does: kgetcred --impersonate names the user
// as an NT-PRINCIPAL only. It returns the reply, or nil and the KRB-ERROR
// code the KDC answered.
func s4u2selfByUPN(t *testing.T, r *Realm, upn string) (*messages.TGSRep, int32) {
	t.Helper()
	cfg := clientConfig(t, r)
	cl := client.NewWithKeytab(r.ProxyPrincipal, r.Name, r.ProxyKeytab, cfg, client.DisablePAFXFAST(true))
	defer cl.Destroy()
	proxy := types.NewPrincipalName(nametype.KRB_NT_PRINCIPAL, r.ProxyPrincipal)
	asReq, err := messages.NewASReqForTGT(r.Name, cfg, proxy)
	if err != nil {
		t.Fatal(err)
	}
	asRep, err := cl.ASExchange(r.Name, asReq, 0)
	if err != nil {
		t.Fatalf("login as %s: %v", r.ProxyPrincipal, err)
	}
	key := asRep.DecryptedEncPart.Key
	req, err := messages.NewTGSReq(proxy, r.Name, cfg, asRep.Ticket, key, proxy, false)
	if err != nil {
		t.Fatal(err)
	}
	// PA-FOR-USER (MS-SFU 2.2.1): its checksum (HMAC-MD5, whatever the
	// key's type) covers the name type, the name, the realm and
	// "Kerberos".
	user := types.PrincipalName{NameType: nametype.KRB_NT_ENTERPRISE, NameString: []string{upn}}
	data := binary.LittleEndian.AppendUint32(nil, uint32(user.NameType))
	data = append(append(append(data, upn...), r.Name...), "Kerberos"...)
	sum, err := rfc4757.Checksum(key.KeyValue, keyusage.KERB_NON_KERB_CKSUM_SALT, data)
	if err != nil {
		t.Fatal(err)
	}
	forUser, err := asn1.Marshal(struct {
		UserName    types.PrincipalName `asn1:"explicit,tag:0"`
		UserRealm   string              `asn1:"generalstring,explicit,tag:1"`
		Cksum       types.Checksum      `asn1:"explicit,tag:2"`
		AuthPackage string              `asn1:"generalstring,explicit,tag:3"`
	}{user, r.Name, types.Checksum{CksumType: chksumtype.KERB_CHECKSUM_HMAC_MD5, Checksum: sum}, "Kerberos"})
	if err != nil {
		t.Fatal(err)
	}
	req.PAData = append(req.PAData, types.PAData{PADataType: patype.PA_FOR_USER, PADataValue: forUser})
	b, err := req.Marshal()
	if err != nil {
		t.Fatal(err)
	}

	c, err := net.Dial("tcp", r.KDCs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(frame(b)); err != nil {
		t.Fatal(err)
	}
	reply, err := readFrame(c)
	if err != nil {
		t.Fatalf("S4U2Self for %s: %v", upn, err)
	}
	reply = reply[4:]
	if len(reply) > 0 && reply[0] == 0x7e {
		var e messages.KRBError
		if err := e.Unmarshal(reply); err != nil {
			t.Fatal(err)
		}
		t.Logf("S4U2Self for %s (enterprise name): %s", upn, e.Error())
		return nil, e.ErrorCode
	}
	var rep messages.TGSRep
	if err := rep.Unmarshal(reply); err != nil {
		t.Fatal(err)
	}
	if err := rep.DecryptEncPart(key); err != nil {
		t.Fatal(err)
	}
	return &rep, 0
}

// TestUserSID: on Samba, UserSID is the SID the KDC puts in the PAC of the
// user's tickets (logon domain SID + user RID), for the cast's users and
// AddUser's; on Heimdal it skips, and the tickets carry no PAC.
func TestUserSID(t *testing.T) {
	eachKDC(t, func(t *testing.T, r *Realm) {
		name := fmt.Sprintf("erin%d", time.Now().UnixNano()%1e6)
		r.AddUser(t, name)
		if r.Kind == "heimdal" {
			if sid, ok := pacUserSID(t, r, r.UserPrincipal); ok {
				t.Errorf("Heimdal's ticket for %s carries a PAC (user SID %s)", r.UserPrincipal, sid)
			}
			var returned bool
			skipped := t.Run("skips", func(t *testing.T) {
				r.UserSID(t, r.UserPrincipal)
				returned = true
			})
			if returned || !skipped {
				t.Error("UserSID on Heimdal did not skip the test")
			}
			return
		}

		alice := r.UserSID(t, r.UserPrincipal)
		if r.UserSID(t, r.User) != alice {
			t.Errorf("UserSID(%s) != UserSID(%s)", r.User, r.UserPrincipal)
		}
		domain := alice[:strings.LastIndex(alice, "-")]
		seen := map[string]string{}
		for _, u := range []string{r.UserPrincipal, "bob", "dora", name, r.ProxyPrincipal} {
			sid := r.UserSID(t, u)
			t.Logf("UserSID(%s) = %s", u, sid)
			if !strings.HasPrefix(sid, "S-1-5-21-") || strings.Count(sid, "-") != 7 || !strings.HasPrefix(sid, domain+"-") {
				t.Errorf("UserSID(%s) = %q, want S-1-5-21-a-b-c-RID in the domain %s", u, sid, domain)
			}
			if other, dup := seen[sid]; dup {
				t.Errorf("%s and %s have the same SID %s", other, u, sid)
			}
			seen[sid] = u
		}
		for _, u := range []string{r.UserPrincipal, name} {
			got, ok := pacUserSID(t, r, u)
			if !ok {
				t.Fatalf("Samba's ticket for %s carries no PAC", u)
			}
			if want := r.UserSID(t, u); got != want {
				t.Errorf("the PAC of %s's ticket gives the SID %s, UserSID %s", u, got, want)
			} else {
				t.Logf("the PAC of %s's ticket for %s: SID %s", u, r.ExchangeSPN, got)
			}
		}
	})
}

// pacUserSID logs in as user with UserPassword, gets a ticket for
// ExchangeSPN, decrypts it with ExchangeKeytab and returns the user's SID
// from its PAC (KERB_VALIDATION_INFO: LogonDomainID, then UserID as the
// RID), and false if the ticket has no PAC.
func pacUserSID(t *testing.T, r *Realm, user string) (string, bool) {
	t.Helper()
	cl := client.NewWithPassword(user, r.Name, r.UserPassword, clientConfig(t, r), client.DisablePAFXFAST(true))
	if err := cl.Login(); err != nil {
		t.Fatalf("login as %s: %v", user, err)
	}
	defer cl.Destroy()
	tkt, _, err := cl.GetServiceTicket(r.ExchangeSPN)
	if err != nil {
		t.Fatal(err)
	}
	if err := tkt.DecryptEncPart(r.ExchangeKeytab, nil); err != nil {
		t.Fatalf("ExchangeKeytab does not decrypt %s's ticket: %v", user, err)
	}
	spn := types.NewPrincipalName(nametype.KRB_NT_PRINCIPAL, r.ExchangeSPN)
	isPAC, p, err := tkt.GetPACType(r.ExchangeKeytab, &spn, log.New(testWriter{t}, "", 0))
	if err != nil {
		t.Fatalf("the PAC of %s's ticket: %v", user, err)
	}
	if !isPAC {
		return "", false
	}
	v := p.KerbValidationInfo
	if v == nil {
		t.Fatalf("the PAC of %s's ticket has no KERB_VALIDATION_INFO", user)
	}
	if got := v.EffectiveName.Value; !strings.EqualFold(got, strings.TrimSuffix(user, "@"+DNSDomain)) {
		t.Errorf("the PAC of %s's ticket names %q", user, got)
	}
	return v.LogonDomainID.String() + "-" + strconv.FormatUint(uint64(v.UserID), 10), true
}

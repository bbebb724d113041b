package ewssim

import (
	"bytes"
	"encoding/base64"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jcmturner/gokrb5/v8/client"
	"github.com/jcmturner/gokrb5/v8/config"
	"github.com/jcmturner/gokrb5/v8/iana/etypeID"
	"github.com/jcmturner/gokrb5/v8/iana/nametype"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/spnego"
	"github.com/jcmturner/gokrb5/v8/types"
)

const (
	testRealm = "EXAMPLE.COM"
	testSPN   = "HTTP/mail.example.com"
)

// serviceKeytab is the keytab Exchange's service account would have.
func serviceKeytab(t testing.TB, password string) *keytab.Keytab {
	t.Helper()
	kt := keytab.New()
	if err := kt.AddEntry(testSPN, testRealm, password, time.Now(), 1, etypeID.AES256_CTS_HMAC_SHA1_96); err != nil {
		t.Fatal(err)
	}
	return kt
}

// negotiateHeader forges what a KDC would have issued to user for testSPN,
// encrypted with kt's key, and wraps the AP-REQ as a client's SPNEGO
// NegTokenInit, without any KDC.
func negotiateHeader(t testing.TB, kt *keytab.Keytab, user, realm string) string {
	t.Helper()
	cl := client.NewWithPassword(user, realm, "unused", config.New())
	sname := types.NewPrincipalName(nametype.KRB_NT_SRV_INST, testSPN)
	now := time.Now().UTC()
	tkt, key, err := messages.NewTicket(cl.Credentials.CName(), realm, sname, testRealm, types.NewKrbFlags(), kt,
		etypeID.AES256_CTS_HMAC_SHA1_96, 1, now, now, now.Add(10*time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	init, err := spnego.NewNegTokenInitKRB5(cl, tkt, key)
	if err != nil {
		t.Fatal(err)
	}
	tok := spnego.SPNEGOToken{Init: true, NegTokenInit: init}
	b, err := tok.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return "Negotiate " + base64.StdEncoding.EncodeToString(b)
}

// ewsWith posts a GetFolder with the given Authorization header.
func ewsWith(t testing.TB, ts *TestServer, authorization string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, ts.EWSURL, bytes.NewReader(soapRequest(getInboxOp)))
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	return do(t, req)
}

func basicHeader(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

func TestChallengeLikeIIS(t *testing.T) {
	for _, tc := range []struct{ realm, want string }{
		{"", `Basic realm="127.0.0.1"`},
		{"mail.example.com", `Basic realm="mail.example.com"`},
	} {
		ts := Start(t, Config{Users: testUsers(), Realm: tc.realm})
		resp, body := ewsWith(t, ts, "")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("no credentials: HTTP %d", resp.StatusCode)
		}
		want := []string{"Negotiate", "NTLM", tc.want}
		if got := resp.Header.Values("WWW-Authenticate"); !slices.Equal(got, want) {
			t.Errorf("WWW-Authenticate = %q, want %q", got, want)
		}
		if len(body) != 0 || resp.ContentLength != 0 {
			t.Errorf("401 has a body (%d bytes, Content-Length %d)", len(body), resp.ContentLength)
		}
		if got := ts.Counters().Auth["missing"]; got != 1 {
			t.Errorf("auth missing counter = %d, want 1", got)
		}
	}
}

func TestBasic(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"smtp address", basicHeader(alice, alicePW), http.StatusOK},
		{"upper-case address", basicHeader("Alice@Example.COM", alicePW), http.StatusOK},
		{"domain alias", basicHeader(`EXAMPLE\alice`, alicePW), http.StatusOK},
		{"wrong password", basicHeader(alice, bobPW), http.StatusUnauthorized},
		{"other user's password", basicHeader(bob, alicePW), http.StatusUnauthorized},
		{"unknown user", basicHeader("mallory@example.com", alicePW), http.StatusUnauthorized},
		{"not base64", "Basic !!!", http.StatusUnauthorized},
	} {
		resp, body := ewsWith(t, ts, tc.auth)
		if resp.StatusCode != tc.want {
			t.Errorf("%s: HTTP %d, want %d: %s", tc.name, resp.StatusCode, tc.want, body)
		}
		if tc.want == http.StatusUnauthorized && len(resp.Header.Values("WWW-Authenticate")) != 3 {
			t.Errorf("%s: 401 without the three challenges", tc.name)
		}
	}
	c := ts.Counters()
	if c.Auth["basic_ok"] != 3 || c.Auth["basic_failed"] != 4 {
		t.Errorf("auth counters %v, want basic_ok 3 and basic_failed 4", c.Auth)
	}
	if c.Requests["GetFolder"] != 3 {
		t.Errorf("GetFolder requests = %d, want 3 (only the authenticated ones)", c.Requests["GetFolder"])
	}
}

func TestBearer(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	if resp, _ := ewsWith(t, ts, "Bearer "+aliceTok); resp.StatusCode != http.StatusOK {
		t.Fatalf("valid token: HTTP %d", resp.StatusCode)
	}
	if resp, _ := ewsWith(t, ts, "Bearer not-a-token"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unknown token: HTTP %d", resp.StatusCode)
	}
	if err := ts.SetToken(alice, "rotated"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := ewsWith(t, ts, "Bearer "+aliceTok); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("replaced token still accepted: HTTP %d", resp.StatusCode)
	}
	if resp, _ := ewsWith(t, ts, "Bearer rotated"); resp.StatusCode != http.StatusOK {
		t.Errorf("new token: HTTP %d", resp.StatusCode)
	}
	if err := ts.SetToken(bob, "rotated"); err == nil {
		t.Error("a token could be given to two users")
	}
	if err := ts.SetToken(alice, ""); err != nil {
		t.Fatal(err)
	}
	if resp, _ := ewsWith(t, ts, "Bearer rotated"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("revoked token: HTTP %d", resp.StatusCode)
	}
	if c := ts.Counters().Auth; c["bearer_ok"] != 2 || c["bearer_failed"] != 3 {
		t.Errorf("auth counters %v, want bearer_ok 2 and bearer_failed 3", c)
	}
}

func TestNegotiate(t *testing.T) {
	kt := serviceKeytab(t, "service-secret")
	ts := Start(t, Config{
		Users:        testUsers(),
		Keytab:       kt,
		SPN:          testSPN,
		PrincipalMap: map[string]string{"svc-bob@CORP.EXAMPLE": bob},
	})

	resp, body := ewsWith(t, ts, negotiateHeader(t, kt, "alice", testRealm))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("forged ticket for alice: HTTP %d %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("WWW-Authenticate"); got != negotiateAccepted {
		t.Errorf("success WWW-Authenticate = %q", got)
	}
	if got := one(t, body, "UnreadCount"); got != "0" {
		t.Errorf("UnreadCount %s", got)
	}
	// An enterprise name (the UPN as the client name) is the address.
	resp, body = ewsWith(t, ts, negotiateHeader(t, kt, strings.ToUpper(alice), testRealm))
	if resp.StatusCode != http.StatusOK || one(t, body, "UnreadCount") != "0" {
		t.Errorf("enterprise name: HTTP %d, body %s", resp.StatusCode, body)
	}
	// The principal map: the mailbox is bob's, whatever the UPN says.
	ts.Deliver(bob, Mail{From: "x@example.net", Subject: "s", Body: "b"})
	resp, body = ewsWith(t, ts, negotiateHeader(t, kt, "svc-bob", "CORP.EXAMPLE"))
	if resp.StatusCode != http.StatusOK || one(t, body, "UnreadCount") != "1" {
		t.Errorf("mapped principal: HTTP %d, body %s", resp.StatusCode, body)
	}

	for _, tc := range []struct{ name, auth string }{
		{"ticket for another service key", negotiateHeader(t, serviceKeytab(t, "other-secret"), "alice", testRealm)},
		{"principal without mailbox", negotiateHeader(t, kt, "mallory", testRealm)},
		{"garbage", "Negotiate " + base64.StdEncoding.EncodeToString([]byte("garbage"))},
	} {
		if resp, _ := ewsWith(t, ts, tc.auth); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: HTTP %d, want 401", tc.name, resp.StatusCode)
		}
	}
	ntlm := base64.StdEncoding.EncodeToString([]byte("NTLMSSP\x00\x01\x00\x00\x00"))
	for _, auth := range []string{"NTLM " + ntlm, "Negotiate " + ntlm} {
		if resp, _ := ewsWith(t, ts, auth); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%q: HTTP %d, want 401", auth[:4], resp.StatusCode)
		}
	}
	c := ts.Counters().Auth
	if c["negotiate_ok"] != 3 || c["negotiate_failed"] != 3 || c["ntlm_refused"] != 2 {
		t.Errorf("auth counters %v", c)
	}
}

func TestNegotiateWithoutKeytab(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	resp, _ := ewsWith(t, ts, negotiateHeader(t, serviceKeytab(t, "service-secret"), "alice", testRealm))
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("Negotiate without a configured keytab: HTTP %d", resp.StatusCode)
	}
}

// TestKerberosPersistsPerConnection: with PersistKerberos, as IIS with
// authPersistNonNTLM, a request without credentials on a connection that
// carried Alice's ticket is Alice's; on another connection it gets 401.
func TestKerberosPersistsPerConnection(t *testing.T) {
	kt := serviceKeytab(t, "service-secret")
	ts := Start(t, Config{Users: testUsers(), Keytab: kt, SPN: testSPN, PersistKerberos: true})
	post := func(c *http.Client, auth string) int {
		req, _ := http.NewRequest(http.MethodPost, ts.EWSURL, bytes.NewReader(soapRequest(getInboxOp)))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	oneConn := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	if got := post(oneConn, negotiateHeader(t, kt, "alice", testRealm)); got != 200 {
		t.Fatalf("Kerberos: %d", got)
	}
	if got := post(oneConn, ""); got != 200 {
		t.Errorf("no credentials on Alice's connection: %d, want 200 (IIS keeps the login)", got)
	}
	if got := post(&http.Client{Transport: &http.Transport{}}, ""); got != 401 {
		t.Errorf("no credentials on a new connection: %d, want 401", got)
	}
	if n := ts.Counters().Auth["negotiate_persisted"]; n != 1 {
		t.Errorf("negotiate_persisted = %d, want 1", n)
	}
}

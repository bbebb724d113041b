package ens_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
)

// TestDeviceAPIErrors walks every row of DESIGN.md's error table.
func TestDeviceAPIErrors(t *testing.T) {
	e := newEnv(t, envOptions{})
	good := e.registerBody(e.basicDevice("phone", alice, alicePW, 0))
	with := func(field string, value any) map[string]any {
		b := map[string]any{}
		for k, v := range good {
			b[k] = v
		}
		if value == nil {
			delete(b, field)
		} else {
			b[field] = value
		}
		return b
	}
	for _, tc := range []struct {
		name, token, method, path string
		body                      any
		status                    int
		code, message             string
	}{
		{"no token", "", "POST", "/api/ens/publickey", map[string]string{"deviceId": "d", "email": alice}, 401, "unauthorized", "Bearer"},
		{"wrong token", "ens_wrong", "GET", "/api/ens/status?deviceId=d", nil, 401, "unauthorized", ""},
		{"truncated JSON", e.token, "POST", "/api/ens/registerdevicev2", `{"deviceId": `, 400, "bad_request", "ends early"},
		{"malformed JSON", e.token, "POST", "/api/ens/registerdevicev2", `{"deviceId" 1}`, 400, "bad_request", "syntax error"},
		{"wrong type", e.token, "POST", "/api/ens/registerdevicev2", with("notificationLevel", "high"), 400, "bad_request", `"notificationLevel"`},
		{"missing level", e.token, "POST", "/api/ens/registerdevicev2", with("notificationLevel", nil), 400, "bad_request", "notificationLevel"},
		{"level 5", e.token, "POST", "/api/ens/registerdevicev2", with("notificationLevel", 5), 400, "bad_request", "notificationLevel"},
		{"bad platform", e.token, "POST", "/api/ens/registerdevicev2", with("platform", "windows"), 400, "bad_request", "platform"},
		{"bad email", e.token, "POST", "/api/ens/registerdevicev2", with("email", "Alice <alice@contoso.test>"), 400, "bad_request", "email"},
		{"bad auth type", e.token, "POST", "/api/ens/registerdevicev2", with("authType", "ntlm"), 400, "bad_request", "authType"},
		{"no push token", e.token, "POST", "/api/ens/registerdevicev2", with("pushToken", ""), 400, "bad_request", "pushToken"},
		{"APNs token not hex", e.token, "POST", "/api/ens/registerdevicev2", with("pushToken", "not/hex"), 400, "bad_request", "hexadecimal"},
		{"unknown key", e.token, "POST", "/api/ens/registerdevicev2", with("keyId", "nope"), 400, "bad_request", "keyId"},
		{"not a JWE", e.token, "POST", "/api/ens/registerdevicev2", with("credentials", "abc.def"), 400, "bad_request", "JWE"},
		{"foreign ewsUrl", e.token, "POST", "/api/ens/registerdevicev2", with("ewsUrl", "https://evil.example/EWS/Exchange.asmx"), 403, "forbidden", "allowed EWS endpoints"},
		{"bad ewsUrl", e.token, "POST", "/api/ens/registerdevicev2", with("ewsUrl", "ftp://x"), 400, "bad_request", "ewsUrl"},
		{"unknown device status", e.token, "GET", "/api/ens/status?deviceId=never", nil, 404, "unknown_device", ""},
		{"unknown device unregister", e.token, "POST", "/api/ens/unregister", map[string]string{"deviceId": "never"}, 404, "unknown_device", ""},
		{"too large", e.token, "POST", "/api/ens/registerdevicev2", `{"deviceId":"` + strings.Repeat("x", 70<<10) + `"}`, 413, "too_large", "bytes"},
		{"unknown path", e.token, "GET", "/api/ens/nothing", nil, 404, "not_found", ""},
	} {
		status, body := e.callWith(tc.token, tc.method, tc.path, tc.body)
		msg, _ := body["message"].(string)
		if status != tc.status || body["error"] != tc.code || msg == "" || !strings.Contains(msg, tc.message) {
			t.Errorf("%s: %d %v, want %d %s mentioning %q", tc.name, status, body, tc.status, tc.code, tc.message)
		}
	}
	// None of these reached Exchange.
	if n := len(e.sim.Counters().Requests); n != 0 {
		t.Errorf("bad requests caused EWS calls: %v", e.sim.Counters().Requests)
	}
	// The good body still works: errors consumed nothing it needs.
	if status, body := e.call("POST", "/api/ens/registerdevicev2", good); status != 200 {
		t.Errorf("the good registration after the bad ones: %d %v", status, body)
	}
}

func TestWrongPasswordIsBadCredentials(t *testing.T) {
	e := newEnv(t, envOptions{})
	status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(e.basicDevice("phone", alice, "wrong", 0)))
	if status != http.StatusUnauthorized || body["error"] != "bad_credentials" {
		t.Fatalf("%d %v", status, body)
	}
	if status, _ := e.call("GET", "/api/ens/status?deviceId=phone", nil); status != 404 {
		t.Errorf("a refused registration left a device behind: status %d", status)
	}
}

func TestRateLimitPerTenant(t *testing.T) {
	e := newEnv(t, envOptions{rateLimit: 1})
	limited := 0
	for range 10 {
		status, body := e.call("GET", "/api/ens/status?deviceId=x", nil)
		if status == http.StatusTooManyRequests {
			limited++
			if body["error"] != "rate_limited" {
				t.Errorf("429 body %v", body)
			}
		}
	}
	if limited == 0 {
		t.Fatal("10 requests at once under a limit of 1/s were all served")
	}
}

// A device-supplied ewsUrl that is not on the list must never be connected to.
func TestForeignEWSURLIsNeverContacted(t *testing.T) {
	e := newEnv(t, envOptions{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	d := e.basicDevice("phone", alice, alicePW, 0)
	d.EWSURL = "http://" + l.Addr().String() + "/EWS/Exchange.asmx"
	status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(d))
	if status != http.StatusForbidden || body["error"] != "forbidden" {
		t.Fatalf("%d %v", status, body)
	}
	if n := accepted.Load(); n != 0 {
		t.Fatalf("ENS connected %d times to an ewsUrl not on the list", n)
	}
}

func TestPinnedEndpointsGetCredentialsOnlyWhenTheCertificateMatches(t *testing.T) {
	tlsSim := ewssim.StartTLS(t, ewssim.Config{Users: []ewssim.User{{Address: alice, Password: alicePW}}})
	roots := tlsSim.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	e := newEnv(t, envOptions{rootCAs: roots})
	resp, err := tlsSim.Client().Get(tlsSim.URL + "/_sim/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	leaf := sha256.Sum256(resp.TLS.PeerCertificates[0].Raw)

	other, _, _ := e.store.CreateTenant(context.Background(), "fabrikam", 0)
	wrongPin := "sha256:" + hex.EncodeToString(make([]byte, 32))
	rightPin := "sha256:" + hex.EncodeToString(leaf[:])
	// One URL, two tenants, two pins: each tenant's own pin applies.
	if _, err := e.store.AddEndpoint(context.Background(), e.tenant.ID, tlsSim.EWSURL, wrongPin); err != nil {
		t.Fatal(err)
	}
	otherToken := e.newToken(other.ID)
	if _, err := e.store.AddEndpoint(context.Background(), other.ID, tlsSim.EWSURL, rightPin); err != nil {
		t.Fatal(err)
	}
	d := e.basicDevice("phone", alice, alicePW, 0)
	d.EWSURL = tlsSim.EWSURL
	status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(d))
	if status != http.StatusBadGateway || !strings.Contains(fmt.Sprint(body["message"]), "pinned") {
		t.Fatalf("mismatching pin: %d %v", status, body)
	}
	if c := tlsSim.Counters(); len(c.Requests) != 0 || len(c.Auth) != 0 {
		t.Fatalf("the mismatching server saw requests %v, auth %v", c.Requests, c.Auth)
	}

	e.token = otherToken
	e.register(d) // fabrikam pinned the right certificate
	// The mailbox check (GetFolder) and Subscribe.
	if c := tlsSim.Counters(); c.Requests["Subscribe"] != 1 || c.Auth["basic_ok"] != 2 {
		t.Fatalf("the matching server saw requests %v, auth %v", c.Requests, c.Auth)
	}
}

func TestOAuthAndLegacyRSA1_5Registrations(t *testing.T) {
	long := strings.Repeat("eyJ0eXAiOiJKV1Qi", 600) // a 9.6 KB access token
	e := newEnv(t, envOptions{simConfig: ewssim.Config{Users: []ewssim.User{{Address: alice, Token: long}, {Address: bob, Password: bobPW}}}})
	d := deviceclient.Device{ID: "oauth-phone", Email: alice, Platform: "android", PushToken: "fcm-token", AuthType: "oauth", NotificationLevel: 1,
		Credentials: map[string]string{"accessToken": long}}
	e.register(d)
	legacy := e.basicDevice("legacy", bob, bobPW, 0)
	legacy.KeyAlgorithm = jose.RSA1_5
	e.register(legacy)
	for _, s := range e.sim.Subscriptions() {
		if len(s.URL) >= 2082 || strings.Contains(s.URL, long[:32]) {
			t.Errorf("callback URL of %d characters (limit 2082) or carrying the token", len(s.URL))
		}
	}
	e.deliver(alice, mailFromCarol)
	e.deliver(bob, mailFromCarol)
	e.waitFor("both pushes", func() bool { return len(e.pushes.pushes("fcm-token")) == 1 && len(e.pushes.pushes(tok("legacy"))) == 1 })
	if m := e.pushes.pushes("fcm-token")[0]; m.Subject != "Quarterly numbers" || m.Platform != "android" {
		t.Errorf("oauth device push %+v", m)
	}
	if c := e.sim.Counters().Auth; c["bearer_ok"] == 0 || c["basic_ok"] == 0 {
		t.Errorf("auth counters %v: want bearer and basic use", c)
	}
}

// clientCert issues a certificate for addr (rfc822Name) from a new CA.
func clientCert(t *testing.T, addr string) (ca *x509.CertPool, certDER, keyPKCS8 []byte) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Contoso test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Alice"}, EmailAddresses: []string{addr},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	if certDER, err = x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey); err != nil {
		t.Fatal(err)
	}
	keyPKCS8, _ = x509.MarshalPKCS8PrivateKey(key)
	ca = x509.NewCertPool()
	ca.AddCert(caCert)
	return ca, certDER, keyPKCS8
}

// Certificate-based authentication: ENS presents the device's certificate
// in mutual TLS for Subscribe, GetItem and GetFolder.
func TestCertificateRegistrationUsesMutualTLS(t *testing.T) {
	clientCAs, certDER, keyDER := clientCert(t, alice)
	tlsSim := ewssim.StartTLS(t, ewssim.Config{Users: []ewssim.User{{Address: alice}}, ClientCAs: clientCAs, ClockScale: 100 * time.Millisecond})
	e := newEnv(t, envOptions{rootCAs: tlsSim.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs})
	if _, err := e.store.AddEndpoint(context.Background(), e.tenant.ID, tlsSim.EWSURL, ""); err != nil {
		t.Fatal(err)
	}
	d := deviceclient.Device{ID: "cba-phone", Email: alice, Platform: "ios", PushToken: tok("cba-phone"), AuthType: "cert",
		EWSURL: tlsSim.EWSURL, Credentials: map[string]string{
			"certificate": base64.StdEncoding.EncodeToString(certDER), "privateKey": base64.StdEncoding.EncodeToString(keyDER)}}
	e.register(d)
	if _, err := tlsSim.Deliver(alice, mailFromCarol); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the push", func() bool { return len(e.pushes.pushes(tok("cba-phone"))) == 1 })
	if m := e.pushes.pushes(tok("cba-phone"))[0]; m.Title != "Carol Example" {
		t.Errorf("push %+v", m)
	}
	if c := tlsSim.Counters().Auth; c["certificate_ok"] < 3 || c["basic_ok"] != 0 {
		t.Errorf("auth counters %v: want Subscribe, GetFolder and GetItem by certificate", c)
	}

	// A key that does not belong to the certificate is refused up front.
	_, _, otherKey := clientCert(t, alice)
	d.ID = "cba-bad"
	d.Credentials["privateKey"] = base64.StdEncoding.EncodeToString(otherKey)
	status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(d))
	if status != http.StatusBadRequest || !strings.Contains(fmt.Sprint(body["message"]), "does not belong") {
		t.Errorf("mismatched key: %d %v", status, body)
	}
}

// A slow Exchange holds up only its own tenant: another tenant's
// registration on another Exchange completes meanwhile.
func TestSlowExchangeDoesNotBlockOtherTenants(t *testing.T) {
	e := newEnv(t, envOptions{rateLimit: 1000, keyPool: 12})
	if _, err := e.sim.InjectFault(ewssim.Fault{Kind: ewssim.FaultDelay, Delay: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	fast := ewssim.Start(t, ewssim.Config{Users: []ewssim.User{{Address: bob, Password: bobPW}}})
	other, _, _ := e.store.CreateTenant(context.Background(), "fabrikam", 0)
	if _, err := e.store.AddEndpoint(context.Background(), other.ID, fast.EWSURL, ""); err != nil {
		t.Fatal(err)
	}
	otherToken := e.newToken(other.ID)

	slowBodies := make([]map[string]any, 8)
	for i := range slowBodies {
		slowBodies[i] = e.registerBody(e.basicDevice(fmt.Sprintf("slow-%d", i), alice, alicePW, 0))
	}
	d := e.basicDevice("fast-phone", bob, bobPW, 0)
	d.EWSURL = fast.EWSURL
	contosoToken := e.token
	e.token = otherToken
	fastBody := e.registerBody(d)

	var wg sync.WaitGroup
	for _, b := range slowBodies {
		wg.Go(func() { e.callWith(contosoToken, "POST", "/api/ens/registerdevicev2", b) })
	}
	time.Sleep(200 * time.Millisecond) // the slow registrations are in flight
	start := time.Now()
	status, body := e.callWith(otherToken, "POST", "/api/ens/registerdevicev2", fastBody)
	took := time.Since(start)
	wg.Wait()
	if status != 200 {
		t.Fatalf("the other tenant's registration: %d %v", status, body)
	}
	if took > time.Second {
		t.Errorf("the other tenant waited %v behind a slow Exchange", took)
	}
}

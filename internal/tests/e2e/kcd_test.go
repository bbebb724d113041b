package e2e

import (
	"crypto/tls"
	"crypto/x509/pkix"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/testenv"
	"github.com/ensgate/ensgate/internal/testenv/kdctest"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
	"github.com/ensgate/ensgate/internal/testenv/testca"
)

// kdcs are the real KDCs the KCD tests run against.
var kdcs = []struct {
	name  string
	start func(testenv.TB) *kdctest.Realm
}{{"heimdal", kdctest.Heimdal}, {"samba", kdctest.Samba}}

// kcdGateway is bin/ensgate serving HTTPS with optional client certificates
// (tls client_auth verify_if_given) and ews_proxy with a kerberos block,
// in front of sim.
type kcdGateway struct {
	base  string     // https://localhost:port
	ca    *testca.CA // issued the server's and the clients' certificates
	logs  *syncbuf.Buffer
	admin string // Caddy's admin endpoint: unix/<path>
	file  string // the Caddyfile
}

// reload makes the gateway load its Caddyfile again, as an admin would.
func (g *kcdGateway) reload(t testing.TB) {
	t.Helper()
	if r := cli(t, nil, "reload", "--config", g.file, "--adapter", "caddyfile", "--address", g.admin, "--force"); r.code != 0 {
		t.Fatalf("reload: %+v", r)
	}
}

func startKCDGateway(t testing.TB, r *kdctest.Realm, sim *ewssim.TestServer) *kcdGateway {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	if res := cli(t, []string{"DATABASE_URL=" + dbURL}, "ens", "migrate"); res.code != 0 {
		t.Fatalf("migrate: %+v", res)
	}
	ca, err := testca.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	server, err := ca.IssueServer()
	if err != nil {
		t.Fatal(err)
	}
	serverPEM, err := testca.WritePEM(dir, "server", server)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caPEM, ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	// A host name, not an IP: with client_auth, Caddy requires the TLS
	// server name to match the Host header (strict SNI), and IPs send none.
	_, port, _ := strings.Cut(freeAddr(t), ":")
	listen := "localhost:" + port
	admin := "unix/" + adminSocket(t)
	caddyfile := fmt.Sprintf(`{
	admin %s|0600
	auto_https disable_redirects
	ens {
		database_url {env.DATABASE_URL}
		master_key {env.ENS_MASTER_KEY}
		public_url https://%s
	}
}
https://%s {
	bind 127.0.0.1
	tls %s %s {
		client_auth {
			mode verify_if_given
			trust_pool file %s
		}
	}
	log_skip
	handle /EWS/* {
		ews_proxy %s {
			unknown_devices allow
			kerberos {
				realm %s
				kdc %s
				keytab %s
				principal %s
				spn %s
				identity upn
			}
		}
	}
}
`, admin, listen, listen, serverPEM, serverPEM, caPEM, sim.URL,
		r.Name, strings.Join(r.KDCs, " "), r.ProxyKeytabPath, r.ProxyPrincipal, r.ExchangeSPN)
	file := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(file, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ensgate, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(baseEnv(), "DATABASE_URL="+dbURL, "ENS_MASTER_KEY="+randomKey(t))
	g := &kcdGateway{base: "https://" + listen, ca: ca, logs: new(syncbuf.Buffer), admin: admin, file: file}
	cmd.Stdout, cmd.Stderr = g.logs, g.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("ensgate output:\n%s", g.logs.String())
		}
	})
	client := g.client(t, nil)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(g.base + "/EWS/Exchange.asmx")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway not up after 30 s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return g
}

// client trusts the gateway and presents cert, if any.
func (g *kcdGateway) client(t testing.TB, cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: g.ca.Pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 16}, Timeout: 30 * time.Second}
}

// clientCert is a certificate with CN name for the given UPN and SID (none if empty).
func (g *kcdGateway) clientCert(t testing.TB, name, upn, sid string) *tls.Certificate {
	c, err := g.ca.IssueClient(pkix.Name{CommonName: name}, upn, sid)
	if err != nil {
		t.Fatal(err)
	}
	return &c
}

// TestCertificateClientsReachExchangeAsTheirUser: a client certificate with
// a UPN, through bin/ensgate, becomes a Kerberos ticket from a real KDC
// that the simulator (with Exchange's keytab) accepts as that user.
func TestCertificateClientsReachExchangeAsTheirUser(t *testing.T) {
	for _, kdc := range kdcs {
		t.Run(kdc.name, func(t *testing.T) {
			r := kdc.start(t)
			alice, bob := strings.ToLower(r.User), "bob@"+strings.ToLower(r.Name)
			sim := ewssim.Start(t, ewssim.Config{
				Keytab: r.ExchangeKeytab,
				SPN:    r.ExchangeSPN,
				// Like IIS with authPersistNonNTLM: a connection that
				// carried Alice's ticket stays Alice's.
				PersistKerberos: true,
				Users:           []ewssim.User{{Address: alice, Password: "alice-pw"}, {Address: bob, Password: "bob-pw"}},
			})
			// Alice's Inbox is told apart from Bob's by its unread count.
			for i := range 3 {
				if _, err := sim.Deliver(alice, ewssim.Mail{From: "carol@example.test", Subject: fmt.Sprint("mail ", i)}); err != nil {
					t.Fatal(err)
				}
			}
			g := startKCDGateway(t, r, sim)
			ews := g.base + "/EWS/Exchange.asmx"
			aliceSID := ""
			if r.Kind == "samba" {
				aliceSID = r.UserSID(t, "alice")
			}
			cba := g.client(t, g.clientCert(t, "Alice", r.User, aliceSID))

			as0, tgs0 := r.Requests()
			negotiated := sim.Counters().Auth["negotiate_ok"]
			for i := range 20 {
				// The client's own credentials are replaced, whatever they are.
				resp, body := postGetFolder(t, cba, ews, "", "Basic Ym9iQGV4YW1wbGU6Ym9iLXB3")
				if resp.StatusCode != 200 || !strings.Contains(body, "<t:UnreadCount>3</t:UnreadCount>") {
					t.Fatalf("request %d with Alice's certificate: %d %.300s", i, resp.StatusCode, body)
				}
			}
			if n := sim.Counters().Auth["negotiate_ok"] - negotiated; n != 20 {
				t.Errorf("Exchange authenticated %d of 20 requests by Kerberos", n)
			}
			as1, tgs1 := r.Requests()
			// One login (AS, two requests with pre-authentication) and one
			// S4U2Self + S4U2Proxy pair for 20 requests.
			if tgs1-tgs0 != 2 || as1-as0 > 2 {
				t.Errorf("20 requests made %d AS-REQ and %d TGS-REQ, want at most 2 and exactly 2", as1-as0, tgs1-tgs0)
			}

			// A config reload keeps the tickets (and the TGT). The old config's
			// server closes its idle connections as it shuts down; a POST racing
			// that close gets EOF (Go retries only idempotent requests), so the
			// next request opens a new connection, as a client's retry would.
			g.reload(t)
			cba.CloseIdleConnections()
			as, tgs := r.Requests()
			if resp, body := postGetFolder(t, cba, ews, "", ""); resp.StatusCode != 200 {
				t.Fatalf("after a reload: %d %.300s", resp.StatusCode, body)
			}
			if a, g := r.Requests(); a != as || g != tgs {
				t.Errorf("after a reload the KDC was asked again: %d AS-REQ, %d TGS-REQ", a-as, g-tgs)
			}

			// Without a certificate, Basic passes and no Negotiate is offered.
			plain := g.client(t, nil)
			resp, body := postGetFolder(t, plain, ews, "", "Basic "+basicAuth(bob, "bob-pw"))
			if resp.StatusCode != 200 || !strings.Contains(body, "<t:UnreadCount>0</t:UnreadCount>") {
				t.Errorf("Bob with Basic: %d %.300s", resp.StatusCode, body)
			}
			// Anonymous requests never ride on a connection that carried a
			// delegated ticket (they would be Alice's).
			for range 5 {
				resp, _ = postGetFolder(t, plain, ews, "", "")
				if got := resp.Header.Values("WWW-Authenticate"); resp.StatusCode != 401 || len(got) != 1 || !strings.HasPrefix(got[0], "Basic ") {
					t.Fatalf("no credentials: %d, challenges %q (Negotiate is only for certificate clients)", resp.StatusCode, got)
				}
			}
			if n := sim.Counters().Auth["negotiate_persisted"]; n != 0 {
				t.Errorf("%d requests without credentials were answered as a delegated user", n)
			}

			// Certificates that name nobody the KDC can delegate get 403
			// and never reach Exchange.
			before := sim.Counters().Requests["GetFolder"]
			refused := []struct{ name, upn, sid string }{
				{"no UPN", "", ""},
				{"unknown user", "nobody@" + strings.ToLower(r.Name), ""},
				{"sensitive user", r.SensitiveUser, ""},
			}
			if r.Kind == "samba" { // AD's strong mapping: the SID must be the UPN's user's
				refused = append(refused, struct{ name, upn, sid string }{"Bob's SID with Alice's UPN", r.User, r.UserSID(t, "bob")})
			}
			for _, tc := range refused {
				resp, body := postGetFolder(t, g.client(t, g.clientCert(t, tc.name, tc.upn, tc.sid)), ews, "", "")
				if resp.StatusCode != 403 || !strings.Contains(body, "ErrorAccessDenied") {
					t.Errorf("%s: %d %.300s", tc.name, resp.StatusCode, body)
				}
			}
			if n := sim.Counters().Requests["GetFolder"] - before; n != 0 {
				t.Errorf("refused certificates reached Exchange %d times", n)
			}
			// Each cause has its own log line, and no line names a user.
			// (The gateway's output reaches the buffer through a pipe.)
			var logs string
			for _, want := range []string{"the certificate names no user", "the KDC does not know the user", "the S4U2Self ticket is not forwardable"} {
				for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
					if logs = g.logs.String(); strings.Contains(logs, want) {
						break
					}
					if time.Now().After(deadline) {
						t.Errorf("no log line says %q", want)
						break
					}
				}
			}
			for _, user := range []string{"alice@", "bob@", "nobody@"} {
				if strings.Contains(strings.ToLower(logs), user) {
					t.Errorf("the gateway's log names a user (%s…)", user)
				}
			}
			// A certificate from another CA is not verified: no delegation.
			other, err := testca.NewCA()
			if err != nil {
				t.Fatal(err)
			}
			foreign, err := other.IssueClient(pkix.Name{CommonName: "Mallory"}, r.User, "")
			if err != nil {
				t.Fatal(err)
			}
			req, _ := http.NewRequest("POST", ews, strings.NewReader(getFolder))
			if resp, err := g.client(t, &foreign).Do(req); err == nil {
				resp.Body.Close()
				t.Errorf("a certificate from an untrusted CA was accepted: %d", resp.StatusCode)
			}
		})
	}
}

func basicAuth(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}

// TestKerberosMisconfigurationIsReportedAtOnce: `ensgate validate` names
// every problem of a kerberos block in one go, before anything runs.
func TestKerberosMisconfigurationIsReportedAtOnce(t *testing.T) {
	file := filepath.Join(t.TempDir(), "Caddyfile")
	caddyfile := `{
	admin off
	ens {
		database_url {env.DATABASE_URL}
		master_key {env.ENS_MASTER_KEY}
		public_url http://127.0.0.1:1
	}
}
:8080 {
	ews_proxy http://127.0.0.1:1 {
		kerberos {
			kdc dc1.corp.example.test
			keytab /nonexistent/ensgate.keytab
			principal HTTP/ensgate.corp.example.test
			spn exchange.corp.example.test
			identity upn fingerprint
			sid maybe
		}
	}
}
`
	if err := os.WriteFile(file, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"DATABASE_URL=postgres://ens@127.0.0.1:1/ens", "ENS_MASTER_KEY=" + randomKey(t)}
	r := cli(t, env, "validate", "--config", file, "--adapter", "caddyfile")
	msg := logMessages(r.stderr)
	for _, want := range []string{"/nonexistent/ensgate.keytab", `identity: unknown source "fingerprint"`, `sid "maybe"`, "realm is required", "Exchange SPN must look like"} {
		if r.code == 0 || !strings.Contains(msg, want) {
			t.Errorf("exit %d; the error does not mention %q:\n%s", r.code, want, msg)
		}
	}
}

// TestKCDCheckCommand: `ensgate ens kcd check` walks an admin through the
// delegation steps against a real KDC and names the one that fails.
func TestKCDCheckCommand(t *testing.T) {
	for _, kdc := range kdcs {
		t.Run(kdc.name, func(t *testing.T) {
			r := kdc.start(t)
			args := func(spn, user string) []string {
				return []string{"ens", "kcd", "check", "--realm", r.Name, "--kdc", strings.Join(r.KDCs, ","),
					"--keytab", r.ProxyKeytabPath, "--principal", r.ProxyPrincipal, "--spn", spn, "--user", user}
			}
			res := cli(t, nil, args(r.ExchangeSPN, r.User)...)
			if res.code != 0 {
				t.Fatalf("check: %+v", res)
			}
			for _, want := range []string{"login (AS) as " + r.ProxyPrincipal, "S4U2Self for " + r.User + ": ok", "S4U2Proxy to " + r.ExchangeSPN + ": ok", "delegated ticket for"} {
				if !strings.Contains(res.stdout, want) {
					t.Errorf("output lacks %q:\n%s", want, res.stdout)
				}
			}
			if r.Kind == "samba" && !strings.Contains(res.stdout, "SID "+r.UserSID(t, "alice")) {
				t.Errorf("output lacks Alice's SID:\n%s", res.stdout)
			}
			if r.Kind == "heimdal" && !strings.Contains(res.stdout, "note: no user SID (the KDC's ticket carries no PAC)") {
				t.Errorf("output does not warn that there is no PAC:\n%s", res.stdout)
			}

			res = cli(t, nil, args(r.OtherSPN, r.User)...)
			if res.code == 0 || !strings.Contains(res.stdout, "S4U2Proxy to "+r.OtherSPN+": FAILED") || !strings.Contains(res.stderr, "KDC_ERR_BADOPTION") {
				t.Errorf("SPN outside the delegation list: %+v", res)
			}
			res = cli(t, nil, args(r.ExchangeSPN, r.SensitiveUser)...)
			if res.code == 0 || !strings.Contains(res.stdout, "S4U2Self for "+r.SensitiveUser+": FAILED") || !strings.Contains(res.stderr, "not forwardable") {
				t.Errorf("sensitive user: %+v", res)
			}
		})
	}
}

// TestCaddyfileExampleKerberosBlock: the kerberos block Caddyfile.example
// shows commented out is valid once enabled, with its settings from the
// environment (several KDCs in one variable).
func TestCaddyfileExampleKerberosBlock(t *testing.T) {
	r := kdctest.Heimdal(t)
	example, err := os.ReadFile(filepath.Join(repoRoot(t), "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	var enabled []string
	for _, line := range strings.Split(string(example), "\n") {
		trimmed := strings.TrimLeft(line, "\t")
		indent := line[:len(line)-len(trimmed)]
		if rest, ok := strings.CutPrefix(trimmed, "# "); ok && (strings.HasPrefix(rest, "kerberos {") || strings.HasPrefix(rest, "\t") || rest == "}") {
			line = indent + rest
		}
		enabled = append(enabled, line)
	}
	text := strings.Join(enabled, "\n")
	if !strings.Contains(text, "\t\t\tkerberos {\n") {
		t.Fatal("Caddyfile.example has no commented kerberos block")
	}
	file := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env, _ := gatewayEnv(t, "postgres://ens@127.0.0.1:1/ens", "http://127.0.0.1:1")
	env = append(env, "ENS_KCD_REALM="+r.Name, "ENS_KCD_KDCS="+strings.Join(append([]string{"127.0.0.1:1"}, r.KDCs...), " "),
		"ENS_KCD_KEYTAB="+r.ProxyKeytabPath, "ENS_KCD_PRINCIPAL="+r.ProxyPrincipal, "ENS_KCD_SPN="+r.ExchangeSPN)
	res := cli(t, env, "validate", "--config", file, "--adapter", "caddyfile")
	if res.code != 0 || !strings.Contains(res.stdout+res.stderr, "Valid configuration") {
		t.Fatalf("validate with the kerberos block enabled: %+v", res)
	}
}

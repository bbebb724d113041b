// Package kdctest starts real KDCs for tests: Heimdal (fast) and a Samba AD DC (Active Directory semantics).
//
// Heimdal gives each test a KDC of its own (about 0.3 s). Samba provisions
// one domain controller per test binary, started on first use and stopped
// by Run or RunFunc (call one from TestMain). Either way the KDC is reached through a
// counting relay owned by the test, so Requests tells what the KDC was asked.
//
// Both realms are CORP.EXAMPLE.TEST with the same cast: a proxy trusted for
// protocol transition and constrained delegation to HTTP/exchange..., an
// "untrusted" proxy allowed to delegate to the same SPN but without protocol
// transition, a service outside the delegation list, a normal user (alice),
// a user that must not be delegated (bob) and a disabled user (dora). Only
// AES keys are used.
//
// What the KDCs answer (checked by this package's tests):
//
//	case                                 Heimdal 7.8                 Samba 4.17 (AD)
//	S4U2Self for User                    forwardable ticket          forwardable ticket
//	S4U2Self for SensitiveUser           ticket NOT forwardable      ticket NOT forwardable
//	S4U2Proxy for SensitiveUser          KDC_ERR_BADOPTION (13)      KDC_ERR_BADOPTION (13)
//	S4U2Proxy to OtherSPN                KDC_ERR_BADOPTION (13)      KDC_ERR_BADOPTION (13)
//	S4U2Self by the untrusted proxy      ticket NOT forwardable      ticket NOT forwardable
//	S4U2Proxy by the untrusted proxy     KDC_ERR_BADOPTION (13)      KDC_ERR_BADOPTION (13)
//	S4U2Self for an unknown user         KDC_ERR_C_PRINCIPAL_UNKNOWN (6), both
//	S4U2Self for DisabledUser            KDC_ERR_POLICY (12)         KDC_ERR_POLICY (12)
//	AS-REQ as DisabledUser               KDC_ERR_POLICY (12)         KDC_ERR_CLIENT_REVOKED (18)
//
// S4U2Self for DisabledUser gets the same answer by name ("dora") and by
// enterprise name; Samba's reason is "Principal may not act as client", not
// the KDC_ERR_CLIENT_REVOKED of its AS exchange, so code that recognises a
// disabled account should take both codes. The AS-REQ is refused after
// pre-authentication (KDC_ERR_PREAUTH_REQUIRED first), by name or, on
// Samba, by UPN.
//
// S4U tickets requested by UPN (enterprise name, type 10) name the user
// alice@corp.example.test (type 10) on both KDCs; requested by the name
// "alice" (NT-PRINCIPAL) they name "alice".
//
// Without Heimdal (scripts/install-heimdal.sh) or Samba (see .ci/run), or
// when not root for Samba, tests are skipped, unless ENSGATE_REQUIRE_KDC is
// set: then they fail.
package kdctest

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ensgate/ensgate/internal/testenv"

	"github.com/jcmturner/gokrb5/v8/keytab"
)

// The realm and names both KDCs use.
const (
	RealmName   = "CORP.EXAMPLE.TEST"
	DNSDomain   = "corp.example.test"
	ExchangeSPN = "HTTP/exchange.corp.example.test"
	OtherSPN    = "HTTP/other.corp.example.test"
)

// Enctypes are the encryption types of every key and of Krb5Conf.
const Enctypes = "aes256-cts-hmac-sha1-96 aes128-cts-hmac-sha1-96"

// Realm is a running KDC and what tests need to use it.
type Realm struct {
	Kind     string   // "heimdal" or "samba"
	Name     string   // realm, "CORP.EXAMPLE.TEST"
	KDCs     []string // "127.0.0.1:port" of this test's counting relay in front of the KDC
	Krb5Conf string   // krb5.conf text for gokrb5's config.NewFromString (and for Heimdal's or MIT's tools)

	// Krb5ConfPath holds Krb5Conf, for tools that read KRB5_CONFIG.
	Krb5ConfPath string

	// ProxyPrincipal is the proxy's own principal name without realm, used
	// for its AS exchange and as the S4U2Self target. Heimdal:
	// "HTTP/proxy.corp.example.test"; Samba: the account name "svc_proxy"
	// (which also holds that SPN).
	ProxyPrincipal  string
	ProxyKeytab     *keytab.Keytab
	ProxyKeytabPath string

	ExchangeSPN        string         // in the proxy's constrained-delegation list
	ExchangeKeytab     *keytab.Keytab // Exchange's service keys for ExchangeSPN
	ExchangeKeytabPath string
	OtherSPN           string // exists, but is NOT in the proxy's delegation list

	User          string // UPN of a normal delegable user, "alice@corp.example.test"
	UserPrincipal string // its account name, "alice" (AS-REQ; S4U by NT-PRINCIPAL name; Samba's PAC logon name)
	UserPassword  string // for a password login (the same for every user, AddUser's too)
	SensitiveUser string // UPN of a user that cannot be delegated, "bob@corp.example.test"

	// DisabledUser is the UPN of a user that exists but whose account is
	// disabled, "dora@corp.example.test": the KDCs refuse S4U2Self and
	// logins for it (see the table above for the codes).
	DisabledUser string

	// UntrustedProxyPrincipal may delegate to ExchangeSPN but is not trusted
	// for protocol transition: its S4U2Self tickets are not forwardable and
	// S4U2Proxy with them fails (KDC_ERR_BADOPTION).
	UntrustedProxyPrincipal  string
	UntrustedProxyKeytab     *keytab.Keytab
	UntrustedProxyKeytabPath string

	relay   *relay
	kdc     *daemon                                // Heimdal's, owned by the test
	addUser func(t testenv.TB, name string)        // creates name with UserPassword and the UPN name@corp.example.test
	userSID func(t testenv.TB, name string) string // nil: no SIDs (Heimdal)
}

// Requests returns how many AS-REQ and TGS-REQ messages went through this
// realm's relay so far, TCP and UDP (gokrb5 uses TCP only with Krb5Conf;
// Heimdal's tools try UDP first, and Samba answers big replies there with
// KRB_ERR_RESPONSE_TOO_BIG, so they count twice).
func (r *Realm) Requests() (as, tgs int64) {
	return r.relay.as.Load(), r.relay.tgs.Load()
}

// AddUser creates another delegable user with UserPassword and returns its
// UPN (name@corp.example.test); its canonical principal name is name. On
// Samba the user stays for the rest of the test binary, and adding it again
// (as go test -count does) returns the same user.
func (r *Realm) AddUser(t testenv.TB, name string) string {
	t.Helper()
	r.addUser(t, name)
	return name + "@" + DNSDomain
}

// UserSID returns the objectSid, in string form ("S-1-5-21-<domain>-<RID>"),
// of the account name or its UPN: alice, bob, dora, a user AddUser made,
// or a proxy or service account ("svc_proxy"). It is the SID the KDC puts
// in the PAC of the account's tickets (the logon domain SID and the user's
// RID of KERB_VALIDATION_INFO). The SIDs were read when the accounts were
// created, so it costs nothing. An account kdctest did not create fails the
// test.
//
// Heimdal has no SIDs (its tickets carry no PAC): there UserSID skips the
// test (t.Skip), so a test that needs SIDs runs against Samba only.
func (r *Realm) UserSID(t testenv.TB, name string) string {
	t.Helper()
	if r.userSID == nil {
		t.Skipf("kdctest: %s has no SIDs (its tickets carry no PAC): UserSID needs Samba", r.Kind)
	}
	return r.userSID(t, name)
}

// cast is the realm both KDCs set up, with its keytabs in dir; only the
// proxies' names differ between them.
func cast(kind, dir, proxy, untrustedProxy string) *Realm {
	return &Realm{
		Kind:                     kind,
		Name:                     RealmName,
		ProxyPrincipal:           proxy,
		ProxyKeytabPath:          filepath.Join(dir, "proxy.keytab"),
		ExchangeSPN:              ExchangeSPN,
		ExchangeKeytabPath:       filepath.Join(dir, "exchange.keytab"),
		OtherSPN:                 OtherSPN,
		User:                     "alice@" + DNSDomain,
		UserPrincipal:            "alice",
		UserPassword:             userPassword,
		SensitiveUser:            "bob@" + DNSDomain,
		DisabledUser:             "dora@" + DNSDomain,
		UntrustedProxyPrincipal:  untrustedProxy,
		UntrustedProxyKeytabPath: filepath.Join(dir, "untrusted.keytab"),
	}
}

// krb5Conf is the client configuration for a KDC at addr.
func krb5Conf(addr string) string {
	return fmt.Sprintf(`[libdefaults]
	default_realm = %[1]s
	dns_lookup_kdc = false
	dns_lookup_realm = false
	udp_preference_limit = 1
	forwardable = true
	rdns = false
	default_tkt_enctypes = %[3]s
	default_tgs_enctypes = %[3]s
	permitted_enctypes = %[3]s

[realms]
	%[1]s = {
		kdc = %[2]s
	}

[domain_realm]
	.%[4]s = %[1]s
	%[4]s = %[1]s
`, RealmName, addr, Enctypes, DNSDomain)
}

// withRelay starts this test's relay in front of the KDC at backend and
// fills in the client side of r.
func withRelay(t testenv.TB, r *Realm, backend, dir string) {
	t.Helper()
	rl, err := startRelay(backend)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rl.close)
	r.relay = rl
	r.KDCs = []string{rl.addr()}
	r.Krb5Conf = krb5Conf(rl.addr())
	r.Krb5ConfPath = filepath.Join(dir, "krb5.conf")
	if err := os.WriteFile(r.Krb5ConfPath, []byte(r.Krb5Conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// unavailable skips the test, or fails it under ENSGATE_REQUIRE_KDC.
func unavailable(t testenv.TB, err error) {
	t.Helper()
	if os.Getenv("ENSGATE_REQUIRE_KDC") != "" {
		t.Fatalf("%v (ENSGATE_REQUIRE_KDC is set)", err)
	}
	t.Skip(err)
}

func loadKeytab(path string) (*keytab.Keytab, error) {
	kt, err := keytab.Load(path)
	if err != nil {
		return nil, fmt.Errorf("kdctest: keytab %s: %w", path, err)
	}
	if len(kt.Entries) == 0 {
		return nil, fmt.Errorf("kdctest: keytab %s is empty", path)
	}
	return kt, nil
}

// randomPassword meets AD's complexity rules.
func randomPassword() string {
	b := make([]byte, 12)
	rand.Read(b)
	return "Kd!" + hex.EncodeToString(b) + "Z9"
}

// daemon is a KDC process in a process group of its own, killed with the
// test binary (Linux: parent-death signal) and stopped by stop.
type daemon struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // cmd.Wait's result, after done
	stopped sync.Once
}

func startDaemon(logPath string, dir string, env []string, name string, args ...string) (*daemon, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = procAttr()
	// Samba (-i) exits when its stdin closes, so also when this process dies.
	if _, err := cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &daemon{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait() // also closes stdin's write end, which stays open until then
		close(d.done)
	}()
	return d, nil
}

// waitListening waits until addr accepts TCP connections, the process exits
// or the timeout passes.
func (d *daemon) waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("exited (%v) before listening on %s\n%s", d.err, addr, tail(d.logPath, 30))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s after %v\n%s", addr, timeout, tail(d.logPath, 30))
		}
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (d *daemon) stop(grace time.Duration) {
	d.stopped.Do(func() {
		select {
		case <-d.done:
			return
		default:
		}
		signalGroup(d.cmd.Process, false)
		select {
		case <-d.done:
		case <-time.After(grace):
			signalGroup(d.cmd.Process, true)
			<-d.done
		}
		// Heimdal's workers follow their parent; make sure nothing is left.
		signalGroup(d.cmd.Process, true)
	})
}

// tail returns the last n lines of a log file, for failure messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return path + ":\n" + strings.Join(lines, "\n")
}

// freePort returns a port that was free for TCP and UDP on ip a moment ago.
func freePort(ip string) (int, error) {
	var lastErr error
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		ln.Close()
		if err != nil {
			lastErr = err
			continue
		}
		pc.Close()
		return port, nil
	}
	return 0, errors.Join(errors.New("kdctest: no free port"), lastErr)
}

// run runs a setup command and returns an error with its output.
func run(dir string, env []string, stdin string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kdctest: %s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return nil
}

package kdctest

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ensgate/ensgate/internal/testenv"

	"github.com/jcmturner/gokrb5/v8/keytab"
)

//go:embed samba_setup.py
var sambaSetupScript string

// userAccountControl flags (MS-ADTS 2.2.16).
const (
	ufAccountDisable                   = 0x2        // "account is disabled" (samba-tool user disable)
	ufNotDelegated                     = 0x100000   // "account is sensitive and cannot be delegated"
	ufTrustedToAuthenticateForDelegate = 0x1000000  // protocol transition ("use any authentication protocol")
	aesOnly                            = 0x8 | 0x10 // msDS-SupportedEncryptionTypes: AES128, AES256
)

var (
	mainUsed atomic.Bool
	sambaMu  sync.Mutex
	sambaDC  *sambaServer
	sambaErr error
)

// Run runs the tests and stops the Samba DC they started. Call it from the
// package's TestMain: func TestMain(m testenv.M) { os.Exit(kdctest.Run(m)) }.
func Run(m testenv.M) int { return RunFunc(m.Run) }

// RunFunc is Run for a TestMain that already wraps m.Run, e.g. with pgtest:
//
//	os.Exit(kdctest.RunFunc(func() int { return pgtest.Run(m) }))
func RunFunc(run func() int) int {
	mainUsed.Store(true)
	defer func() {
		sambaMu.Lock()
		defer sambaMu.Unlock()
		if sambaDC != nil {
			sambaDC.stop()
			sambaDC = nil
		}
	}()
	return run()
}

// Samba returns this test's view of a Samba AD DC shared by the test
// binary: the DC is provisioned and started on first use (about 4 s) and
// stopped by Run; each call gets its own counting relay, so Requests counts
// this test's messages only. Accounts (sAMAccountName, SPNs):
//
//   - svc_proxy (HTTP/proxy.corp.example.test): trusted to authenticate for
//     delegation (protocol transition), msDS-AllowedToDelegateTo
//     ExchangeSPN; ProxyPrincipal is "svc_proxy";
//   - svc_untrusted (HTTP/untrusted.corp.example.test):
//     msDS-AllowedToDelegateTo ExchangeSPN, no protocol transition;
//   - svc_exchange (ExchangeSPN), svc_other (OtherSPN);
//   - alice, bob with "account is sensitive and cannot be delegated", and
//     dora, disabled (userAccountControl ACCOUNTDISABLE, as samba-tool user
//     disable does); their UPNs are alice@, bob@ and dora@corp.example.test.
//
// Realm.UserSID gives the objectSid of these accounts and of AddUser's.
//
// Service accounts have msDS-SupportedEncryptionTypes 24 (AES only).
// S4U2Self by enterprise name (alice@corp.example.test, name type 10)
// yields tickets that keep that client name, with a PAC whose logon name is
// "alice" (gokrb5's service side reports UserName "alice" from it). AS-REQs
// take "svc_proxy", "svc_proxy@corp.example.test" (UPN as NT-PRINCIPAL),
// "alice", "ALICE", "alice@corp.example.test", but not an SPN such as
// "HTTP/proxy.corp.example.test" as the client name.
//
// The DC must run as root. Each one binds its KDC to a loopback address of
// its own (127.x.y.z) and free ports, and runs only the kdc service, so the
// DCs of test binaries running in parallel do not meet.
func Samba(t testenv.TB) *Realm {
	t.Helper()
	if err := sambaMissing(); err != nil {
		unavailable(t, err)
	}
	if !mainUsed.Load() {
		t.Fatal("kdctest: call kdctest.Run(m) (or RunFunc) from TestMain so the Samba DC is stopped")
	}
	sambaMu.Lock()
	if sambaDC == nil && sambaErr == nil {
		sambaDC, sambaErr = startSamba()
		if sambaErr == nil {
			t.Logf("kdctest: Samba AD DC at %s: provisioned in %v, accounts in %v, KDC listening after %v",
				sambaDC.addr, sambaDC.provisionTime.Round(time.Millisecond),
				sambaDC.setupTime.Round(time.Millisecond), sambaDC.startTime.Round(time.Millisecond))
		}
	}
	s, err := sambaDC, sambaErr
	sambaMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	r := s.realm // a copy: the keytabs are shared, read-only
	r.addUser = s.addUser
	r.userSID = s.userSID
	withRelay(t, &r, s.addr, t.TempDir())
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kdctest: the end of Samba's log (shared by the tests)\n%s", tail(s.proc.logPath, 60))
		}
	})
	return &r
}

// sambaMissing says what is missing to run a Samba AD DC, if anything.
func sambaMissing() error {
	const install = "apt-get install samba samba-ad-provision samba-dsdb-modules samba-vfs-modules (as .ci/run does)"
	if os.Geteuid() != 0 {
		return errors.New("kdctest: a Samba AD DC must run as root")
	}
	for _, p := range []string{sambaBin(), "/usr/bin/samba-tool", "/usr/bin/python3", "/usr/share/samba/setup/ad-schema"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("kdctest: Samba AD DC is not installed (%v): %s", err, install)
		}
	}
	for _, glob := range []string{"/usr/lib/*/samba/ldb/samba_dsdb.so", "/usr/lib/*/samba/vfs/acl_xattr.so"} {
		if m, _ := filepath.Glob(glob); len(m) == 0 {
			return fmt.Errorf("kdctest: Samba AD DC is not installed (no %s): %s", glob, install)
		}
	}
	return nil
}

func sambaBin() string {
	if p, err := exec.LookPath("samba"); err == nil {
		return p
	}
	return "/usr/sbin/samba"
}

type sambaServer struct {
	dir     string // the provision's target directory, removed by stop
	smbConf string
	addr    string // the KDC's own "ip:port" (TCP and UDP)
	proc    *daemon
	owner   *os.File // locked while this process lives (see sweepSamba)
	realm   Realm    // without relay

	mu   sync.Mutex        // one setup script at a time; guards sids
	sids map[string]string // objectSid by sAMAccountName, of the accounts setup created

	provisionTime, setupTime, startTime time.Duration
}

// startSamba provisions a domain in a new directory, creates the accounts
// and starts the DC's KDC.
func startSamba() (s *sambaServer, err error) {
	sweepSamba()
	dir, err := os.MkdirTemp("", sambaDirPrefix) // short: Samba's sockets live below it
	if err != nil {
		return nil, err
	}
	s = &sambaServer{dir: dir, smbConf: filepath.Join(dir, "etc/smb.conf")}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if s.owner, err = lockOwner(filepath.Join(dir, "owner.lock")); err != nil {
		return s, err
	}

	// Every path Samba writes is below dir (the defaults are shared with any
	// other Samba on the machine: /run/samba/samba.pid would stop a second
	// DC), and only the kdc service runs.
	t0 := time.Now()
	options := map[string]string{
		"server services":            "kdc",
		"log file":                   filepath.Join(dir, "log"),
		"pid directory":              filepath.Join(dir, "run"),
		"ncalrpc dir":                filepath.Join(dir, "run/ncalrpc"),
		"winbindd socket directory":  filepath.Join(dir, "run/winbindd"),
		"ntp signd socket directory": filepath.Join(dir, "run/ntp_signd"),
	}
	args := []string{"domain", "provision", "--realm=" + RealmName, "--domain=CORP", "--server-role=dc",
		"--dns-backend=NONE", "--host-name=kdc", "--targetdir=" + dir, "--adminpass=" + randomPassword()}
	for k, v := range options {
		args = append(args, "--option="+k+"="+v)
	}
	if err := run(dir, nil, "", "/usr/bin/samba-tool", args...); err != nil {
		return s, fmt.Errorf("kdctest: Samba provisioning: %w", err)
	}
	s.provisionTime = time.Since(t0)

	t0 = time.Now()
	s.realm = *cast("samba", dir, "svc_proxy", "svc_untrusted")
	exchange := []string{ExchangeSPN}
	err = s.setup(sambaSpec{
		Accounts: []sambaAccount{
			{Name: "svc_proxy", Password: randomPassword(), UAC: ufTrustedToAuthenticateForDelegate,
				SPNs: []string{"HTTP/proxy." + DNSDomain}, DelegateTo: exchange, Enctypes: aesOnly},
			{Name: "svc_untrusted", Password: randomPassword(),
				SPNs: []string{"HTTP/untrusted." + DNSDomain}, DelegateTo: exchange, Enctypes: aesOnly},
			{Name: "svc_exchange", Password: randomPassword(), SPNs: exchange, Enctypes: aesOnly},
			{Name: "svc_other", Password: randomPassword(), SPNs: []string{OtherSPN}, Enctypes: aesOnly},
			{Name: "alice", Password: userPassword},
			{Name: "bob", Password: userPassword, UAC: ufNotDelegated},
			{Name: "dora", Password: userPassword, UAC: ufAccountDisable},
		},
		Keytabs: []sambaKeytab{
			{Principal: "svc_proxy", Path: s.realm.ProxyKeytabPath},
			{Principal: "svc_untrusted", Path: s.realm.UntrustedProxyKeytabPath},
			// By SPN: the entries are named as the tickets Exchange gets,
			// with the enctypes msDS-SupportedEncryptionTypes allows.
			{Principal: ExchangeSPN, Path: s.realm.ExchangeKeytabPath},
		},
	})
	if err != nil {
		return s, err
	}
	for _, kt := range []struct {
		path string
		dst  **keytab.Keytab
	}{{s.realm.ProxyKeytabPath, &s.realm.ProxyKeytab}, {s.realm.UntrustedProxyKeytabPath, &s.realm.UntrustedProxyKeytab}, {s.realm.ExchangeKeytabPath, &s.realm.ExchangeKeytab}} {
		if *kt.dst, err = loadKeytab(kt.path); err != nil {
			return s, err
		}
	}
	s.setupTime = time.Since(t0)

	// A loopback address of its own and free ports on it: two DCs (two
	// test binaries) never want the same socket, and nothing already
	// listening on a wildcard address (a system smbd, a KDC on *:88) is in
	// the way. Retried in case another process took a port meanwhile.
	t0 = time.Now()
	logPath := filepath.Join(dir, "samba.out")
	for attempt := 0; ; attempt++ {
		ip := fmt.Sprintf("127.%d.%d.%d", 1+rand.IntN(254), rand.IntN(256), 1+rand.IntN(254))
		krb5, err1 := freePort(ip)
		kpasswd, err2 := freePort(ip)
		if err := errors.Join(err1, err2); err != nil {
			return s, err
		}
		s.addr = fmt.Sprintf("%s:%d", ip, krb5)
		// -i: foreground, logs to stdout, and exits when stdin closes (when
		// this process dies); -M single: one process; -d 3 logs each KDC
		// request and its outcome.
		s.proc, err = startDaemon(logPath, dir, nil, sambaBin(), "-s", s.smbConf, "-i", "-M", "single", "-d", "3",
			"--option=interfaces="+ip+"/8", "--option=bind interfaces only=yes",
			fmt.Sprintf("--option=krb5 port=%d", krb5), fmt.Sprintf("--option=kpasswd port=%d", kpasswd))
		if err != nil {
			return s, fmt.Errorf("kdctest: start samba: %w", err)
		}
		if err = s.proc.waitListening(s.addr, 60*time.Second); err == nil {
			break
		}
		s.proc.stop(5 * time.Second)
		if attempt == 2 {
			return s, fmt.Errorf("kdctest: samba %w", err)
		}
	}
	s.startTime = time.Since(t0)
	return s, nil
}

type sambaSpec struct {
	SMBConf  string         `json:"smbconf"`
	Accounts []sambaAccount `json:"accounts"`
	Keytabs  []sambaKeytab  `json:"keytabs"`
}

type sambaAccount struct {
	Name       string   `json:"name"`
	Password   string   `json:"password"`
	UAC        int      `json:"uac,omitempty"`
	SPNs       []string `json:"spns,omitempty"`
	DelegateTo []string `json:"delegate_to,omitempty"`
	Enctypes   int      `json:"enctypes,omitempty"`
}

type sambaKeytab struct {
	Principal string `json:"principal"`
	Path      string `json:"path"`
}

// setup runs samba_setup.py on the domain's database (the running DC sees
// the changes at once) and keeps the SIDs of the accounts it created.
func (s *sambaServer) setup(spec sambaSpec) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	spec.SMBConf = s.smbConf
	in, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	script := filepath.Join(s.dir, "setup.py")
	if err := os.WriteFile(script, []byte(sambaSetupScript), 0o644); err != nil {
		return err
	}
	cmd := exec.Command("/usr/bin/python3", script)
	cmd.Dir = s.dir
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kdctest: Samba setup: %v\n%s%s", err, stderr.Bytes(), stdout.Bytes())
	}
	// The script's result is its last line.
	out := strings.TrimSpace(stdout.String())
	var result struct {
		SIDs map[string]string `json:"sids"`
	}
	if err := json.Unmarshal([]byte(out[strings.LastIndex(out, "\n")+1:]), &result); err != nil {
		return fmt.Errorf("kdctest: Samba setup's result: %v\n%s%s", err, stderr.Bytes(), stdout.Bytes())
	}
	if s.sids == nil {
		s.sids = make(map[string]string)
	}
	for _, a := range spec.Accounts {
		sid := result.SIDs[a.Name]
		if !strings.HasPrefix(sid, "S-1-5-21-") {
			return fmt.Errorf("kdctest: Samba setup: the SID of %s is %q\n%s", a.Name, sid, stdout.Bytes())
		}
		s.sids[a.Name] = sid
	}
	return nil
}

// userSID returns the objectSid of an account setup created.
func (s *sambaServer) userSID(t testenv.TB, name string) string {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	sid, ok := s.sids[strings.TrimSuffix(name, "@"+DNSDomain)]
	if !ok {
		known := make([]string, 0, len(s.sids))
		for n := range s.sids {
			known = append(known, n)
		}
		sort.Strings(known)
		t.Fatalf("kdctest: UserSID: no account %q made by kdctest (it knows %s)", name, strings.Join(known, ", "))
	}
	return sid
}

func (s *sambaServer) addUser(t testenv.TB, name string) {
	t.Helper()
	s.mu.Lock()
	_, exists := s.sids[name]
	s.mu.Unlock()
	if exists { // made earlier in this binary, by another test or an earlier run (-count)
		return
	}
	if err := s.setup(sambaSpec{Accounts: []sambaAccount{{Name: name, Password: userPassword}}}); err != nil {
		t.Fatal(err)
	}
}

// stop ends samba and removes its files.
func (s *sambaServer) stop() {
	if s.proc != nil {
		s.proc.stop(10 * time.Second)
	}
	if err := os.RemoveAll(s.dir); err != nil {
		fmt.Fprintf(os.Stderr, "kdctest: %v\n", err)
	}
	if s.owner != nil {
		s.owner.Close()
	}
}

const sambaDirPrefix = "kdctest-samba-"

// sweepSamba removes what DCs of test binaries that died without calling
// stop (a test timeout, a kill) left in the temporary directory; their
// samba exited with them (its stdin closed). A DC's directory holds the lock
// of owner.lock while its test binary lives.
func sweepSamba() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), sambaDirPrefix+"*"))
	for _, dir := range dirs {
		if ownerGone(filepath.Join(dir, "owner.lock")) {
			os.RemoveAll(dir)
		}
	}
}

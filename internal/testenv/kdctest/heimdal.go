package kdctest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ensgate/ensgate/internal/testenv"

	"github.com/jcmturner/gokrb5/v8/keytab"
)

// userPassword is every test user's password (AD complexity rules hold).
const userPassword = "Passw0rd!Kdctest"

// HeimdalDir is where scripts/install-heimdal.sh unpacked Heimdal:
// $ENSGATE_HEIMDAL_DIR, else /opt/ensgate-heimdal.
func HeimdalDir() string {
	if d := os.Getenv("ENSGATE_HEIMDAL_DIR"); d != "" {
		return d
	}
	return "/opt/ensgate-heimdal"
}

// HeimdalTool is the path of one of Heimdal's client programs in HeimdalDir
// ("kinit.heimdal", "kgetcred", "heimtools", ...), or "" if it is missing.
func HeimdalTool(name string) string {
	p := filepath.Join(HeimdalDir(), "usr/bin", name)
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

// Heimdal's principals (realm CORP.EXAMPLE.TEST).
const (
	heimdalProxy     = "HTTP/proxy.corp.example.test"
	heimdalUntrusted = "HTTP/untrusted.corp.example.test"
)

// Heimdal starts a fresh Heimdal KDC for this test, stopped when it ends:
//
//   - HTTP/proxy.corp.example.test: trusted-for-delegation (protocol
//     transition), constrained delegation to ExchangeSPN;
//   - HTTP/untrusted.corp.example.test: constrained delegation to
//     ExchangeSPN, not trusted-for-delegation;
//   - ExchangeSPN and OtherSPN: plain services;
//   - alice and bob, with the aliases alice@corp.example.test and
//     bob@corp.example.test so that their UPNs work as enterprise names; bob
//     has disallow-forwardable, which makes his S4U2Self tickets not
//     forwardable (Heimdal's counterpart of AD's "sensitive" flag);
//   - dora, with the alias dora@corp.example.test, disabled: disallow-all-tix
//     (the "invalid" flag; MIT's -allow_tix), so the KDC refuses S4U2Self
//     and logins for her with KDC_ERR_POLICY. Heimdal 7.8 answers no
//     KDC_ERR_CLIENT_REVOKED here (locked-out is KDC_ERR_POLICY too);
//     disallow-client would make her look unknown (KDC_ERR_C_PRINCIPAL_UNKNOWN)
//     and an expired principal gets KDC_ERR_NAME_EXP (1).
//
// S4U2Self by enterprise name (alice@corp.example.test, name type 10)
// finds alice through the alias; the tickets keep the name as requested
// (the enterprise name), and carry no PAC. The AS exchange takes "alice"
// (NT-PRINCIPAL) or the UPN as an enterprise name, not the UPN as an
// NT-PRINCIPAL; the proxy logs in as HTTP/proxy.corp.example.test.
func Heimdal(t testenv.TB) *Realm {
	t.Helper()
	kdc := filepath.Join(HeimdalDir(), "usr/lib/heimdal-servers/kdc")
	kadmin := filepath.Join(HeimdalDir(), "usr/bin/kadmin.heimdal")
	for _, p := range []string{kdc, kadmin} {
		if _, err := exec.LookPath(p); err != nil {
			unavailable(t, fmt.Errorf("kdctest: Heimdal is not installed (%v): run scripts/install-heimdal.sh", err))
		}
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "kdc.conf")
	if err := os.WriteFile(conf, []byte(heimdalKDCConf(dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex // kadmin -l takes a lock, but one at a time is simpler
	kadm := func(commands string) error {
		mu.Lock()
		defer mu.Unlock()
		return kadminLocal(kadmin, conf, dir, commands)
	}
	r := cast("heimdal", dir, heimdalProxy, heimdalUntrusted)
	r.addUser = func(t testenv.TB, name string) {
		t.Helper()
		if err := kadm(heimdalUser(name, "")); err != nil {
			t.Fatal(err)
		}
	}
	exchange := ExchangeSPN + "@" + RealmName
	setup := strings.Join([]string{
		"init --realm-max-ticket-life=unlimited --realm-max-renewable-life=unlimited " + RealmName,
		"add --random-key --use-defaults --attributes=trusted-for-delegation " + heimdalProxy,
		"modify --constrained-delegation=" + exchange + " " + heimdalProxy,
		"add --random-key --use-defaults " + heimdalUntrusted,
		"modify --constrained-delegation=" + exchange + " " + heimdalUntrusted,
		"add --random-key --use-defaults " + ExchangeSPN,
		"add --random-key --use-defaults " + OtherSPN,
		heimdalUser("alice", ""),
		heimdalUser("bob", "disallow-forwardable"),
		heimdalUser("dora", "disallow-all-tix"),
		"ext_keytab -k " + r.ProxyKeytabPath + " " + heimdalProxy,
		"ext_keytab -k " + r.UntrustedProxyKeytabPath + " " + heimdalUntrusted,
		"ext_keytab -k " + r.ExchangeKeytabPath + " " + ExchangeSPN,
	}, "\n")
	if err := kadm(setup); err != nil {
		t.Fatal(err)
	}
	var err error
	for _, kt := range []struct {
		path string
		dst  **keytab.Keytab
	}{{r.ProxyKeytabPath, &r.ProxyKeytab}, {r.UntrustedProxyKeytabPath, &r.UntrustedProxyKeytab}, {r.ExchangeKeytabPath, &r.ExchangeKeytab}} {
		if *kt.dst, err = loadKeytab(kt.path); err != nil {
			t.Fatal(err)
		}
	}

	logPath := filepath.Join(dir, "kdc.log")
	var d *daemon
	for attempt := 0; ; attempt++ {
		port, err := freePort("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		d, err = startDaemon(logPath, dir, []string{"KRB5_CONFIG=" + conf}, kdc,
			"--config-file="+conf, fmt.Sprintf("--ports=%d", port), "--addresses=127.0.0.1")
		if err != nil {
			t.Fatalf("kdctest: start Heimdal's kdc: %v", err)
		}
		if err = d.waitListening(addr, 10*time.Second); err == nil {
			t.Cleanup(func() { d.stop(5 * time.Second) })
			r.kdc = d
			withRelay(t, r, addr, dir)
			break
		}
		d.stop(time.Second)
		if attempt == 2 { // another process took the port each time?
			t.Fatalf("kdctest: Heimdal's kdc %v", err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kdctest: the end of Heimdal's log\n%s", tail(logPath, 40))
		}
	})
	return r
}

// heimdalUser adds a user with userPassword and its UPN as an alias, so that
// enterprise names (name type 10) find it.
func heimdalUser(name, attributes string) string {
	add := "add --password=" + userPassword + " --use-defaults"
	if attributes != "" {
		add += " --attributes=" + attributes
	}
	return add + " " + name + "\nmodify --alias=" + name + "@" + DNSDomain + " " + name
}

// kadminLocal runs commands, one a line, with "kadmin -l": it edits the
// database directly. It reports errors on stderr without failing, so any
// output there is an error.
func kadminLocal(kadmin, conf, dir, commands string) error {
	cmd := exec.Command(kadmin, "-l", "-c", conf)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KRB5_CONFIG="+conf)
	cmd.Stdin = strings.NewReader(commands + "\n")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil || stderr.Len() > 0 {
		return fmt.Errorf("kdctest: kadmin -l: %v\n%s%s\ncommands:\n%s", err, stderr.Bytes(), stdout.Bytes(), commands)
	}
	return nil
}

// heimdalKDCConf configures the KDC and kadmin -l: a database in dir, AES
// keys only, logs in dir.
func heimdalKDCConf(dir string) string {
	return fmt.Sprintf(`[libdefaults]
	default_realm = %[1]s
	dns_lookup_kdc = false
	dns_lookup_realm = false

[kdc]
	database = {
		dbname = %[2]s/heimdal
		realm = %[1]s
		log_file = %[2]s/iprop.log
	}
	logging = FILE:%[2]s/kdc.log

[kadmin]
	default_keys = aes256-cts-hmac-sha1-96:pw-salt aes128-cts-hmac-sha1-96:pw-salt

[logging]
	kdc = FILE:%[2]s/kdc.log
	default = FILE:%[2]s/heimdal.log
`, RealmName, dir)
}

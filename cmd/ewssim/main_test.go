package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jcmturner/gokrb5/v8/iana/etypeID"
	"github.com/jcmturner/gokrb5/v8/keytab"

	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

const getFolder = `<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
<s:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>
<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>`

// start runs the command with args and returns its base URL.
func start(t *testing.T, args ...string) (string, *syncbuf.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &syncbuf.Buffer{}
	urls := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"-listen", "127.0.0.1:0"}, args...), logs, func(u string) { urls <- u })
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	select {
	case u := <-urls:
		return u, logs
	case err := <-done:
		t.Fatalf("run: %v\n%s", err, logs)
	case <-time.After(5 * time.Second):
		t.Fatal("server did not start")
	}
	return "", nil
}

func TestRunServesEWSAndControl(t *testing.T) {
	dir := t.TempDir()
	users := filepath.Join(dir, "users.json")
	os.WriteFile(users, []byte(`[{"address":"alice@example.com","password":"pw-a"}]`), 0o600)
	kt := keytab.New()
	kt.AddEntry("HTTP/mail.example.com", "EXAMPLE.COM", "secret", time.Now(), 1, etypeID.AES256_CTS_HMAC_SHA1_96)
	ktb, _ := kt.Marshal()
	ktFile := filepath.Join(dir, "http.keytab")
	os.WriteFile(ktFile, ktb, 0o600)

	base, logs := start(t, "-users", users, "-user", "bob@example.com:pw-b:tok-b", "-clock-scale", "10ms",
		"-control-token", "ctl", "-keytab", ktFile, "-spn", "HTTP/mail.example.com",
		"-principal-map", "bob@EXAMPLE.COM=bob@example.com", "-realm", "mail.example.com")

	for _, tc := range []struct {
		name, auth string
		want       int
	}{
		{"users file", "Basic " + b64("alice@example.com:pw-a"), http.StatusOK},
		{"-user flag", "Basic " + b64("bob@example.com:pw-b"), http.StatusOK},
		{"-user token", "Bearer tok-b", http.StatusOK},
		{"wrong password", "Basic " + b64("bob@example.com:nope"), http.StatusUnauthorized},
	} {
		req, _ := http.NewRequest(http.MethodPost, base+"/EWS/Exchange.asmx", strings.NewReader(getFolder))
		req.Header.Set("Authorization", tc.auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: HTTP %d, want %d", tc.name, resp.StatusCode, tc.want)
		}
		if resp.StatusCode == http.StatusUnauthorized && !strings.Contains(strings.Join(resp.Header.Values("WWW-Authenticate"), "|"), `Basic realm="mail.example.com"`) {
			t.Errorf("realm flag not applied: %q", resp.Header.Values("WWW-Authenticate"))
		}
	}

	req, _ := http.NewRequest(http.MethodGet, base+"/_sim/health", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("control without token: %v %v", resp.StatusCode, err)
	}
	req.Header.Set("X-Sim-Token", "ctl")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("control with token: %v %v", resp.StatusCode, err)
	}
	out := logs.String()
	if !strings.Contains(out, "ewssim listening") || !strings.Contains(out, "kerberos=true") {
		t.Errorf("startup log: %s", out)
	}
	for _, secret := range []string{"alice@", "bob@", "pw-a", "pw-b", "tok-b", "ctl"} {
		if strings.Contains(out, secret) {
			t.Errorf("log contains %q: %s", secret, out)
		}
	}
}

func TestRunTLS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	base, _ := start(t, "-tls-cert", certFile, "-tls-key", keyFile, "-user", "alice@example.com:pw")
	if !strings.HasPrefix(base, "https://") {
		t.Fatalf("base URL %s", base)
	}
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest(http.MethodPost, base+"/ews/exchange.asmx", strings.NewReader(getFolder))
	req.SetBasicAuth("alice@example.com", "pw")
	resp, err := cl.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte("<t:DisplayName>Inbox</t:DisplayName>")) {
		t.Errorf("HTTP %d %s", resp.StatusCode, b)
	}
}

func TestFlagErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-user", "alice@example.com"},
		{"-tls-cert", "x.pem"},
		{"-clock-scale", "0s"},
		{"-principal-map", "nomapping"},
		{"-keytab", "/nonexistent/keytab"},
		{"-users", "/nonexistent/users.json"},
		{"-log-level", "loud"},
		{"stray"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q accepted", args)
		}
	}
	if err := run(context.Background(), []string{"-listen", "127.0.0.1:0", "-user", "not-an-address:pw"}, io.Discard, nil); err == nil {
		t.Error("invalid user address accepted")
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		IsCA:         true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	return certFile, keyFile, pool
}

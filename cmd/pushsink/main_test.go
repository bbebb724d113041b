package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens/push"
)

// TestPushSink starts the sinks, configures senders from the env file and
// reads the pushes back from standard output.
func TestPushSink(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-apns-addr", "127.0.0.1:0", "-fcm-addr", "127.0.0.1:0", "-dir", dir}, outW, io.Discard)
		outW.Close()
	}()
	lines := make(chan map[string]any)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("line %q: %v", sc.Text(), err)
			}
			lines <- m
		}
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	env := readEnv(t, filepath.Join(dir, "env"))
	roots := trustedBy(t, env["SSL_CERT_FILE"])

	apns, err := push.NewAPNs(push.APNsConfig{
		URL: env["ENS_APNS_URL"], KeyFile: env["ENS_APNS_KEY_FILE"], KeyID: env["ENS_APNS_KEY_ID"],
		TeamID: env["ENS_APNS_TEAM_ID"], Topic: env["ENS_APNS_TOPIC"], Client: push.ClientConfig{ExtraRoots: roots},
	})
	if err != nil {
		t.Fatal(err)
	}
	fcm, err := push.NewFCM(push.FCMConfig{
		URL: env["ENS_FCM_URL"], CredentialsFile: env["ENS_FCM_CREDENTIALS_FILE"], Client: push.ClientConfig{ExtraRoots: roots},
	})
	if err != nil {
		t.Fatal(err)
	}
	// send pushes m and returns the line the sink printed for it.
	send := func(s push.Sender, m push.Message) map[string]any {
		t.Helper()
		if r := s.Send(ctx, m); r.Outcome != push.Delivered {
			t.Fatalf("send: %v %s %v", r.Outcome, r.Reason, r.Err)
		}
		select {
		case line := <-lines:
			return line
		case <-time.After(5 * time.Second):
			t.Fatal("no line printed")
		}
		return nil
	}

	token := strings.Repeat("ab", 32)
	got := send(apns, push.Message{Platform: push.IOS, Token: token, Title: "Alice", Badge: 2})
	alert, _ := got["payload"].(map[string]any)["aps"].(map[string]any)["alert"].(map[string]any)
	if got["platform"] != "ios" || got["token"] != token || got["status"] != 200.0 || alert["title"] != "Alice" {
		t.Errorf("APNs line: %v", got)
	}
	got = send(fcm, push.Message{Platform: push.Android, Token: "fcm:tok", Title: "Bob", Badge: 1})
	data, _ := got["data"].(map[string]any)
	if got["platform"] != "android" || got["token"] != "fcm:tok" || got["status"] != 200.0 || data["title"] != "Bob" {
		t.Errorf("FCM line: %v", got)
	}
}

// trustedBy parses the CA bundle for SSL_CERT_FILE; the sinks' CA must be
// its last certificate, after the system roots. (Setting SSL_CERT_FILE in
// the test would only work once per process: Go loads the roots once.)
func trustedBy(t *testing.T, bundle string) []*x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	var certs []*x509.Certificate
	for block, rest := pem.Decode(b); block != nil; block, rest = pem.Decode(rest) {
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			certs = append(certs, c)
		}
	}
	if len(certs) < 2 || certs[len(certs)-1].Subject.CommonName != "ensgate test CA" {
		t.Fatalf("bundle of %d certificates: want the system roots, then the sinks' CA", len(certs))
	}
	return certs[len(certs)-1:]
}

// readEnv waits for the env file and parses its KEY='value' lines.
func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil {
			env := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				k, v, _ := strings.Cut(line, "=")
				env[k] = strings.Trim(v, "'")
			}
			return env
		}
		if time.Now().After(deadline) {
			t.Fatal("no env file")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

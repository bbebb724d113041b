package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

// startPushSink runs bin/pushsink and returns the ENS_APNS_*/SSL_CERT_FILE
// environment pointing at it and its output (one JSON line per push).
func startPushSink(t *testing.T) ([]string, *syncbuf.Buffer) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(filepath.Dir(ensgate), "pushsink"), "-dir", dir,
		"-apns-addr", freeAddr(t), "-fcm-addr", freeAddr(t))
	out := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	envFile := filepath.Join(dir, "env")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if f, err := os.Open(envFile); err == nil {
			var env []string
			for sc := bufio.NewScanner(f); sc.Scan(); {
				k, v, _ := strings.Cut(sc.Text(), "=")
				env = append(env, k+"="+strings.Trim(v, "'"))
			}
			f.Close()
			return env, out
		}
		if time.Now().After(deadline) {
			t.Fatalf("pushsink did not start: %s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pushesTo counts the pushes the sink accepted for token.
func pushesTo(out *syncbuf.Buffer, token string) int {
	n := 0
	for _, line := range strings.Split(out.String(), "\n") {
		var p struct {
			Token  string `json:"token"`
			Status int    `json:"status"`
		}
		if json.Unmarshal([]byte(line), &p) == nil && p.Token == token && p.Status == 200 {
			n++
		}
	}
	return n
}

// TestENSThroughItsOwnProxy: the tenant's EWS endpoint is the gateway's own
// /EWS, so ENS's Subscribe, GetItem and GetFolder pass the proxy with
// ENS's signed device list. A compliant device is notified; once blocked,
// the proxy refuses it and ENS pushes nothing more to it.
func TestENSThroughItsOwnProxy(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	db := []string{"DATABASE_URL=" + dbURL}
	sim := ewssim.Start(t, ewssim.Config{Users: []ewssim.User{{Address: "alice@contoso.test", Password: "pw"}}, ClockScale: time.Second})
	sinkEnv, sink := startPushSink(t)
	env, base := gatewayEnv(t, dbURL, sim.URL)
	env = append(env, sinkEnv...)
	token := tenantBehindOwnProxy(t, db, base)
	startGateway(t, env)
	waitFor(t, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()

	devices := &deviceclient.Client{BaseURL: base + "/api/ens", Token: token}
	const apnsToken = "5a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := devices.Register(ctx, deviceclient.Device{ID: "phone", Email: "alice@contoso.test", Platform: "ios",
		PushToken: apnsToken, EWSURL: base + "/EWS/Exchange.asmx", AuthType: "basic",
		Credentials: map[string]string{"username": "alice@contoso.test", "password": "pw"}}); err != nil {
		t.Fatalf("registration through the proxy: %v", err)
	}
	sim.Deliver("alice@contoso.test", ewssim.Mail{From: "carol@fabrikam.test", Subject: "one", Body: "b"})
	deadline := time.Now().Add(20 * time.Second)
	for pushesTo(sink, apnsToken) < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("no push through the proxy; sink:\n%s", sink.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	if r := cli(t, db, "ens", "device", "block", "--tenant", "contoso", "--device", "phone"); r.code != 0 {
		t.Fatalf("block: %+v", r)
	}
	time.Sleep(500 * time.Millisecond)
	items := sim.Counters().Requests["GetItem"]
	sim.Deliver("alice@contoso.test", ewssim.Mail{From: "carol@fabrikam.test", Subject: "two", Body: "b"})
	time.Sleep(2 * time.Second)
	if n := pushesTo(sink, apnsToken); n != 1 {
		t.Errorf("%d pushes, want none after the block", n-1)
	}
	if n := sim.Counters().Requests["GetItem"]; n != items {
		t.Errorf("Exchange served %d GetItem calls for the blocked device", n-items)
	}
}

// tenantBehindOwnProxy migrates the database and creates tenant contoso,
// whose allowed EWS endpoint is the gateway's own /EWS (base), with the
// device "phone" known to the proxy as compliant; it returns the tenant's
// API token.
func tenantBehindOwnProxy(t *testing.T, db []string, base string) string {
	t.Helper()
	if r := cli(t, db, "ens", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %+v", r)
	}
	token := lastLine(cli(t, db, "ens", "tenant", "create", "--name", "contoso").stdout)
	for _, args := range [][]string{
		{"ens", "endpoint", "add", "--tenant", "contoso", "--url", base + "/EWS/Exchange.asmx"},
		{"ens", "device", "unblock", "--tenant", "contoso", "--device", "phone"},
	} {
		if r := cli(t, db, args...); r.code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	return token
}

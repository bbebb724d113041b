package e2e

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

// TestMakeRunScript runs what `make run` runs, on a fresh run directory: it
// must start its own PostgreSQL, the simulator and the push sinks, serve
// alive and the admin API, register the scripted devices (one for the
// Exchange simulator's mailbox over EWS, one for the Graph simulator's over
// Microsoft Graph), print the push that each delivered mail causes, and
// stop everything again on Ctrl-C.
// Every listener and Caddy's admin socket are its own, so that a local
// `make run` does not get in the way.
func TestMakeRunScript(t *testing.T) {
	if _, err := os.Stat("/usr/lib/postgresql"); err != nil && os.Getenv("ENSGATE_REQUIRE_POSTGRES") == "" {
		t.Skip("PostgreSQL is not installed")
	}
	runDir, err := os.MkdirTemp("", "ensgate-run-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(runDir)
	os.Chmod(runDir, 0o755) // the postgres user must reach its data directory

	listen := "http://" + freeAddr(t)
	socket := filepath.Join(runDir, "caddy-admin.sock")
	_, adminAPIPort, _ := net.SplitHostPort(freeAddr(t))
	cmd := exec.Command("scripts/run.sh")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(baseEnv(), "ENS_RUN_DIR="+runDir, "ENS_LISTEN="+listen,
		"ENS_CADDY_ADMIN_SOCKET="+socket, "ENS_ADMIN_API_PORT="+adminAPIPort, "ENSGATE_BIN_DIR="+filepath.Dir(ensgate),
		"ENS_SIM_ADDR="+freeAddr(t), "ENS_GRAPH_SIM_ADDR="+freeAddr(t), "ENS_APNS_SINK_ADDR="+freeAddr(t), "ENS_FCM_SINK_ADDR="+freeAddr(t))
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	// Its own process group, so a failed test can stop the whole demo.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			stop := exec.Command(filepath.Join(cmd.Dir, "scripts/run.sh"), "stop")
			stop.Env = append(baseEnv(), "ENS_RUN_DIR="+runDir)
			stop.Run()
			t.Logf("run.sh output:\n%s", logs.String())
		}
	}()

	resp := waitFor(t, listen+"/api/ens/alive", 200, 90*time.Second)
	resp.Body.Close()
	deadline := time.Now().Add(60 * time.Second)
	for _, want := range []demoPush{ewsPush, graphPush} {
		for !printedPush(logs.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("the demo's push for the %s mailbox was not printed within 60 s", want.mailbox)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if _, err := os.Stat(filepath.Join(runDir, "master.key")); err != nil {
		t.Errorf("the master key is not kept for the next run: %v", err)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("Caddy's admin endpoint is not the run's socket %s: %v", socket, err)
	}
	// ENS's admin API itself (not the site's catch-all 404) answers there.
	adminToken, err := os.ReadFile(filepath.Join(runDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://127.0.0.1:"+adminAPIPort+"/api/ens/admin/tenants/no-such-tenant/devices", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(adminToken)))
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Errorf("the admin API on port %s: %v", adminAPIPort, err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "no such tenant") {
			t.Errorf("the admin API on port %s: %s %s", adminAPIPort, resp.Status, body)
		}
	}

	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("run.sh did not stop within 30 s of Ctrl-C")
	}
	if _, err := os.Stat(filepath.Join(runDir, "pg", "postmaster.pid")); !os.IsNotExist(err) {
		t.Errorf("PostgreSQL still running after Ctrl-C (postmaster.pid: %v)", err)
	}
}

// demoPush is the push of one of the demo's mails.
type demoPush struct {
	mailbox           string
	token             string // the device's APNs token
	title, bodyPrefix string // the alert
}

var (
	ewsPush = demoPush{mailbox: "EWS", token: "0e4d0ca7e7d15a2cd9d1b1e8f0e6c3a1d2b3c4d5e6f708192a3b4c5d6e7f8091",
		title: "Carol from Fabrikam", bodyPrefix: "Welcome to ENSGate"}
	graphPush = demoPush{mailbox: "Graph", token: "7a1c3e5f7092b4d6f8e0a2c4e6f8091b3d5f7a9c1e3f5a7c9e1b3d5f7a9c1e3f",
		title: "Dave from Northwind", bodyPrefix: "Hello from Exchange Online"}
)

// printedPush reports whether the push sink printed a demo mail's push: a
// JSON line for the demo device whose alert shows the mail.
func printedPush(output string, want demoPush) bool {
	for _, line := range strings.Split(output, "\n") {
		var push struct {
			Token   string `json:"token"`
			Status  int    `json:"status"`
			Payload struct {
				APS struct {
					Alert struct{ Title, Body string } `json:"alert"`
					Badge int                          `json:"badge"`
				} `json:"aps"`
			} `json:"payload"`
		}
		if json.Unmarshal([]byte(line), &push) != nil {
			continue
		}
		if push.Token == want.token && push.Status == 200 &&
			push.Payload.APS.Alert.Title == want.title && strings.HasPrefix(push.Payload.APS.Alert.Body, want.bodyPrefix) &&
			push.Payload.APS.Badge >= 1 {
			return true
		}
	}
	return false
}

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestMakeRunScript runs what `make run` runs, on a fresh run directory: it
// must start its own PostgreSQL, migrate, serve alive, and stop PostgreSQL
// again on Ctrl-C.
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
	cmd := exec.Command("scripts/run.sh")
	cmd.Dir = repoRoot(t)
	cmd.Env = append(baseEnv(), "ENS_RUN_DIR="+runDir, "ENS_LISTEN="+listen,
		"ENS_CADDY_ADMIN="+freeAddr(t), "ENSGATE_BIN="+ensgate)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			cmd.Process.Kill()
			exec.Command(filepath.Join(cmd.Dir, "scripts/run.sh"), "stop").Run()
			t.Logf("run.sh output:\n%s", logs.String())
		}
	}()

	resp := waitFor(t, listen+"/api/ens/alive", 200, 90*time.Second)
	resp.Body.Close()
	if _, err := os.Stat(filepath.Join(runDir, "master.key")); err != nil {
		t.Errorf("the master key is not kept for the next run: %v", err)
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

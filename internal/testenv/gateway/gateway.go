// Package gateway runs bin/ensgate for the tests of the whole
// (internal/tests/…): it finds or builds the binary, gives a node free
// ports, a clean environment and an admin socket of its own, and runs
// `ensgate run` and the CLI.
package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ensgate/ensgate/internal/testenv"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

// Binary is bin/ensgate: $ENSGATE_BIN (make test builds it), else one built
// now, with the commands pkgs (import paths) beside it, into a temporary
// directory that cleanup removes.
func Binary(pkgs ...string) (bin string, cleanup func(), err error) {
	if bin := os.Getenv("ENSGATE_BIN"); bin != "" {
		return bin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "ensgate-bin")
	if err != nil {
		return "", nil, err
	}
	args := append([]string{"build", "-o", dir + "/", "github.com/ensgate/ensgate/cmd/ensgate"}, pkgs...)
	build := exec.Command("go", args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("building ensgate: %w", err)
	}
	return filepath.Join(dir, "ensgate"), func() { os.RemoveAll(dir) }, nil
}

// BaseEnv is the test process's environment without ENSGate's variables,
// so a developer's shell cannot change what a test sees.
func BaseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ENS_") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	return env
}

// FreeAddr is a loopback host:port nobody listens on right now.
func FreeAddr(t testenv.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// RandomKey is base64 of 32 random bytes: a master key.
func RandomKey(t testenv.TB) string {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	return base64.StdEncoding.EncodeToString(key)
}

// AdminSocket is a path for Caddy's admin socket in a directory of its own
// (short: a unix socket path has at most 107 bytes).
func AdminSocket(t testenv.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ensadm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "admin.sock")
}

// WaitFor polls url until it answers with status, or fails the test.
func WaitFor(t testenv.TB, url string, status int, within time.Duration) *http.Response {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(url)
		if err == nil && resp.StatusCode == status {
			return resp
		}
		if err == nil {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer %d within %v (last error %v)", url, status, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Result is what a CLI run printed and its exit code.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// CLI runs bin with args in dir (where Caddyfile.example is) and BaseEnv
// plus env.
func CLI(t testenv.TB, bin, dir string, env []string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(BaseEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		exit, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("ensgate %v: %v", args, err)
		}
		code = exit.ExitCode()
	}
	return Result{stdout.String(), stderr.String(), code}
}

// Run runs `bin run --config config --adapter caddyfile` in dir with
// BaseEnv plus env until the test ends, as Start does, and returns the
// process and its output.
func Run(t testenv.TB, bin, dir string, env []string, config string) (*exec.Cmd, *syncbuf.Buffer) {
	t.Helper()
	cmd := exec.Command(bin, "run", "--config", config, "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Env = append(BaseEnv(), env...)
	return cmd, Start(t, cmd, syscall.SIGINT)
}

// Start starts cmd with its output collected and stops it when the test
// ends: with stop, then SIGKILL after 15 s, which fails the test. A failed
// test prints the output. A process the test killed itself is just
// reaped.
func Start(t testenv.TB, cmd *exec.Cmd, stop os.Signal) *syncbuf.Buffer {
	t.Helper()
	logs := &syncbuf.Buffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(cmd.Path)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(stop)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop within 15 s of %v", name, stop)
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, logs.String())
		}
	})
	return logs
}

// Env is a complete environment for Caddyfile.example: the database, free
// ports for the site and the admin API, an admin socket of its own, fresh
// secrets and Exchange (the /EWS upstream) at upstream. base is the site's
// URL, which is also its public URL. A later entry for the same variable
// overrides one of these.
func Env(t testenv.TB, dbURL, upstream string) (env []string, base string) {
	t.Helper()
	base = "http://" + FreeAddr(t)
	_, adminAPIPort, _ := net.SplitHostPort(FreeAddr(t))
	return []string{
		"DATABASE_URL=" + dbURL,
		"ENS_LISTEN=" + base,
		"ENS_PUBLIC_URL=" + base,
		"ENS_CADDY_ADMIN_SOCKET=" + AdminSocket(t),
		"ENS_ADMIN_API_PORT=" + adminAPIPort,
		"ENS_MASTER_KEY=" + RandomKey(t),
		"ENS_ADMIN_TOKEN=" + strings.Repeat("a", 40),
		"ENS_PROXY_SECRET=" + strings.Repeat("p", 40),
		"ENS_EWS_UPSTREAM=" + upstream,
	}, base
}

// RepoRoot is the module's root (where Caddyfile.example is): the nearest
// directory above the working directory, a test's package, with go.mod.
func RepoRoot(t testenv.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Package e2e tests bin/ensgate as admins use it: the CLI against a real
// PostgreSQL, `run` with Caddyfile.example, and the `make run` script.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/kdctest"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
)

// ensgate is the binary under test: $ENSGATE_BIN (make test builds it) or
// one built here; the demo's other commands (ewssim, pushsink, ensdemo) are
// beside it.
var ensgate string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	ensgate = os.Getenv("ENSGATE_BIN")
	if ensgate == "" {
		dir, err := os.MkdirTemp("", "ensgate-e2e")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ensgate = filepath.Join(dir, "ensgate")
		build := exec.Command("go", "build", "-o", dir+"/", "github.com/ensgate/ensgate/cmd/ensgate",
			"github.com/ensgate/ensgate/cmd/ewssim", "github.com/ensgate/ensgate/cmd/pushsink", "github.com/ensgate/ensgate/cmd/ensdemo")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building ensgate:", err)
			return 1
		}
	}
	// The Samba DC (started by the first KCD test) and PostgreSQL are
	// both stopped when the tests end.
	return kdctest.RunFunc(func() int { return pgtest.Run(m) })
}

// repoRoot is where Caddyfile.example and scripts/ live.
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs bin/ensgate with args and the given extra environment.
func cli(t testing.TB, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ensgate, args...)
	cmd.Dir = repoRoot(t)
	cmd.Env = append(baseEnv(), env...)
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
	return result{stdout.String(), stderr.String(), code}
}

// baseEnv is the test process's environment without ENSGate's variables,
// so a developer's shell cannot change what a test sees.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ENS_") && !strings.HasPrefix(kv, "DATABASE_URL=") {
			env = append(env, kv)
		}
	}
	return env
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// waitFor polls url until it answers with status, or fails the test.
func waitFor(t testing.TB, url string, status int, within time.Duration) *http.Response {
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

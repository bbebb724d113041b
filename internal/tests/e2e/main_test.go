// Package e2e tests bin/ensgate as admins use it: the CLI against a real
// PostgreSQL, `run` with Caddyfile.example, and the `make run` script.
package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/gateway"
	"github.com/ensgate/ensgate/internal/testenv/kdctest"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
)

// ensgate is the binary under test: $ENSGATE_BIN (make test builds it) or
// one built here; the demo's other commands (ewssim, graphsim, pushsink,
// ensdemo) are beside it.
var ensgate string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	bin, cleanup, err := gateway.Binary("github.com/ensgate/ensgate/cmd/ewssim", "github.com/ensgate/ensgate/cmd/graphsim",
		"github.com/ensgate/ensgate/cmd/pushsink", "github.com/ensgate/ensgate/cmd/ensdemo")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cleanup()
	ensgate = bin
	// The Samba DC (started by the first KCD test) and PostgreSQL are
	// both stopped when the tests end.
	return kdctest.RunFunc(func() int { return pgtest.Run(m) })
}

// repoRoot is where Caddyfile.example and scripts/ live.
var repoRoot = gateway.RepoRoot

type result struct {
	stdout, stderr string
	code           int
}

// cli runs bin/ensgate with args and the given extra environment.
func cli(t testing.TB, env []string, args ...string) result {
	t.Helper()
	r := gateway.CLI(t, ensgate, repoRoot(t), env, args...)
	return result{r.Stdout, r.Stderr, r.Code}
}

var (
	baseEnv  = gateway.BaseEnv
	freeAddr = gateway.FreeAddr
	waitFor  = gateway.WaitFor
)

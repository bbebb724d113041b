// Package exchangelib runs a real third-party EWS client in tests: Debian's
// python3-exchangelib, driven by client.py beside this file, which reads an
// Inbox's unread count and newest messages and prints them as JSON.
package exchangelib

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/ensgate/ensgate/internal/testenv"
)

// python is Debian's interpreter: python3-exchangelib installs into its
// dist-packages, which a pyenv or virtualenv python on PATH does not see.
const python = "/usr/bin/python3"

// missing is why exchangelib cannot be used, or "" if it can; checked once,
// as starting Python takes a while.
var missing = sync.OnceValue(func() string {
	out, err := exec.Command(python, "-I", "-c", "import exchangelib").CombinedOutput()
	if err == nil {
		return ""
	}
	return "exchangelib is not importable by " + python + " (apt-get install -y python3-exchangelib): " +
		strings.TrimSpace(err.Error()+" "+string(out))
})

// Require skips the test when exchangelib is not installed, unless CI or
// ENSGATE_REQUIRE_EXCHANGELIB is set: there a missing client must fail the
// run rather than silently drop the interoperability check.
func Require(t testenv.TB) {
	t.Helper()
	msg := missing()
	if msg == "" {
		return
	}
	for _, v := range []string{"CI", "ENSGATE_REQUIRE_EXCHANGELIB"} {
		if os.Getenv(v) != "" {
			t.Fatalf("%s is set, so the exchangelib client is required: %s", v, msg)
		}
	}
	t.Skip(msg)
}

// Command prepares client.py with args (see its --help); the password goes
// in its environment, not on the command line.
func Command(t testenv.TB, password string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "client.py")
	// -I: ignore PYTHONPATH and user site-packages, which a pyenv setup may point elsewhere.
	cmd := exec.CommandContext(ctx, python, append([]string{"-I", script}, args...)...)
	cmd.Env = append(os.Environ(), "EWS_PASSWORD="+password)
	return cmd
}

// Inbox is what client.py prints.
type Inbox struct {
	Unread   int `json:"unread"`
	Messages []struct {
		Subject  string `json:"subject"`
		From     string `json:"from"`
		FromName string `json:"fromName"`
	} `json:"messages"`
}

// Read runs client.py and decodes its answer; on failure the error holds
// the client's one-line complaint.
func Read(t testenv.TB, url, user, password string, args ...string) (Inbox, error) {
	t.Helper()
	cmd := Command(t, password, append([]string{"--url", url, "--user", user}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Inbox{}, fmt.Errorf("exchangelib client: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	var inbox Inbox
	if err := json.Unmarshal(out, &inbox); err != nil {
		return Inbox{}, fmt.Errorf("exchangelib client printed %q: %v", out, err)
	}
	return inbox, nil
}

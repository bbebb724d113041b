package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

// The device API's rate limits are keyed by the client address Caddy finds,
// which honours trusted_proxies: behind a load balancer, one client's flood
// is refused while another client of the same tenant is served.
func TestRateLimitIsPerClientBehindATrustedProxy(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	env := []string{"DATABASE_URL=" + dbURL, "ENS_MASTER_KEY=" + randomKey(t)}
	if r := cli(t, env, "ens", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %+v", r)
	}
	r := cli(t, env, "ens", "tenant", "create", "--name", "contoso")
	if r.code != 0 {
		t.Fatalf("tenant create: %+v", r)
	}
	token := lastLine(r.stdout)

	listen := freeAddr(t)
	config := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(config, fmt.Appendf(nil, `{
	admin off
	servers {
		trusted_proxies static 127.0.0.1/32
		client_ip_headers X-Forwarded-For
	}
	ens {
		database_url {env.DATABASE_URL}
		master_key {env.ENS_MASTER_KEY}
		public_url http://%[1]s
		rate_limit 1
	}
}

http://%[1]s {
	ens
}
`, listen), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ensgate, "run", "--config", config)
	cmd.Env = append(baseEnv(), env...)
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		if t.Failed() {
			t.Logf("ensgate output:\n%s", logs.String())
		}
	})
	base := "http://" + listen
	waitFor(t, base+"/api/ens/alive", http.StatusOK, 30*time.Second).Body.Close()

	status := func(client, device string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", base+"/api/ens/status?deviceId="+device, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("X-Forwarded-For", client)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	limited := 0
	for i := range 10 {
		if status("192.0.2.1", fmt.Sprintf("random-%d", i)) == http.StatusTooManyRequests {
			limited++
		}
	}
	if limited == 0 {
		t.Fatal("10 requests at once from one client under rate_limit 1 were all served")
	}
	if got := status("192.0.2.2", "phone"); got == http.StatusTooManyRequests {
		t.Fatalf("another client behind the same proxy got %d during the flood", got)
	}
	if strings.Contains(logs.String(), token) {
		t.Error("the API token appears in ensgate's output")
	}
}

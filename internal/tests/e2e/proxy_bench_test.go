package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

// BenchmarkProxyOverhead measures requests per second through ews_proxy
// (compliance check, operation peek, auth-header policy) and, in the same
// run against the same upstream, through a plain Caddy reverse_proxy,
// alternating bursts of 500 requests from 16 clients between the two.
func BenchmarkProxyOverhead(b *testing.B) {
	dbURL := pgtest.NewDatabase(b)
	for _, args := range [][]string{{"ens", "migrate"}, {"ens", "tenant", "create", "--name", "contoso"},
		{"ens", "device", "unblock", "--tenant", "contoso", "--device", "bench-phone"}} {
		if r := cli(b, []string{"DATABASE_URL=" + dbURL}, args...); r.code != 0 {
			b.Fatalf("%v: %+v", args, r)
		}
	}
	answer := []byte(strings.Repeat("<t:Folder/>", 100)) // a small EWS-sized answer
	exchange := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Add("WWW-Authenticate", "NTLM")
		w.Header().Add("WWW-Authenticate", `Basic realm="x"`)
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.Write(answer)
	}))
	defer exchange.Close()

	listen := freeAddr(b)
	caddyfile := fmt.Sprintf(`{
	admin %s
	ens {
		database_url {env.DATABASE_URL}
		master_key {env.ENS_MASTER_KEY}
		public_url http://%s
	}
}
http://%s {
	log_skip
	handle /EWS/* {
		ews_proxy %s {
			device_id_header X-Device-Id
		}
	}
	handle /plain/* {
		reverse_proxy %s
	}
}
`, freeAddr(b), listen, listen, exchange.URL, exchange.URL)
	file := filepath.Join(b.TempDir(), "Caddyfile")
	os.WriteFile(file, []byte(caddyfile), 0o600)
	cmd := exec.Command(ensgate, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(baseEnv(), "DATABASE_URL="+dbURL, "ENS_MASTER_KEY="+randomKey(b))
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	base := "http://" + listen
	waitFor(b, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	// burst sends n requests to path from 16 concurrent clients and
	// returns how long they took.
	burst := func(path string, n int) time.Duration {
		const workers = 16
		var next, failed atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Go(func() {
				for next.Add(1) <= int64(n) {
					req, _ := http.NewRequest("POST", base+path, strings.NewReader(getFolder))
					req.Header.Set("X-Device-Id", "bench-phone")
					req.Header.Set("Content-Type", "text/xml; charset=utf-8")
					resp, err := client.Do(req)
					if err != nil || resp.StatusCode != 200 {
						failed.Add(1)
					}
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			})
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			b.Fatalf("%d requests to %s failed; gateway log:\n%s", n, path, logs.String())
		}
		return time.Since(start)
	}
	// Bursts of both routes alternate, so that both see the same machine
	// (other load, CPU frequency, GC) over the run.
	const round = 500
	burst("/plain/EWS/Exchange.asmx", round) // warm-up: connections, code paths
	burst("/EWS/Exchange.asmx", round)
	var plain, ews time.Duration
	rounds := 0
	for i := 0; b.Loop(); i++ {
		if i%round == 0 { // b.N requests per route, in rounds
			plain += burst("/plain/EWS/Exchange.asmx", round)
			ews += burst("/EWS/Exchange.asmx", round)
			rounds++
		}
	}
	total := float64(rounds * round)
	b.ReportMetric(total/plain.Seconds(), "reverse_proxy-req/s")
	b.ReportMetric(total/ews.Seconds(), "ews_proxy-req/s")
	b.ReportMetric(100*plain.Seconds()/ews.Seconds(), "ews_proxy-%-of-plain")
	b.ReportMetric(0, "ns/op")
}

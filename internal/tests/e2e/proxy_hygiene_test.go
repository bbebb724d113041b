package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

// exchangeRecorder stands for Exchange and records every request that
// reaches it: the request target as sent, and the body's size.
type exchangeRecorder struct {
	*httptest.Server
	mu   sync.Mutex
	seen []string
}

func newExchangeRecorder(t *testing.T) *exchangeRecorder {
	e := &exchangeRecorder{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		e.mu.Lock()
		e.seen = append(e.seen, fmt.Sprintf("%s %s (%d bytes)", r.Method, r.RequestURI, n))
		e.mu.Unlock()
		io.WriteString(w, "<ok/>")
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *exchangeRecorder) requests() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.seen...)
}

// setUpDatabase migrates a new database and runs CLI commands on it.
func setUpDatabase(t *testing.T, commands ...[]string) string {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	for _, args := range append([][]string{{"ens", "migrate"}}, commands...) {
		if r := cli(t, []string{"DATABASE_URL=" + dbURL}, args...); r.code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	return dbURL
}

// proxyCaddyfile writes a Caddyfile whose site sends every path to
// ews_proxy (as a host dedicated to EWS would), with extra subdirectives.
func proxyCaddyfile(t *testing.T, upstream, extra string) (file, base string) {
	listen := freeAddr(t)
	base = "http://" + listen
	text := fmt.Sprintf(`{
	admin %s
	ens {
		database_url {env.DATABASE_URL}
		master_key {env.ENS_MASTER_KEY}
		public_url %s
	}
}
%s {
	bind 127.0.0.1
	ews_proxy %s {
		device_id_header X-Device-Id
%s
	}
}
`, freeAddr(t), base, base, upstream, extra)
	file = filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return file, base
}

// startProxy runs bin/ensgate with a proxyCaddyfile until the test ends.
func startProxy(t *testing.T, dbURL, upstream, extra string) string {
	t.Helper()
	file, base := proxyCaddyfile(t, upstream, extra)
	cmd := exec.Command(ensgate, "run", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(baseEnv(), "DATABASE_URL="+dbURL, "ENS_MASTER_KEY="+randomKey(t))
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("ensgate output:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/EWS/Services.wsdl")
		if err == nil {
			resp.Body.Close()
			return base
		}
		if time.Now().After(deadline) {
			t.Fatalf("the gateway did not answer within 30 s (%v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// send posts body (of length n; -1: chunked) to base+target as device.
func send(t *testing.T, base, target, device string, body io.Reader, n int64) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", base+target, body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = n
	req.Header.Set("X-Device-Id", device)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var traversals = []string{
	`/EWS/..%5cowa/auth/logon.aspx`,
	`/EWS/..%5c..%5cecp/default.aspx`,
	`/EWS/%2e%2e/owa/`,
	`/EWS/..%2fowa`,
}

// Paths that IIS would resolve outside /EWS/ (it turns '\' into '/') get
// 400 from the proxy and never reach Exchange.
func TestProxyRefusesPathsThatLeaveEWS(t *testing.T) {
	dbURL := setUpDatabase(t, []string{"ens", "tenant", "create", "--name", "contoso"},
		[]string{"ens", "device", "unblock", "--tenant", "contoso", "--device", "phone"})
	exchange := newExchangeRecorder(t)
	base := startProxy(t, dbURL, exchange.URL, "")
	for _, target := range append(traversals, `/EWS/Exchange.asmx%00.txt`, `/EWS/a%2fb`, `/owa/auth/logon.aspx`) {
		status, body := send(t, base, target, "phone", strings.NewReader(getFolder), int64(len(getFolder)))
		if status != http.StatusBadRequest || !strings.HasPrefix(body, "Bad request path: it contains ") {
			t.Errorf("%s: %d %q", target, status, body)
		}
	}
	if got := exchange.requests(); len(got) != 0 {
		t.Errorf("Exchange got %q", got)
	}
	status, _ := send(t, base, "/EWS/Exchange%2Easmx", "phone", strings.NewReader(getFolder), int64(len(getFolder)))
	want := fmt.Sprintf("POST /EWS/Exchange.asmx (%d bytes)", len(getFolder))
	if got := exchange.requests(); status != 200 || len(got) != 1 || got[0] != want {
		t.Errorf("a good path, encoded: %d, Exchange got %q, want %q", status, got, want)
	}

	// With Caddyfile.example (ews_proxy under `handle /EWS/*`), Caddy's
	// own path matcher already resolves the decoded dots, so some of these
	// get its 404 instead; none reaches Exchange either way.
	exampleExchange := newExchangeRecorder(t)
	env, exampleBase := gatewayEnv(t, dbURL, exampleExchange.URL)
	startGateway(t, env)
	waitFor(t, exampleBase+"/api/ens/alive", 200, 30*time.Second).Body.Close()
	for _, target := range traversals {
		status, body := send(t, exampleBase, target, "phone", strings.NewReader(getFolder), int64(len(getFolder)))
		backslash := strings.Contains(target, "%5c")
		if (backslash && status != http.StatusBadRequest) || (!backslash && status != http.StatusBadRequest && status != http.StatusNotFound) {
			t.Errorf("Caddyfile.example, %s: %d %q", target, status, body)
		}
	}
	if got := exampleExchange.requests(); len(got) != 0 {
		t.Errorf("Exchange behind Caddyfile.example got %q", got)
	}
}

// postZeros posts n zero bytes to base+target as device, with a
// Content-Length or chunked, over a raw connection: the answer is read
// even if the gateway answers before the body is all sent, and stops
// reading it (net/http's client reports the failed write instead).
func postZeros(t *testing.T, base, target, device string, n int, chunked bool) (int, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	framing := fmt.Sprintf("Content-Length: %d", n)
	if chunked {
		framing = "Transfer-Encoding: chunked"
	}
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nX-Device-Id: %s\r\nContent-Type: text/xml\r\n%s\r\n\r\n",
		target, strings.TrimPrefix(base, "http://"), device, framing)
	go func() {
		chunk := make([]byte, 64<<10)
		for left := n; left > 0; left -= len(chunk) {
			part := chunk[:min(len(chunk), left)]
			var err error
			if chunked {
				_, err = fmt.Fprintf(conn, "%x\r\n%s\r\n", len(part), part)
			} else {
				_, err = conn.Write(part)
			}
			if err != nil {
				return // the gateway stopped reading
			}
		}
		if chunked {
			io.WriteString(conn, "0\r\n\r\n")
		}
	}()
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("POST %s: %v", target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A body over max_request_body gets 413: refused before it is read when
// its length is declared, cut off at the limit when it is chunked.
func TestProxyRefusesBodiesOverItsLimit(t *testing.T) {
	dbURL := setUpDatabase(t, []string{"ens", "tenant", "create", "--name", "contoso"},
		[]string{"ens", "device", "unblock", "--tenant", "contoso", "--device", "phone"})
	exchange := newExchangeRecorder(t)
	base := startProxy(t, dbURL, exchange.URL, "max_request_body 1MiB")
	const limit = 1 << 20

	for _, chunked := range []bool{false, true} {
		status, body := postZeros(t, base, "/EWS/Exchange.asmx", "phone", limit, chunked)
		if status != 200 || body != "<ok/>" {
			t.Fatalf("a body at the limit (chunked %v): %d %q", chunked, status, body)
		}
	}
	if got := exchange.requests(); len(got) != 2 {
		t.Fatalf("Exchange got %q, want both bodies at the limit", got)
	}
	status, body := postZeros(t, base, "/EWS/Exchange.asmx", "phone", 30<<20, false)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(body, "at most 1048576 bytes") {
		t.Errorf("30 MB, declared: %d %q", status, body)
	}
	if got := exchange.requests(); len(got) != 2 {
		t.Errorf("the declared 30 MB reached Exchange: %q", got)
	}
	status, body = postZeros(t, base, "/EWS/Exchange.asmx", "phone", 30<<20, true)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(body, "at most 1048576 bytes") {
		t.Errorf("30 MB, chunked: %d %q", status, body)
	}
	time.Sleep(100 * time.Millisecond) // the cut-off request, if Exchange saw it start
	for _, r := range exchange.requests()[2:] {
		var n int
		if _, err := fmt.Sscanf(r[strings.Index(r, "(")+1:], "%d", &n); err != nil || n > limit {
			t.Errorf("Exchange got %q, over the limit", r)
		}
	}
}

// A route given a tenant judges devices by that tenant's states only;
// without one, a device id blocked in any tenant is refused.
func TestProxyRouteWithATenant(t *testing.T) {
	dbURL := setUpDatabase(t,
		[]string{"ens", "tenant", "create", "--name", "a"}, []string{"ens", "tenant", "create", "--name", "b"},
		[]string{"ens", "device", "unblock", "--tenant", "a", "--device", "phone-1"},
		[]string{"ens", "device", "block", "--tenant", "b", "--device", "phone-1"},
		[]string{"ens", "device", "block", "--tenant", "a", "--device", "phone-2"},
		[]string{"ens", "device", "unblock", "--tenant", "b", "--device", "phone-2"})
	exchange := newExchangeRecorder(t)
	withA := startProxy(t, dbURL, exchange.URL, "tenant a")
	withNone := startProxy(t, dbURL, exchange.URL, "")
	for _, tc := range []struct {
		base, route, device string
		want                int
	}{
		{withA, "tenant a", "phone-1", 200}, // blocked in b only
		{withA, "tenant a", "phone-2", 403}, // blocked in a
		{withNone, "no tenant", "phone-1", 403},
		{withNone, "no tenant", "phone-2", 403},
	} {
		if status, body := send(t, tc.base, "/EWS/Exchange.asmx", tc.device, strings.NewReader(getFolder), int64(len(getFolder))); status != tc.want {
			t.Errorf("%s, %s: %d, want %d: %.200s", tc.route, tc.device, status, tc.want, body)
		}
	}
	if got := exchange.requests(); len(got) != 1 {
		t.Errorf("Exchange got %q, want only phone-1's request through tenant a", got)
	}

	file, _ := proxyCaddyfile(t, exchange.URL, "tenant nosuch")
	r := cli(t, []string{"DATABASE_URL=" + dbURL, "ENS_MASTER_KEY=" + randomKey(t)}, "validate", "--config", file, "--adapter", "caddyfile")
	if r.code == 0 || !strings.Contains(r.stderr, "nosuch") || !strings.Contains(r.stderr, "does not exist") {
		t.Errorf("an unknown tenant: exit %d, %s", r.code, r.stderr)
	}
}

// The kerberos block that Caddyfile.example shows maps a certificate to a
// user by its UPN only: an e-mail address (which an S/MIME certificate
// from the same CA carries) is not an identity unless an admin opts in.
func TestCaddyfileExampleMapsCertificatesByUPNOnly(t *testing.T) {
	example, err := os.ReadFile(filepath.Join(repoRoot(t), "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, line := range strings.Split(string(example), "\n") {
		trimmed := strings.TrimLeft(line, "\t")
		if rest, ok := strings.CutPrefix(trimmed, "# "); ok && (strings.HasPrefix(rest, "kerberos {") || strings.HasPrefix(rest, "\t") || rest == "}") {
			line = line[:len(line)-len(trimmed)] + rest
		}
		lines = append(lines, line)
	}
	file := filepath.Join(t.TempDir(), "Caddyfile")
	os.WriteFile(file, []byte(strings.Join(lines, "\n")), 0o600)
	r := cli(t, nil, "adapt", "--config", file, "--adapter", "caddyfile")
	if r.code != 0 {
		t.Fatalf("adapt: %+v", r)
	}
	if !bytes.Contains([]byte(r.stdout), []byte(`"identity":["upn"]`)) {
		t.Errorf("the example's kerberos block maps certificates by more than the UPN:\n%s", r.stdout)
	}
}

package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// These tests run Caddy in this process (caddytest, admin endpoint on
// localhost:2999) against a real PostgreSQL.

// complianceDB returns a migrated database whose tenant has a compliant
// device "good" and a blocked device "bad", and a store on it.
func complianceDB(t *testing.T) (string, *store.Store) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	s, err := store.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	tenant, _, err := s.CreateTenant(ctx, "contoso", 0)
	if err != nil {
		t.Fatal(err)
	}
	for id, state := range map[string]string{"good": store.Compliant, "bad": store.Blocked} {
		if err := s.SetCompliance(ctx, tenant.ID, id, state); err != nil {
			t.Fatal(err)
		}
	}
	return url, s
}

// exchange is the upstream: it answers every request it gets with <ok/>.
func exchange(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "<ok/>")
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// loadCaddy loads a Caddyfile whose global options begin with the test
// admin endpoint; when the test ends, a config without our modules
// replaces it, so the shared cache and pool let go of the database.
func loadCaddy(t *testing.T, tester *caddytest.Tester, globals, sites string) {
	t.Helper()
	tester.InitServer("{\n\tadmin localhost:2999\n"+globals+"}\n"+sites, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() { tester.InitServer("{\n\tadmin localhost:2999\n}\n", "caddyfile") })
}

// ensApp is the global ens option on the database.
func ensApp(databaseURL string) string {
	return fmt.Sprintf("\tens {\n\t\tdatabase_url %s\n\t\tmaster_key %s\n\t\tpublic_url http://localhost\n\t\tkey_pool_size 1\n\t}\n", databaseURL, goodKey)
}

// ask sends an EWS request from device to the node and returns the status
// and body (status 0 and the error if there is no answer).
func ask(client *http.Client, url, device string) (int, string) {
	req, _ := http.NewRequest("POST", url, strings.NewReader("<soap/>"))
	req.Header.Set("X-Device-Id", device)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// listeners counts the database's connections that LISTEN for compliance
// changes (a listening connection's last statement is its LISTEN).
func listeners(t *testing.T, s *store.Store) int {
	t.Helper()
	var n int
	err := s.Pool().QueryRow(context.Background(),
		"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
		"LISTEN "+store.ComplianceChannel).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sharedCacheOf returns the compliance cache shared for the database, or nil.
func sharedCacheOf(databaseURL string) *compliance.Cache {
	var c *compliance.Cache
	caches.Range(func(k, v any) bool {
		if k == databaseURL {
			c = v.(sharedCache).Cache
		}
		return true
	})
	return c
}

// A request that reaches a node the moment its config is running is
// judged by the compliance states, however the apps were started: it is
// neither refused with 503 nor let through unchecked. The states table is
// locked while the config loads, so the cache's first load cannot finish
// before the requests arrive.
func TestProxyAnswersRequestsAtStartUpWithTheLoadedStates(t *testing.T) {
	ctx := context.Background()
	url, s := complianceDB(t)
	tx, err := s.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE device_compliance IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}

	tester := caddytest.NewTester(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	loadCaddy(t, tester, ensApp(url), fmt.Sprintf("%s {\n\tews_proxy /EWS/* %s {\n\t\tdevice_id_header X-Device-Id\n\t}\n}\n", site, exchange(t)))

	type answer struct {
		status int
		body   string
	}
	answers := map[string]chan answer{"good": make(chan answer, 1), "bad": make(chan answer, 1)}
	for device, ch := range answers {
		go func() {
			status, body := ask(tester.Client, site+"/EWS/Exchange.asmx", device)
			ch <- answer{status, body}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	for device, ch := range answers {
		select {
		case a := <-ch:
			t.Fatalf("%s was answered %d before the states were loaded: %s", device, a.status, a.body)
		default:
		}
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-answers["good"]; a.status != 200 || a.body != "<ok/>" {
		t.Errorf("the compliant device got %d %q, want Exchange's answer", a.status, a.body)
	}
	if a := <-answers["bad"]; a.status != 403 {
		t.Errorf("the blocked device got %d %q, want 403", a.status, a.body)
	}
}

// The ens app and every ews_proxy handler on one database share one
// compliance cache, and so one LISTEN connection, across reloads; it runs
// while any of them is loaded and stops with the last.
func TestModulesShareOneComplianceCachePerDatabase(t *testing.T) {
	url, s := complianceDB(t)
	upstream := exchange(t)
	tester := caddytest.NewTester(t)
	site, other := fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	proxy := "%s {\n\tews_proxy /EWS/* %s {\n\t\tdevice_id_header X-Device-Id\n\t}\n}\n"
	loadCaddy(t, tester, ensApp(url), fmt.Sprintf(proxy, site, upstream)+fmt.Sprintf(proxy, other, upstream))
	for _, node := range []string{site, other} {
		if status, body := ask(tester.Client, node+"/EWS/Exchange.asmx", "good"); status != 200 {
			t.Fatalf("%s: %d %s", node, status, body)
		}
	}
	if n, _ := caches.References(url); n != 3 {
		t.Errorf("%d references to the database's cache, want 3 (the ens app and two ews_proxy handlers)", n)
	}
	if n := listeners(t, s); n != 1 {
		t.Errorf("%d LISTEN connections, want 1", n)
	}
	cache := sharedCacheOf(url)

	// A reload to a config without the ens app keeps the same cache: the
	// handler takes its own database_url.
	loadCaddy(t, tester, "", fmt.Sprintf("%s {\n\tews_proxy /EWS/* %s {\n\t\tdevice_id_header X-Device-Id\n\t\tdatabase_url %s\n\t}\n}\n", site, upstream, url))
	if status, body := ask(tester.Client, site+"/EWS/Exchange.asmx", "bad"); status != 403 {
		t.Fatalf("the blocked device after the reload: %d %s", status, body)
	}
	if c := sharedCacheOf(url); c != cache {
		t.Error("the reload replaced the compliance cache")
	}
	if n := listeners(t, s); n != 1 {
		t.Errorf("%d LISTEN connections after the reload, want 1", n)
	}

	tester.InitServer("{\n\tadmin localhost:2999\n}\n", "caddyfile")
	if c := sharedCacheOf(url); c != nil {
		t.Error("the cache outlived its last user")
	}
	deadline := time.Now().Add(5 * time.Second)
	for listeners(t, s) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the LISTEN connection outlived the cache's last user")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ews_proxy resolves its own database_url and proxy_secret; without the ens
// app to take them from, it needs a database, and a secret is checked as
// the app checks its own.
func TestProxyResolvesItsOwnSettings(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()}) // no config: no ens app
	defer cancel()
	t.Setenv("TEST_DB", "postgres://ens@db/ens")
	t.Setenv("TEST_SECRET", strings.Repeat("s", 32))
	h := &EWSProxy{DatabaseURL: "{env.TEST_DB}", ProxySecret: "{env.TEST_SECRET}"}
	if secret, err := h.settings(ctx); err != nil || h.databaseURL != "postgres://ens@db/ens" || string(secret) != strings.Repeat("s", 32) {
		t.Errorf("resolved %q, %q, %v", h.databaseURL, secret, err)
	}
	for _, tc := range []struct {
		h    EWSProxy
		want string
	}{
		{EWSProxy{}, "ews_proxy: database_url is required without the ens app"},
		{EWSProxy{DatabaseURL: "postgres://x", ProxySecret: "short"}, "ews_proxy: proxy_secret is too short (5 characters)"},
	} {
		if _, err := tc.h.settings(ctx); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.h, err, tc.want)
		}
	}
}

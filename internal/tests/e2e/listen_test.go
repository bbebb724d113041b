package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
)

// adapted is the part of an adapted config these tests look at.
type adapted struct {
	Admin struct {
		Listen string `json:"listen"`
	} `json:"admin"`
	Apps struct {
		HTTP struct {
			Servers map[string]struct {
				Listen []string `json:"listen"`
			} `json:"servers"`
		} `json:"http"`
	} `json:"apps"`
}

func adaptExample(t *testing.T, env []string) adapted {
	t.Helper()
	r := cli(t, env, "adapt", "--config", "Caddyfile.example")
	if r.code != 0 {
		t.Fatalf("adapt: %+v", r)
	}
	var cfg adapted
	if err := json.Unmarshal([]byte(r.stdout), &cfg); err != nil {
		t.Fatalf("adapt output is not JSON: %v", err)
	}
	return cfg
}

// listens returns the listen addresses of every server.
func (c adapted) listens() []string {
	var all []string
	for _, s := range c.Apps.HTTP.Servers {
		all = append(all, s.Listen...)
	}
	return all
}

// Caddy's admin endpoint can load a config that reveals every secret of the
// process environment, so the shipped configuration puts it on a unix
// socket only its user may open, never on a TCP port.
func TestCaddyAdminEndpointIsAPrivateSocket(t *testing.T) {
	if admin := adaptExample(t, nil).Admin.Listen; admin != "unix//run/ensgate/admin.sock|0600" {
		t.Errorf("Caddyfile.example's admin endpoint is %q, want a unix socket with mode 0600", admin)
	}

	dbURL := pgtest.NewDatabase(t)
	if r := cli(t, []string{"DATABASE_URL=" + dbURL}, "ens", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %+v", r)
	}
	env, base := gatewayEnv(t, dbURL, "http://127.0.0.1:1")
	startGateway(t, env)
	waitFor(t, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()
	socket := envValue(env, "ENS_CADDY_ADMIN_SOCKET")
	info, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Type() != os.ModeSocket || info.Mode().Perm() != 0o600 {
		t.Errorf("the admin socket is %v, want a socket with mode 0600", info.Mode())
	}
	// It answers its own user, through the socket only.
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	resp, err := client.Get("http://localhost/config/admin")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "unix/") {
		t.Errorf("GET /config/admin through the socket: %d %s", resp.StatusCode, body)
	}
}

// A site address names the Host a site answers, it does not bind: with
// ENS_LISTEN=http://127.0.0.1:PORT the node still listened on every
// interface. ENS_BIND binds; without it a node listens everywhere, as
// before.
func TestListenBindsToENSBind(t *testing.T) {
	def := adaptExample(t, nil)
	want := map[string]bool{":8080": true, "127.0.0.1:8090": true}
	if l := def.listens(); len(l) != 2 || !want[l[0]] || !want[l[1]] {
		t.Errorf("default listeners %v, want :8080 (every interface) and the admin API on 127.0.0.1:8090", l)
	}

	dbURL := pgtest.NewDatabase(t)
	if r := cli(t, []string{"DATABASE_URL=" + dbURL}, "ens", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %+v", r)
	}
	env, base := gatewayEnv(t, dbURL, "http://127.0.0.1:1")
	env = append(env, "ENS_BIND=127.0.0.1")
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(base, "http://"))
	bound := adaptExample(t, env)
	for _, l := range bound.listens() {
		if !strings.HasPrefix(l, "127.0.0.1:") {
			t.Errorf("with ENS_BIND=127.0.0.1 a server listens on %q", l)
		}
	}

	startGateway(t, env)
	waitFor(t, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()
	other := otherLocalAddress(t)
	if other == "" {
		t.Log("no local address besides loopback: the refusal from another interface is not checked")
		return
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(other, port), 2*time.Second)
	if err == nil {
		conn.Close()
		t.Errorf("with ENS_BIND=127.0.0.1 the node accepts connections on %s:%s", other, port)
	}
}

// otherLocalAddress is an address of this machine that is not loopback, or
// "" if it has none.
func otherLocalAddress(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && !ip.IP.IsLoopback() && ip.IP.To4() != nil {
			return ip.IP.String()
		}
	}
	return ""
}

// The admin API has a listener of its own (loopback by default); the public
// site does not serve it. Failed logins from one address are limited.
func TestAdminAPIHasItsOwnListener(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	db := []string{"DATABASE_URL=" + dbURL}
	if r := cli(t, db, "ens", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %+v", r)
	}
	if r := cli(t, db, "ens", "tenant", "create", "--name", "contoso"); r.code != 0 {
		t.Fatalf("tenant create: %+v", r)
	}
	env, base := gatewayEnv(t, dbURL, "http://127.0.0.1:1")
	startGateway(t, env)
	waitFor(t, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()
	adminBase := "http://127.0.0.1:" + envValue(env, "ENS_ADMIN_API_PORT")
	token := envValue(env, "ENS_ADMIN_TOKEN")
	get := func(url, auth string) (int, http.Header) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	const devices = "/api/ens/admin/tenants/contoso/devices"
	if status, _ := get(base+devices, "Bearer "+token); status != http.StatusNotFound {
		t.Errorf("the public site serves the admin API: %d", status)
	}
	if status, _ := get(adminBase+devices, "bearer "+token); status != http.StatusOK {
		t.Errorf("the admin API on its own listener (lower-case bearer): %d", status)
	}
	if status, _ := get(adminBase+"/api/ens/alive", ""); status != http.StatusNotFound {
		t.Errorf("the admin listener serves the device API: %d", status)
	}
	for i := range 10 {
		if status, _ := get(adminBase+devices, "Bearer wrong"); status != http.StatusUnauthorized {
			t.Fatalf("wrong admin token %d: %d", i+1, status)
		}
	}
	status, header := get(adminBase+devices, "Bearer "+token)
	if status != http.StatusTooManyRequests || header.Get("Retry-After") == "" {
		t.Errorf("after 10 failed logins: %d, Retry-After %q; want 429 with Retry-After", status, header.Get("Retry-After"))
	}
}

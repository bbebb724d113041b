package cluster

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/apnsfake"
	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/sim/fcmfake"
	"github.com/ensgate/ensgate/internal/testenv/gateway"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
	"github.com/ensgate/ensgate/internal/testenv/testca"
)

// clockScale is the wall-clock length of one Exchange minute (unless a
// scenario's options say otherwise). Exchange
// retries a failed callback after 30 s, then doubling, and drops the
// subscription once the failures last longer than StatusFrequency (15
// minutes): at this scale its last retry comes 75 s after the first
// failure, after a dead node's 45 s push claims have expired.
const clockScale = 10 * time.Second

// pushLatency is how long APNs and FCM take to answer a push.
const pushLatency = 20 * time.Millisecond

// maxRSS is a generous bound on a node's peak resident memory in a burst.
const maxRSS = 512 << 20

// cluster is two ENSGate nodes behind nginx on one PostgreSQL, with the
// Exchange simulator and the APNs and FCM fakes.
type cluster struct {
	t       *testing.T
	db      *pgtest.Server
	standby *pgtest.Server // nil unless asked for
	sim     *ewssim.TestServer
	apns    *apnsfake.Server
	fcm     *fcmfake.Server
	lb      string // the balancer's base URL: ENS_PUBLIC_URL
	dbURL   string // the nodes' DATABASE_URL: the test reads river_job and push_claims through it
	nodes   []*node
	token   string // the tenant's API token
	devices *deviceclient.Client
	// mailboxes are the simulator's users, each with an iOS and an
	// Android device.
	mailboxes []string
	// sent lists the subjects delivered to each mailbox.
	sent map[string][]string
	// mailboxHash is each mailbox's hash, as the devices table holds it:
	// with an item's id it gives the item's collapse id.
	mailboxHash map[string][]byte

	mu sync.Mutex
	// items are the mails Exchange holds, by collapse id: a push sent
	// from a job says "New message" only, its collapse id names the item.
	items map[string]mail
}

// mail is one mail delivered to a mailbox, with its unique subject.
type mail struct{ mailbox, subject string }

type node struct {
	name string
	base string
	cmd  *exec.Cmd
	logs *syncbuf.Buffer
	// peakKB is VmHWM read before the node was killed, 0 while it runs.
	peakKB int64
}

type options struct {
	mailboxes int
	standby   bool // a streaming standby; DATABASE_URL names both
	// clockScale is the wall-clock length of one Exchange minute (0:
	// clockScale).
	clockScale time.Duration
}

// newCluster starts everything, migrates the database, creates the
// tenant and registers the devices through the balancer.
func newCluster(t *testing.T, opts options) *cluster {
	t.Helper()
	nginx := nginxBinary(t)
	c := &cluster{t: t, sent: map[string][]string{}, items: map[string]mail{}}
	c.db = pgtest.NewServer(t)
	dbURL := c.db.URL()
	if opts.standby {
		c.standby = c.db.NewStandby(t)
		dbURL = pgtest.MultiHostURL(c.db, c.standby)
	}

	users := make([]ewssim.User, opts.mailboxes)
	for i := range users {
		users[i] = ewssim.User{Address: fmt.Sprintf("user%d@contoso.test", i+1), Password: fmt.Sprintf("pw-%d", i+1)}
		c.mailboxes = append(c.mailboxes, users[i].Address)
	}
	c.dbURL = dbURL
	c.sim = ewssim.Start(t, ewssim.Config{Users: users, ClockScale: cmp.Or(opts.clockScale, clockScale)})
	pushEnv := c.startFakes()

	db := []string{"DATABASE_URL=" + dbURL}
	for _, args := range [][]string{{"ens", "migrate"}, {"ens", "tenant", "create", "--name", "contoso", "--level", "1"}} {
		r := gateway.CLI(t, ensgate, gateway.RepoRoot(t), db, args...)
		if r.Code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
		c.token = lastLine(r.Stdout)
	}
	if r := gateway.CLI(t, ensgate, gateway.RepoRoot(t), db, "ens", "endpoint", "add", "--tenant", "contoso", "--url", c.sim.EWSURL); r.Code != 0 {
		t.Fatalf("endpoint add: %+v", r)
	}

	// Both nodes share the database and the master key; Exchange calls
	// back through the balancer. B starts once A is ready, so that A's
	// job client (River's id: the host and its start time) sorts first.
	c.lb = "http://" + gateway.FreeAddr(t)
	masterKey := gateway.RandomKey(t)
	for _, name := range []string{"A", "B"} {
		env, base := gateway.Env(t, dbURL, c.sim.URL)
		env = append(env, pushEnv...)
		env = append(env, "ENS_PUBLIC_URL="+c.lb, "ENS_MASTER_KEY="+masterKey)
		n := &node{name: name, base: base}
		n.cmd, n.logs = gateway.Run(t, ensgate, gateway.RepoRoot(t), env, "Caddyfile.example")
		c.nodes = append(c.nodes, n)
		gateway.WaitFor(t, n.base+"/api/ens/ready", http.StatusOK, 60*time.Second).Body.Close()
	}
	startNginx(t, nginx, c.lb, c.nodes)
	gateway.WaitFor(t, c.lb+"/api/ens/ready", http.StatusOK, 30*time.Second).Body.Close()

	c.devices = &deviceclient.Client{BaseURL: c.lb + "/api/ens", Token: c.token}
	for _, mb := range c.mailboxes {
		for _, platform := range []string{"ios", "android"} {
			c.register(c.devices, mb, platform+"-"+mb, platform)
		}
	}
	c.mailboxHash = c.mailboxHashes()
	return c
}

// startFakes starts APNs and FCM over TLS with a CA of the test's own and
// returns the ENS_APNS_*, ENS_FCM_* and SSL_CERT_FILE settings for them.
func (c *cluster) startFakes() []string {
	t := c.t
	dir := t.TempDir()
	ca, err := testca.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueServer()
	if err != nil {
		t.Fatal(err)
	}
	key, err := apnsfake.NewKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c.apns, err = apnsfake.New(apnsfake.Config{Addr: "127.0.0.1:0", Keys: []*apnsfake.Key{key}, TLSCert: &cert}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.apns.Close)
	if c.fcm, err = fcmfake.New(fcmfake.Config{Addr: "127.0.0.1:0", ProjectID: "ensgate-cluster", TLSCert: &cert}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.fcm.Close)
	// Pushes take a while, as over the Internet: a crash finds some in
	// flight.
	c.apns.SetLatency(pushLatency)
	c.fcm.SetLatency(pushLatency)
	creds, err := c.fcm.WriteCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(bundle, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{
		"ENS_APNS_URL=" + c.apns.URL, "ENS_APNS_KEY_FILE=" + key.Path, "ENS_APNS_KEY_ID=" + key.ID,
		"ENS_APNS_TEAM_ID=" + key.TeamID, "ENS_APNS_TOPIC=com.example.ensgate",
		"ENS_FCM_URL=" + c.fcm.URL, "ENS_FCM_CREDENTIALS_FILE=" + creds, "SSL_CERT_FILE=" + bundle,
	}
}

// pushToken is a device's push token: 64 hex digits for APNs, FCM's
// syntax otherwise.
func pushToken(deviceID, platform string) string {
	sum := sha256.Sum256([]byte(deviceID))
	if platform == "ios" {
		return hex.EncodeToString(sum[:])
	}
	return "fcm:" + hex.EncodeToString(sum[:16])
}

// register registers a device of mailbox mb through client (the balancer
// or one node), retrying while the answer is 503 (a node catching up).
func (c *cluster) register(client *deviceclient.Client, mb, id, platform string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pw := "pw-" + strings.TrimSuffix(strings.TrimPrefix(mb, "user"), "@contoso.test")
	for {
		_, err := client.Register(ctx, deviceclient.Device{ID: id, Email: mb, Platform: platform,
			PushToken: pushToken(id, platform), EWSURL: c.sim.EWSURL, AuthType: "basic",
			Credentials: map[string]string{"username": mb, "password": pw}})
		if err == nil {
			return
		}
		if e, ok := err.(*deviceclient.Error); !ok || e.Status != http.StatusServiceUnavailable || ctx.Err() != nil {
			c.t.Fatalf("registering %s: %v", platform, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// burst delivers n mails round-robin over the mailboxes, one every gap,
// in the background; done is closed once the last is in its Inbox.
// Subjects are unique: the tally finds each item's pushes by them.
func (c *cluster) burst(tag string, n int, gap time.Duration) (done <-chan struct{}) {
	mails := make([][2]string, n)
	for i := range mails {
		mb := c.mailboxes[i%len(c.mailboxes)]
		mails[i] = [2]string{mb, fmt.Sprintf("%s-%04d", tag, i)}
		c.sent[mb] = append(c.sent[mb], mails[i][1])
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		for _, m := range mails {
			it, err := c.sim.Deliver(m[0], ewssim.Mail{From: "carol@fabrikam.test", FromName: "Carol", Subject: m[1], Body: "b"})
			if err != nil {
				c.t.Errorf("deliver: %v", err)
				return
			}
			c.noteItem(m[0], m[1], it.ID)
			time.Sleep(gap)
		}
	}()
	return ch
}

// noteItem records the collapse id of a mail Exchange now holds.
func (c *cluster) noteItem(mailbox, subject, itemID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.items[ens.CollapseID(c.mailboxHash[mailbox], ens.ItemHash(itemID))] = mail{mailbox, subject}
}

// waitDelivered waits until APNs and FCM have accepted n new-mail pushes.
func (c *cluster) waitDelivered(n int) {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for len(c.delivered()) < n {
		if time.Now().After(deadline) {
			c.t.Fatalf("fewer than %d pushes within a minute", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shown is one new-mail push that a device was handed: its text (the
// subject, or "New message" when sent from a job) and the id the device
// replaces it by, which names the item.
type shown struct {
	token, body, collapseID string
}

// subject is the item a push shows: the one its collapse id names, else
// (no or an unknown collapse id) its text. ok is false when a known
// collapse id comes with another item's subject.
func (c *cluster) subject(p shown) (subject string, ok bool) {
	c.mu.Lock()
	m, known := c.items[p.collapseID]
	c.mu.Unlock()
	if !known {
		return p.body, true
	}
	return m.subject, p.body == m.subject || p.body == push.GenericBody
}

// delivered lists the new-mail pushes APNs and FCM accepted.
func (c *cluster) delivered() []shown {
	var out []shown
	for _, p := range c.apns.Delivered() {
		var payload struct {
			APS struct {
				Alert struct{ Body string } `json:"alert"`
			} `json:"aps"`
		}
		if json.Unmarshal(p.Payload, &payload) == nil && payload.APS.Alert.Body != "" {
			out = append(out, shown{p.Token, payload.APS.Alert.Body, p.CollapseID})
		}
	}
	for _, m := range c.fcm.Delivered() {
		if m.Data["type"] == "newmail" {
			out = append(out, shown{m.Token, m.Data["body"], m.Data["item"]})
		}
	}
	return out
}

// tally is what the devices show of the mails sent.
type tally struct {
	mails     int // mails sent
	expected  int // (item, device) pairs that must be shown
	delivered int // new-mail pushes APNs and FCM accepted
	lost      int // (item, device) pairs never pushed
	twice     int // pushes of an item a device already showed, with another or no collapse id
	replaced  int // pushes again with the same collapse id: they replace, the device shows one
	unknown   int // pushes of an item the device's mailbox never got
	// generic are the pushes sent from jobs ("New message"), mismatched
	// those whose collapse id names another item than their subject.
	generic, mismatched int
}

func (c *cluster) tally() tally {
	got := map[[2]string][]string{} // (token, subject) → collapse ids
	pushes := c.delivered()
	r := tally{delivered: len(pushes)}
	for _, p := range pushes {
		subject, ok := c.subject(p)
		if !ok {
			r.mismatched++
		}
		if p.body == push.GenericBody {
			r.generic++
		}
		k := [2]string{p.token, subject}
		got[k] = append(got[k], p.collapseID)
	}
	for _, mb := range c.mailboxes {
		r.mails += len(c.sent[mb])
	}
	known := map[[2]string]bool{}
	for _, mb := range c.mailboxes {
		for _, platform := range []string{"ios", "android"} {
			id := platform + "-" + mb
			token := pushToken(id, platform)
			for _, subject := range c.sent[mb] {
				k := [2]string{token, subject}
				known[k] = true
				r.expected++
				ids := got[k]
				if len(ids) == 0 {
					r.lost++
					continue
				}
				for _, again := range ids[1:] {
					if again != "" && again == ids[0] {
						r.replaced++
					} else {
						r.twice++
					}
				}
			}
		}
	}
	for k, ids := range got {
		if !known[k] && !strings.HasPrefix(k[1], "late-") {
			r.unknown += len(ids)
		}
	}
	return r
}

// waitAllShown waits until every item sent reached every device and
// returns the tally then, failing the test after within.
func (c *cluster) waitAllShown(within time.Duration) tally {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		r := c.tally()
		if r.lost == 0 {
			return r
		}
		if time.Now().After(deadline) {
			c.t.Errorf("after %v: %d of %d (item, device) pairs never pushed", within, r.lost, r.expected)
			return r
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// peakRSS is a node's peak resident memory (VmHWM) in kB: read now while
// it runs, or as read before it was killed.
func (n *node) peakRSS() int64 {
	if n.peakKB != 0 {
		return n.peakKB
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}

// kill ends a node with SIGKILL, as a crash does, keeping its peak RSS.
func (c *cluster) kill(n *node) {
	n.peakKB = n.peakRSS()
	if err := n.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		c.t.Fatal(err)
	}
}

// report checks a scenario's tally, its push jobs and push records and
// prints them with each node's peak RSS and the time to recover, in one
// summary line; more are the scenario's own figures.
func (c *cluster) report(scenario string, r tally, jobs jobFigures, claims claimFigures, recovery time.Duration, more string) {
	c.t.Helper()
	var rss []string
	for _, n := range c.nodes {
		kb := n.peakRSS()
		rss = append(rss, fmt.Sprintf("%s %.1f MiB", n.name, float64(kb)/1024))
		if kb*1024 > maxRSS {
			c.t.Errorf("node %s peaked at %d kB, over the bound of %d MiB", n.name, kb, maxRSS>>20)
		}
	}
	sim := c.sim.Counters()
	if more != "" {
		more = "; " + more
	}
	c.t.Logf("SUMMARY %s: mails sent %d, pushes delivered %d (%d expected, %d from jobs without content), lost %d, shown twice %d, "+
		"sent twice but replaced (same collapse id) %d, peak RSS %s, recovery %v; "+
		"Exchange's failed callbacks %d, subscriptions dropped %d; %s; %s%s",
		scenario, r.mails, r.delivered, r.expected, r.generic, r.lost, r.twice, r.replaced, strings.Join(rss, ", "), recovery.Round(time.Millisecond),
		sim.NotificationFailures, sim.Dropped, jobs, claims, more)
	if r.lost != 0 || r.twice != 0 || r.unknown != 0 || r.mismatched != 0 {
		c.t.Errorf("%s: %d lost, %d shown twice, %d pushes of items the mailbox never got, %d whose collapse id names another item",
			scenario, r.lost, r.twice, r.unknown, r.mismatched)
	}
	// After a failover the new primary lacks the last commits of the old
	// one (replication is asynchronous, docs/operations.md): the records
	// of pushes made just before the crash may be missing there, and the
	// items pushed again, replacing the first.
	if claims.twice != 0 || claims.unrecorded != 0 && c.standby == nil {
		c.t.Errorf("%s: %s", scenario, claims)
	}
}

// settle waits for late pushes: a re-send of an item already shown comes
// when a dead node's claims expire (45 s) or Exchange retries.
func (c *cluster) settle(d time.Duration) {
	time.Sleep(d)
}

// waitReady waits until every running node answers ready
// (GET /api/ens/ready 200).
func (c *cluster) waitReady(within time.Duration) {
	c.t.Helper()
	for _, n := range c.nodes {
		if n.peakKB == 0 {
			gateway.WaitFor(c.t, n.base+"/api/ens/ready", http.StatusOK, within).Body.Close()
		}
	}
}

// registerLate registers a new device on each running node directly,
// then delivers a mail to its mailbox: it must reach the new devices.
func (c *cluster) registerLate() {
	c.t.Helper()
	mb := c.mailboxes[0]
	var tokens []string
	for _, n := range c.nodes {
		if n.peakKB != 0 {
			continue
		}
		client := &deviceclient.Client{BaseURL: n.base + "/api/ens", Token: c.token}
		id := "late-" + n.name + "-" + mb
		c.register(client, mb, id, "ios")
		tokens = append(tokens, pushToken(id, "ios"))
	}
	subject := fmt.Sprintf("late-%d", time.Now().UnixNano())
	it, err := c.sim.Deliver(mb, ewssim.Mail{From: "carol@fabrikam.test", Subject: subject, Body: "b"})
	if err != nil {
		c.t.Fatal(err)
	}
	c.noteItem(mb, subject, it.ID)
	deadline := time.Now().Add(90 * time.Second)
	for _, token := range tokens {
		for !c.shownOn(token, subject) {
			if time.Now().After(deadline) {
				c.t.Fatalf("a device registered after the recovery got no push of a new mail")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (c *cluster) shownOn(token, subject string) bool {
	for _, p := range c.delivered() {
		if s, _ := c.subject(p); p.token == token && s == subject {
			return true
		}
	}
	return false
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// nginxBinary is Debian's nginx; without it the test is skipped, unless
// ENSGATE_REQUIRE_NGINX is set (make test sets it).
func nginxBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("ENSGATE_REQUIRE_NGINX") != "" {
		t.Fatal("nginx is not installed (apt-get install nginx; scripts/install-test-deps.sh does)")
	}
	t.Skip("nginx is not installed")
	return ""
}

// startNginx runs nginx in the foreground as the test's own process,
// balancing addr over the nodes. A node that refuses connections or
// answers 502 is skipped for the next (proxy_next_upstream) and left
// alone for a while (max_fails).
func startNginx(t *testing.T, bin, lb string, nodes []*node) {
	t.Helper()
	dir := t.TempDir()
	var upstream strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&upstream, "\t\tserver %s max_fails=1 fail_timeout=2s;\n", strings.TrimPrefix(n.base, "http://"))
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root root;" // the workers write the temporary files in dir
	}
	conf := fmt.Sprintf(`%s
worker_processes 1;
events { worker_connections 1024; }
http {
	access_log off;
	client_body_temp_path %[2]s/body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	client_max_body_size 2m;
	client_body_buffer_size 1m;
	upstream ensgate {
%[3]s		keepalive 16;
	}
	server {
		listen %[4]s;
		location / {
			proxy_pass http://ensgate;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host $http_host;
			proxy_connect_timeout 2s;
			proxy_read_timeout 90s;
			proxy_next_upstream error timeout http_502;
			proxy_next_upstream_tries 2;
		}
	}
}
`, user, dir, upstream.String(), strings.TrimPrefix(lb, "http://"))
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", "stderr",
		"-g", "daemon off; pid "+filepath.Join(dir, "nginx.pid")+";")
	gateway.Start(t, cmd, syscall.SIGQUIT)
}

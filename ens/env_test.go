package ens_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
	"github.com/ensgate/ensgate/privacy"
	"github.com/ensgate/ensgate/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

const (
	alice    = "alice@contoso.test"
	alicePW  = "correct horse battery staple"
	aliceTok = "alice-oauth-access-token"
	bob      = "bob@contoso.test"
	bobPW    = "bobs-password-123"
)

// recorder is a push.Sender that records every push and answers with the
// outcome scripted for the device token (Delivered by default).
type recorder struct {
	mu       sync.Mutex
	sent     []push.Message
	outcomes map[string][]push.Outcome // token → outcomes to give, in order
}

func (r *recorder) Send(_ context.Context, m push.Message) push.Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, m)
	out := push.Delivered
	if script := r.outcomes[m.Token]; len(script) > 0 {
		out, r.outcomes[m.Token] = script[0], script[1:]
	}
	return push.Result{Outcome: out, Reason: out.String(), Attempts: 1}
}

func (r *recorder) script(token string, outcomes ...push.Outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes[token] = append(r.outcomes[token], outcomes...)
}

// pushes returns what was sent so far to token (all tokens if empty).
func (r *recorder) pushes(token string) []push.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []push.Message
	for _, m := range r.sent {
		if token == "" || m.Token == token {
			out = append(out, m)
		}
	}
	return out
}

// env is ENS on a fresh database, in front of a simulated Exchange.
type env struct {
	t      testing.TB
	store  *store.Store
	sim    *ewssim.TestServer
	svc    *ens.Service
	cfg    ens.Config                   // svc's, for restart
	served atomic.Pointer[http.Handler] // svc's handler, behind api
	api    *httptest.Server
	pushes *recorder
	logs   *syncbuf.Buffer // ENS's log output, JSON lines
	tenant store.Tenant
	token  string
	dbURL  string
	dc     *deviceclient.Client // the tenant's apps: keeps each device's secret
	ahead  atomic.Int64         // how far ENS's clock runs ahead of the real one (ns)
}

// travel moves ENS's clock d ahead, as if that much time had passed.
func (e *env) travel(d time.Duration) { e.ahead.Add(int64(d)) }

type envOptions struct {
	tenantLevel privacy.Level
	rateLimit   float64
	// callbackRate limits the notifications per subscription per second.
	callbackRate float64
	inFlight     int    // notifications one node works on at once
	dbURL        string // the database; empty: a new one on the shared server
	simConfig    ewssim.Config
	// ewsOAuth is the simulator endpoint's OAuth client (refresh tokens).
	ewsOAuth store.OAuth
	keyPool  int
	rootCAs  *x509.CertPool
	push     push.Sender // nil: the recorder
	// statusFrequency in minutes (default 1): Exchange drops a subscription
	// whose callbacks fail for longer.
	statusFrequency int
	// compliance runs the EWS proxy's compliance cache for ENS to consult.
	compliance  bool
	adminToken  string
	proxySecret []byte
}

func newEnv(t testing.TB, opts envOptions) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{t: t, dbURL: opts.dbURL, pushes: &recorder{outcomes: map[string][]push.Outcome{}}}
	if e.dbURL == "" {
		e.dbURL = pgtest.NewDatabase(t)
	}
	var err error
	if e.store, err = store.Open(ctx, e.dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.store.Close)
	if _, _, err := e.store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if e.tenant, e.token, err = e.store.CreateTenant(ctx, "contoso", opts.tenantLevel); err != nil {
		t.Fatal(err)
	}

	simCfg := opts.simConfig
	if simCfg.Users == nil {
		simCfg.Users = []ewssim.User{
			{Address: alice, Password: alicePW, Token: aliceTok, DisplayName: "Alice"},
			{Address: bob, Password: bobPW, DisplayName: "Bob"},
		}
	}
	if simCfg.ClockScale == 0 {
		simCfg.ClockScale = 100 * time.Millisecond // one Exchange minute
	}
	e.sim = ewssim.Start(t, simCfg)
	if _, err := e.store.Allow(ctx, store.Endpoint{TenantID: e.tenant.ID, URL: e.sim.EWSURL, OAuth: opts.ewsOAuth}); err != nil {
		t.Fatal(err)
	}

	e.logs = &syncbuf.Buffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("ENS logs:\n%s", e.logs.String())
		}
	})
	e.api = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*e.served.Load()).ServeHTTP(w, r) }))
	t.Cleanup(e.api.Close)
	public, _ := url.Parse(e.api.URL)
	var states ens.DeviceCompliance
	if opts.compliance {
		c := compliance.New(e.store, slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { c.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		states = c
	}
	var sender push.Sender = e.pushes
	if opts.push != nil {
		sender = opts.push
	}
	e.start(ens.Config{
		Store: e.store, MasterKey: bytes.Repeat([]byte{7}, 32), PublicURL: public, Push: sender,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), KeyPoolSize: max(opts.keyPool, 4), RateLimit: opts.rateLimit, CallbackRateLimit: opts.callbackRate, NotificationsInFlight: opts.inFlight, StatusFrequency: time.Duration(max(opts.statusFrequency, 1)) * time.Minute, Compliance: states, AdminToken: opts.adminToken, ProxySecret: opts.proxySecret, EWSRootCAs: opts.rootCAs,
		Now: func() time.Time { return time.Now().Add(time.Duration(e.ahead.Load())) },
	})
	t.Cleanup(func() { e.svc.Stop() })
	return e
}

// start builds ENS from cfg, starts it and serves it.
func (e *env) start(cfg ens.Config) {
	e.t.Helper()
	svc, err := ens.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	handler := svc.Handler()
	e.svc, e.cfg = svc, cfg
	e.served.Store(&handler)
	svc.Start()
}

// restart replaces ENS with one whose config change made, as a node's
// restart with a new configuration does.
func (e *env) restart(change func(*ens.Config)) {
	e.t.Helper()
	e.svc.Stop()
	cfg := e.cfg
	change(&cfg)
	e.start(cfg)
}

// call sends a device API request with the tenant's token and decodes the
// JSON answer.
// A status request carries the device's secret, as its app sends it.
func (e *env) call(method, path string, body any) (int, map[string]any) {
	return e.callWith(e.token, method, path, body)
}

func (e *env) callWith(token, method, path string, body any) (int, map[string]any) {
	e.t.Helper()
	secret := ""
	if u, err := url.Parse(path); err == nil && method == http.MethodGet {
		secret = e.devices().Secret(u.Query().Get("deviceId"))
	}
	return e.callWithSecret(token, secret, method, path, body)
}

// callWithSecret sends a device API request with token and, if not empty,
// the X-Device-Secret header.
func (e *env) callWithSecret(token, secret, method, path string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = bytes.NewReader(data)
	}
	req, _ := http.NewRequest(method, e.api.URL+path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if secret != "" {
		req.Header.Set(ens.DeviceSecretHeader, secret)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	data, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(data, &out); err != nil {
		e.t.Fatalf("%s %s: %d answer is not JSON: %q", method, path, resp.StatusCode, data)
	}
	return resp.StatusCode, out
}

// devices is the device API client for the tenant's token.
func (e *env) devices() *deviceclient.Client {
	if e.dc == nil {
		e.dc = &deviceclient.Client{BaseURL: e.api.URL + "/api/ens"}
	}
	e.dc.Token = e.token // tests switch tenants
	return e.dc
}

// unregisterBody is the unregister body a device's app sends.
func (e *env) unregisterBody(id string) map[string]string {
	return map[string]string{"deviceId": id, "deviceSecret": e.devices().Secret(id)}
}

// tok is the APNs device token of the test device id: hex, as Apple's are.
func tok(id string) string { return hex.EncodeToString([]byte("tok-" + id)) }

func (e *env) basicDevice(id, email, password string, level int) deviceclient.Device {
	return deviceclient.Device{ID: id, Email: email, Platform: "ios", PushToken: tok(id), AuthType: "basic",
		NotificationLevel: level, Credentials: map[string]string{"username": email, "password": password}}
}

// registerBody builds the registerdevicev2 body as an app does; EWSURL
// defaults to the simulator.
func (e *env) registerBody(d deviceclient.Device) map[string]any {
	e.t.Helper()
	if d.EWSURL == "" && d.Source != "graph" {
		d.EWSURL = e.sim.EWSURL
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body, err := e.devices().RegisterBody(ctx, d)
	if err != nil {
		e.t.Fatalf("preparing the registration of %s: %v", d.ID, err)
	}
	return body
}

// register registers d and fails the test unless it succeeds.
func (e *env) register(d deviceclient.Device) string {
	e.t.Helper()
	status, body := e.call("POST", "/api/ens/registerdevicev2", e.registerBody(d))
	if status != http.StatusOK || body["status"] != "active" {
		e.t.Fatalf("register %s: %d %v", d.ID, status, body)
	}
	secret, _ := body["deviceSecret"].(string)
	if len(secret) < 43 {
		e.t.Fatalf("register %s: no deviceSecret in %v", d.ID, body)
	}
	e.devices().SetSecret(d.ID, secret)
	return body["subscriptionId"].(string)
}

// deliver puts a mail into the simulated Inbox.
func (e *env) deliver(to string, mail ewssim.Mail) ewssim.Item {
	e.t.Helper()
	item, err := e.sim.Deliver(to, mail)
	if err != nil {
		e.t.Fatal(err)
	}
	return item
}

// waitFor polls cond until it holds, or fails the test.
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settle gives the simulator time to deliver anything still queued, for
// tests that assert something did not happen.
func (e *env) settle() { time.Sleep(300 * time.Millisecond) }

// newestSimState is the state of the mailbox's newest subscription as the
// simulator sees it.
func (e *env) newestSimState(user string) string {
	subs := e.simSubscriptions(user)
	if len(subs) == 0 {
		return ""
	}
	return subs[len(subs)-1].State
}

// simSubscriptions returns the simulator's view of the mailbox's
// subscriptions, oldest first.
func (e *env) simSubscriptions(user string) []ewssim.SubscriptionInfo {
	var subs []ewssim.SubscriptionInfo
	for _, s := range e.sim.Subscriptions() {
		if s.User == user {
			subs = append(subs, s)
		}
	}
	return subs
}

// newMailNotification is the SendNotification Exchange sends for a new
// item, addressed to the mailbox's newest subscription's callback URL.
func (e *env) newMailNotification(user, itemID string) (callbackURL string, body []byte) {
	e.t.Helper()
	return e.newMailNotificationFor(user, []string{itemID}, time.Now())
}

// newMailNotificationAt is newMailNotification with the events' TimeStamp.
func (e *env) newMailNotificationAt(user, itemID string, at time.Time) (callbackURL string, body []byte) {
	e.t.Helper()
	return e.newMailNotificationFor(user, []string{itemID}, at)
}

// newMailNotificationFor is one notification of new items at a time.
func (e *env) newMailNotificationFor(user string, itemIDs []string, at time.Time) (callbackURL string, body []byte) {
	e.t.Helper()
	subs := e.simSubscriptions(user)
	if len(subs) == 0 {
		e.t.Fatalf("no subscription for %s", user)
	}
	sub := subs[len(subs)-1]
	inbox := ews.FolderID{ID: "inbox"}
	at = at.UTC().Truncate(time.Second)
	n := &ews.Notification{SubscriptionID: sub.ID, PreviousWatermark: "AQAAAA=="}
	for _, itemID := range itemIDs {
		id := ews.ItemID{ID: itemID}
		n.Events = append(n.Events,
			ews.Event{Type: ews.CreatedEvent, Watermark: "AQAAAB==", TimeStamp: at, ItemID: id, ParentFolderID: inbox},
			ews.Event{Type: ews.NewMailEvent, Watermark: "AQAAAC==", TimeStamp: at, ItemID: id, ParentFolderID: inbox})
	}
	return sub.URL, ews.BuildSendNotification(n)
}

// post sends a SendNotification as Exchange does and returns the status
// and the SubscriptionStatus answered (empty if none).
func post(t *testing.T, url string, body []byte) (int, ews.SubscriptionStatus) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	req.Header.Set("SOAPAction", "http://schemas.microsoft.com/exchange/services/2006/messages/SendNotification")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	status, _ := ews.ParseSendNotificationResult(data)
	return resp.StatusCode, status
}

// newToken adds an API token for a tenant, as tenant create does.
func (e *env) newToken(tenantID int64) string {
	e.t.Helper()
	token, hash := store.NewAPIToken()
	if _, err := e.store.Pool().Exec(context.Background(),
		`INSERT INTO api_tokens (tenant_id, token_hash) VALUES ($1, $2)`, tenantID, hash); err != nil {
		e.t.Fatal(err)
	}
	return token
}

// pushOutcomes counts the push records by outcome ("" while claimed).
func (e *env) pushOutcomes() map[string]int {
	e.t.Helper()
	rows, err := e.store.Pool().Query(context.Background(), `SELECT coalesce(outcome, ''), count(*) FROM push_claims GROUP BY 1`)
	if err != nil {
		e.t.Fatal(err)
	}
	counts := map[string]int{}
	for rows.Next() {
		var outcome string
		var n int
		if err := rows.Scan(&outcome, &n); err != nil {
			e.t.Fatal(err)
		}
		counts[outcome] = n
	}
	return counts
}

// jobAttempts is the most attempts a job of kind has had.
func (e *env) jobAttempts(kind string) int {
	e.t.Helper()
	var n int
	if err := e.store.Pool().QueryRow(context.Background(), `SELECT coalesce(max(attempt), 0) FROM river_job WHERE kind = $1`, kind).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// ready asks the node's readiness endpoint, as a load balancer does.
func (e *env) ready() (int, map[string]any) {
	e.t.Helper()
	resp, err := http.Get(e.api.URL + "/api/ens/ready")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body
}

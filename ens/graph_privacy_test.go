package ens_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/graphsim"
	"github.com/ensgate/ensgate/store"
)

// graphRecorder stands between ENS and the Graph simulator (a proxy in
// front of its token endpoint and Graph) and in front of ENS's Graph URLs,
// and keeps every secret that crossed: each refresh and access token sent
// or answered, and each clientState ENS gave Graph or Graph sent back.
type graphRecorder struct {
	mu sync.Mutex
	// refresh and access tokens, clientState values, each with where it
	// was seen first.
	refresh, access, clientStates map[string]string
	// redemptions: the refresh token each redemption sent and the one it
	// got, in order.
	redemptions [][2]string
	requests    int // requests through the proxy (token endpoint and Graph)
}

func (r *graphRecorder) note(set map[string]string, secret, where string) {
	if secret == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := set[secret]; !ok {
		set[secret] = where
	}
}

// bodyCapture keeps what a handler answered.
type bodyCapture struct {
	http.ResponseWriter
	body bytes.Buffer
}

func (c *bodyCapture) Write(b []byte) (int, error) {
	c.body.Write(b)
	return c.ResponseWriter.Write(b)
}

// recordGraph puts a recording proxy in front of the simulator, in place
// of the tenant's Graph root (so ENS's every token redemption and Graph
// call passes it), and records the notification and lifecycle bodies
// Graph posts to ENS.
func (g *graphEnv) recordGraph() *graphRecorder {
	g.t.Helper()
	rec := &graphRecorder{refresh: map[string]string{}, access: map[string]string{}, clientStates: map[string]string{}}
	sim := g.graph.Server
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.requests++
		rec.mu.Unlock()
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
			rec.note(rec.access, token, "an Authorization header")
		}
		var sent struct {
			ClientState string `json:"clientState"`
		}
		if json.Unmarshal(body, &sent) == nil {
			rec.note(rec.clientStates, sent.ClientState, "a subscription request")
		}
		capture := &bodyCapture{ResponseWriter: w}
		sim.ServeHTTP(capture, r)
		if !strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token") {
			return
		}
		form, _ := url.ParseQuery(string(body))
		var answer struct {
			AccessToken  string `json:"access_token"`
			RefreshToken string `json:"refresh_token"`
		}
		json.Unmarshal(capture.body.Bytes(), &answer)
		rec.note(rec.refresh, form.Get("refresh_token"), "a token request")
		rec.note(rec.refresh, answer.RefreshToken, "a token answer")
		rec.note(rec.access, answer.AccessToken, "a token answer")
		if answer.RefreshToken != "" {
			rec.mu.Lock()
			rec.redemptions = append(rec.redemptions, [2]string{form.Get("refresh_token"), answer.RefreshToken})
			rec.mu.Unlock()
		}
	}))
	g.t.Cleanup(proxy.Close)

	ctx := context.Background()
	if _, err := g.store.RemoveEndpoint(ctx, g.tenant.ID, g.graph.URL); err != nil {
		g.t.Fatal(err)
	}
	if _, err := g.store.Allow(ctx, store.Endpoint{TenantID: g.tenant.ID, Kind: store.KindGraph, URL: proxy.URL,
		OAuth: store.OAuth{ClientID: graphsim.DefaultClientID, Authority: proxy.URL + "/" + g.graph.TenantID(),
			Scope: "https://graph.microsoft.com/.default offline_access"}}); err != nil {
		g.t.Fatal(err)
	}

	inner := *g.served.Load()
	var recording http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/ens/graph/") {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var posted struct {
				Value []struct {
					ClientState string `json:"clientState"`
				} `json:"value"`
			}
			json.Unmarshal(body, &posted)
			for _, n := range posted.Value {
				rec.note(rec.clientStates, n.ClientState, "a notification from Graph")
			}
		}
		inner.ServeHTTP(w, r)
	})
	g.served.Store(&recording)
	return rec
}

// privateMail is mail whose every field is private; step tells the
// mails of the run apart.
func privateMail(step string) graphsim.Mail {
	return graphsim.Mail{From: "mallory.sender@northwind.test", FromName: "Mallory Northwind",
		Subject: "Project Kestrel " + step, Body: "Confidential Kestrel preview about " + step}
}

// TestGraphRunLeavesNoSecretOrPersonalData is a full Exchange Online run
// (registrations, mail, reauthorization with rotated refresh tokens, a
// missed catch-up, a 429, refused refresh tokens at the end), after which
// ENS's logs, metrics and a pg_dump of its database hold no token that
// existed, no clientState (the subscriptions' keys), no address, sender,
// subject or preview.
func TestGraphRunLeavesNoSecretOrPersonalData(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{FrozenClock: true, StrictRefreshRotation: true})
	rec := g.recordGraph()
	var messageIDs []string
	deliver := func(to, step string) {
		t.Helper()
		m, err := g.graph.Deliver(to, privateMail(step))
		if err != nil {
			t.Fatal(err)
		}
		messageIDs = append(messageIDs, m.ID)
	}
	pushesTo := func(id string) []push.Message { return g.pushes.pushes(tok(id)) }

	// Registration: Alice at level 0 (the preview), Bob at level 1.
	phone := g.graphDevice("phone", galice, 0)
	tablet := g.graphDevice("tablet", gbob, 1)
	rec.note(rec.refresh, phone.Credentials["refreshToken"], "minted")
	rec.note(rec.refresh, tablet.Credentials["refreshToken"], "minted")
	g.register(phone)
	g.register(tablet)

	deliver(galice, "first")
	deliver(gbob, "first")
	g.waitFor("the first pushes", func() bool { return len(pushesTo("phone")) == 1 && len(pushesTo("tablet")) == 1 })
	if p := pushesTo("phone")[0]; p.Preview != privateMail("first").Body || p.Subject != privateMail("first").Subject {
		t.Fatalf("level 0 push %+v: want the subject and preview", p)
	}

	// reauthorizationRequired, twice: the refresh token rotates; with the
	// simulator's strict rotation the second redemption succeeds only if
	// the first's new token was re-sealed.
	for round := int64(1); round <= 2; round++ {
		if err := g.graph.Lifecycle(g.subscription(galice).ID, graphsim.ReauthorizationRequired); err != nil {
			t.Fatal(err)
		}
		g.waitFor("the reauthorization", func() bool { return g.graph.Counters().SubscriptionsReauthorized == round })
	}
	rec.mu.Lock()
	chained := 0
	for i := 1; i < len(rec.redemptions); i++ {
		for _, earlier := range rec.redemptions[:i] {
			if rec.redemptions[i][0] == earlier[1] {
				chained++
			}
		}
	}
	rec.mu.Unlock()
	if chained < 2 {
		t.Errorf("%d redemptions used a rotated refresh token, want at least the two reauthorizations'", chained)
	}

	// Missed: notifications fail while ENS is away; Graph says it missed
	// some, the catch-up pushes the mail, Graph's own retry later finds it
	// done.
	g.blockGraphNotifications(true)
	deliver(galice, "missed")
	g.waitFor("Graph's failed POST", func() bool { return g.graph.Counters().NotificationsRetried >= 1 })
	g.blockGraphNotifications(false)
	if err := g.graph.Lifecycle(g.subscription(galice).ID, graphsim.Missed); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the missed mail", func() bool { return len(pushesTo("phone")) == 2 })
	sent := g.graph.Counters().NotificationsSent
	g.graph.Advance(5 * time.Minute)
	g.waitFor("Graph's retry", func() bool { return g.graph.Counters().NotificationsSent == sent+1 })

	// A 429 with Retry-After.
	if _, err := g.graph.Throttle(galice, 1, time.Second); err != nil {
		t.Fatal(err)
	}
	deliver(galice, "throttled")
	g.waitFor("the push after the 429", func() bool { return len(pushesTo("phone")) == 3 })
	if c := g.graph.Counters(); c.Throttled["injected"] != 1 {
		t.Errorf("throttled %v, want the injected 429", c.Throttled)
	}

	// Refresh tokens refused at the end: Alice's at a notification, Bob's
	// at a lifecycle event; both are asked to register again.
	for _, user := range []string{galice, gbob} {
		if err := g.graph.RevokeRefreshTokens(user); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.graph.ExpireAccessTokens(galice); err != nil {
		t.Fatal(err)
	}
	deliver(galice, "after revocation")
	if err := g.graph.Lifecycle(g.subscription(gbob).ID, graphsim.ReauthorizationRequired); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the register-again pushes", func() bool {
		a, b := pushesTo("phone"), pushesTo("tablet")
		return len(a) == 5 && a[3].Kind == push.Reregister && len(b) == 2 && b[1].Kind == push.Reregister
	})
	if p := pushesTo("phone")[4]; p.Kind != push.NewMail || !p.Generic {
		t.Errorf("after the refused token: %+v, want a generic notice", p)
	}
	g.settle()

	if c := g.graph.Counters(); c.TokenErrors["invalid_grant"] < 2 || c.Lifecycle[graphsim.Missed] != 1 {
		t.Errorf("Graph counters %+v: want both refused refresh tokens and the missed event", c)
	}
	rec.mu.Lock()
	var private, secrets []string
	for _, set := range []map[string]string{rec.refresh, rec.access, rec.clientStates} {
		for s := range set {
			private = append(private, s)
			secrets = append(secrets, s)
		}
	}
	counts := [3]int{len(rec.refresh), len(rec.access), len(rec.clientStates)}
	redemptions, requests := len(rec.redemptions), rec.requests
	var keys []string
	for s := range rec.clientStates {
		keys = append(keys, s)
	}
	rec.mu.Unlock()
	// Two minted, and a new one at each redemption: registrations (2),
	// reauthorizations (2), the catch-up's and deliveries' refreshes.
	if counts[0] < 6 || counts[1] < 4 || counts[2] != 2 {
		t.Fatalf("recorded %d refresh tokens, %d access tokens, %d clientStates: the proxy missed some", counts[0], counts[1], counts[2])
	}
	t.Logf("searching for %d refresh tokens, %d access tokens, %d clientStates (%d redemptions, %d proxied requests)",
		counts[0], counts[1], counts[2], redemptions, requests)
	for _, s := range keys {
		raw, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil || len(raw) != 32 {
			t.Fatalf("a clientState is not a 32-byte key")
		}
		private = append(private, hex.EncodeToString(raw))
	}
	for _, step := range []string{"first", "missed", "throttled", "after revocation"} {
		m := privateMail(step)
		private = append(private, m.Subject, m.Body)
	}
	private = append(private, galice, gbob, "alice@", "bob@", "mallory.sender@northwind.test", "mallory.sender",
		"Mallory Northwind", "Project Kestrel", "Confidential Kestrel", g.token)
	private = append(private, messageIDs...)

	dump := pgDump(t, g.dbURL)
	logs := g.logs.String()
	metrics := gatherMetrics(t)
	for _, want := range []string{"CREATE TABLE public.subscriptions", "CREATE TABLE public.ews_endpoints", "ensgate_graph_fallback",
		"ensgate_reregister", "'graph'"} {
		if !strings.Contains(dump, want) {
			t.Fatalf("the dump (%d bytes) lacks %q: nothing to search", len(dump), want)
		}
	}
	for _, want := range []string{"device registered", "catching up after Graph missed notifications", "refused the credentials"} {
		if !strings.Contains(logs, want) {
			t.Fatalf("the logs (%d bytes) lack %q: nothing to search", len(logs), want)
		}
	}
	for _, want := range []string{`ensgate_ens_graph_subscription_renewals_total{how="reauthorized"}`, "ensgate_ens_graph_throttled_total"} {
		if !strings.Contains(metrics, want) {
			t.Fatalf("the metrics lack %s", want)
		}
	}
	// A secret's part counts as much as the whole: the random part of each
	// token and key is searched for in pieces, so any 24 characters of it
	// are found.
	for _, s := range secrets {
		random := s[strings.LastIndex(s, ".")+1:]
		for i := 0; i+16 <= len(random); i += 8 {
			private = append(private, random[i:i+16])
		}
	}
	sort.Strings(private)
	texts := map[string]string{"logs": strings.ToLower(logs), "pg_dump": strings.ToLower(dump), "metrics": strings.ToLower(metrics)}
	for _, s := range slices.Compact(private) {
		for name, text := range texts {
			if strings.Contains(text, strings.ToLower(s)) {
				t.Errorf("%s contain %q", name, redact(s))
			}
		}
	}
}

// redact shows enough of a secret to tell which it was.
func redact(s string) string {
	if len(s) > 24 {
		return s[:16] + "…"
	}
	return s
}

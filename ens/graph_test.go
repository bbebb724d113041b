package ens_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/sim/graphsim"
	"github.com/ensgate/ensgate/store"
)

// Exchange Online mailboxes of the Graph tests.
const (
	galice = "alice@fabrikam.test"
	gbob   = "bob@fabrikam.test"
)

var graphMail = graphsim.Mail{From: "carol@example.test", FromName: "Carol Example", Subject: "Quarterly numbers",
	Body: "Here are the numbers for the quarter"}

// graphEnv is ENS with a tenant that allows Graph, on the Graph simulator.
type graphEnv struct {
	*env
	graph     *graphsim.TestServer
	unblocked http.Handler // ENS's handler while notifications are blocked
}

func newGraphEnv(t testing.TB, opts envOptions, cfg graphsim.Config) *graphEnv {
	t.Helper()
	e := newEnv(t, opts)
	cfg.AllowHTTP = true // ENS's test server is plain HTTP
	g := graphsim.Start(t, cfg)
	for _, addr := range []string{galice, gbob} {
		if _, err := g.AddUser(graphsim.User{Address: addr}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.store.Allow(context.Background(), store.Endpoint{TenantID: e.tenant.ID, Kind: store.KindGraph, URL: g.URL,
		OAuth: store.OAuth{ClientID: graphsim.DefaultClientID, Authority: g.Authority, Scope: "https://graph.microsoft.com/.default offline_access"}}); err != nil {
		t.Fatal(err)
	}
	return &graphEnv{env: e, graph: g}
}

// graphDevice is a device that signed in to its Exchange Online mailbox
// in the mail app, which holds a refresh token for the app's client id.
func (g *graphEnv) graphDevice(id, email string, level int) deviceclient.Device {
	g.t.Helper()
	rt, err := g.graph.MintRefreshToken(email, graphsim.DefaultClientID)
	if err != nil {
		g.t.Fatal(err)
	}
	return deviceclient.Device{ID: id, Email: email, Platform: "ios", PushToken: tok(id), AuthType: "oauth", Source: "graph",
		NotificationLevel: level, Credentials: map[string]string{"refreshToken": rt}}
}

// subscription is the simulator's one subscription of the mailbox.
func (g *graphEnv) subscription(user string) graphsim.SubscriptionInfo {
	g.t.Helper()
	var found []graphsim.SubscriptionInfo
	for _, s := range g.graph.Subscriptions() {
		if s.User == user {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		g.t.Fatalf("%d Graph subscriptions for %s, want 1", len(found), user)
	}
	return found[0]
}

func postTo(t *testing.T, url, contentType string, body []byte) (int, string) {
	t.Helper()
	resp, err := http.Post(url, contentType, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Graph's validation handshake on both URLs: 200, text/plain, the decoded
// token, with no subscription or authentication involved. Registration
// passes it for real: the simulator validated both URLs.
func TestGraphValidationHandshake(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	for _, path := range []string{"/api/ens/graph/notify", "/api/ens/graph/lifecycle"} {
		resp, err := http.Post(g.api.URL+path+"?validationToken=Validation%3A+Testing+client+application+reachability", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") ||
			string(body) != "Validation: Testing client application reachability" {
			t.Errorf("%s: %d %q %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	}
	g.register(g.graphDevice("phone", galice, 0))
	if c := g.graph.Counters(); c.ValidationsSent != 2 || c.ValidationsFailed != 0 || c.SubscriptionsCreated != 1 {
		t.Errorf("validations %d (failed %d), subscriptions %d: want both URLs validated and one subscription", c.ValidationsSent, c.ValidationsFailed, c.SubscriptionsCreated)
	}
}

// One Graph subscription per mailbox, fanned out to its devices, each
// pushed at its level; the message is read once, with only what the
// levels show.
func TestGraphPushesAtEveryLevel(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	for level := range 5 {
		g.register(g.graphDevice(fmt.Sprintf("level-%d", level), galice, level))
	}
	g.register(g.graphDevice("bob-generic", gbob, 3))
	g.register(g.graphDevice("bob-badge", gbob, 4))
	if c := g.graph.Counters(); c.SubscriptionsCreated != 7 || len(g.graph.Subscriptions()) != 2 {
		t.Fatalf("%d subscriptions created, %d live: want each registration's, one live per mailbox", c.SubscriptionsCreated, len(g.graph.Subscriptions()))
	}
	g.graph.ResetCounters()
	if _, err := g.graph.Deliver(galice, graphMail); err != nil {
		t.Fatal(err)
	}
	g.waitFor("alice's five pushes", func() bool { return len(g.pushes.pushes("")) == 5 })
	if c := g.graph.Counters(); c.Operations["message"] != 1 {
		t.Errorf("%d message fetches, want 1 for five devices", c.Operations["message"])
	}
	want := []push.Message{
		{Title: "Carol Example", Subject: graphMail.Subject, Preview: graphMail.Body},
		{Title: "Carol Example", Subject: graphMail.Subject},
		{Title: "Carol Example"},
		{Generic: true},
		{},
	}
	for level, w := range want {
		got := g.pushes.pushes(tok(fmt.Sprintf("level-%d", level)))
		if len(got) != 1 {
			t.Fatalf("level %d: %d pushes", level, len(got))
		}
		p := got[0]
		if p.Kind != push.NewMail || p.Title != w.Title || p.Subject != w.Subject || p.Preview != w.Preview || p.Generic != w.Generic || p.Badge != 1 || p.CollapseID == "" {
			t.Errorf("level %d: %+v, want %+v with badge 1", level, p, w)
		}
	}

	g.graph.ResetCounters()
	if _, err := g.graph.Deliver(gbob, graphMail); err != nil {
		t.Fatal(err)
	}
	g.waitFor("bob's two pushes", func() bool { return len(g.pushes.pushes("")) == 7 })
	// Levels 3 and 4 read the message's time and folder only (it must be
	// new mail of the Inbox), and the unread count.
	if c := g.graph.Counters(); c.Operations["message"] != 1 || c.Operations["mailFolder"] != 1 {
		t.Errorf("operations %v: want one metadata read and the unread count", c.Operations)
	}
}

// A notification whose clientState is not the subscription's key is
// refused before anything else: no Graph call, no push. So is one naming
// no subscription.
func TestGraphForgedClientStateIsRefused(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	id := g.register(g.graphDevice("phone", galice, 0))
	sub := g.subscription(galice)
	msg, _ := g.graph.Deliver(galice, graphMail)
	g.waitFor("the genuine push", func() bool { return len(g.pushes.pushes("")) == 1 })
	g.graph.ResetCounters()
	forged := fmt.Sprintf(`{"value":[{"subscriptionId":%q,"changeType":"created","clientState":"forged-%s","resource":"Users/x/Messages/%s","resourceData":{"@odata.type":"#Microsoft.Graph.Message","id":%q},"tenantId":"t"}]}`,
		sub.ID, strings.Repeat("k", 37), msg.ID, msg.ID)
	for _, target := range []string{id, "no-such-subscription"} {
		for _, path := range []string{"notify", "lifecycle"} {
			if status, _ := postTo(t, g.api.URL+"/api/ens/graph/"+path+"?id="+target, "application/json", []byte(forged)); status != http.StatusForbidden {
				t.Errorf("%s for %s with a wrong clientState: %d, want 403", path, target, status)
			}
		}
	}
	g.settle()
	if c := g.graph.Counters(); len(c.Requests) != 0 || c.TokenRequests != 0 {
		t.Errorf("a forged notification made Graph calls: %v, %d token requests", c.Requests, c.TokenRequests)
	}
	if n := len(g.pushes.pushes("")); n != 1 {
		t.Errorf("%d pushes, want only the genuine one", n)
	}
	if status, _ := postTo(t, g.api.URL+"/api/ens/graph/notify?id="+id, "application/json", []byte(`{"value":[`)); status != http.StatusBadRequest {
		t.Errorf("malformed notification: %d, want 400", status)
	}
}

// Mailbox binding holds for Graph: Bob's sign-in cannot register Alice's
// address; nothing is subscribed.
func TestGraphRegistrationBindsTheTokensMailbox(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	d := g.graphDevice("bobs-phone", gbob, 0)
	d.Email = galice
	status, body := g.call("POST", "/api/ens/registerdevicev2", g.registerBody(d))
	if status != http.StatusForbidden || body["error"] != "mailbox_mismatch" {
		t.Fatalf("registering alice with bob's token: %d %v", status, body)
	}
	if c := g.graph.Counters(); c.SubscriptionsCreated != 0 {
		t.Errorf("%d Graph subscriptions made", c.SubscriptionsCreated)
	}
	// A tenant without Graph refuses Graph registrations.
	other := g.graphDevice("phone", galice, 0)
	other.EWSURL = "https://graph.other.test"
	if status, body := g.call("POST", "/api/ens/registerdevicev2", g.registerBody(other)); status != http.StatusForbidden || body["error"] != "forbidden" {
		t.Errorf("a Graph root the tenant does not allow: %d %v", status, body)
	}
}

// Refresh tokens rotate across hours of Graph's time (the simulator
// refuses a redeemed one): reauthorizationRequired renews the access token
// and reauthorizes the subscription, mail keeps being pushed, and the
// device never registers again.
func TestGraphTokensRotateWithoutReregistration(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{FrozenClock: true, StrictRefreshRotation: true})
	g.register(g.graphDevice("phone", galice, 1))
	start := g.graph.Counters()
	for hour := 1; hour <= 3; hour++ {
		g.graph.Advance(50 * time.Minute) // past the lead of reauthorizationRequired
		// ENS acts after answering the event: wait until Graph has a fresh
		// authorization (the clock stands still meanwhile).
		g.waitFor("the reauthorization", func() bool {
			sub := g.subscription(galice)
			return !sub.NeedsReauthorization && sub.AuthorizationExpires.After(g.graph.Now().Add(45*time.Minute))
		})
		g.graph.Advance(15 * time.Minute) // the first access token has expired
		if _, err := g.graph.Deliver(galice, graphsim.Mail{From: "carol@example.test", Subject: fmt.Sprintf("hour %d", hour)}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(g.pushes.pushes("")) != hour {
			if time.Now().After(deadline) {
				t.Fatalf("hour %d: no push; Graph %+v %+v", hour, g.graph.Counters(), g.graph.Subscriptions())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if p := g.pushes.pushes("")[hour-1]; p.Subject != fmt.Sprintf("hour %d", hour) {
			t.Fatalf("push %+v", p)
		}
	}
	c := g.graph.Counters()
	if c.SubscriptionsCreated != start.SubscriptionsCreated || c.TokenErrors["invalid_grant"] != 0 || c.NotificationsPaused != 0 {
		t.Errorf("counters %+v: want no new subscription, no refused refresh, nothing paused", c)
	}
	if c.SubscriptionsReauthorized < 3 || c.TokensIssued-start.TokensIssued < 3 {
		t.Errorf("%d reauthorizations and %d tokens issued in three hours, want at least one each hour", c.SubscriptionsReauthorized, c.TokensIssued-start.TokensIssued)
	}
	if status, body := g.call("GET", "/api/ens/status?deviceId=phone", nil); status != 200 || body["subscription"] != "active" || body["resubscribe"] != false {
		t.Errorf("status %d %v", status, body)
	}
}

// A subscription with less than graphRenewBefore left is renewed at its
// next lifecycle event, and the new expiry recorded.
func TestGraphSubscriptionRenewedBeforeExpiry(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	id := g.register(g.graphDevice("phone", galice, 1))
	sub, _ := g.store.SubscriptionByPublicID(context.Background(), id)
	if time.Until(sub.ExpiresAt) < 6*24*time.Hour {
		t.Fatalf("subscription expires at %v, want about 7 days ahead", sub.ExpiresAt)
	}
	soon := time.Now().Add(time.Hour)
	if err := g.store.SetRemoteSubscription(context.Background(), sub.ID, sub.RemoteID, soon); err != nil {
		t.Fatal(err)
	}
	if err := g.graph.Lifecycle(sub.RemoteID, graphsim.ReauthorizationRequired); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the renewal", func() bool { return g.graph.Counters().SubscriptionsRenewed == 1 })
	g.waitFor("the new expiry recorded", func() bool {
		sub, _ = g.store.SubscriptionByPublicID(context.Background(), id)
		return time.Until(sub.ExpiresAt) > 6*24*time.Hour
	})
	if info := g.subscription(galice); time.Until(info.Expires) < 6*24*time.Hour {
		t.Errorf("Graph's expiry %v", info.Expires)
	}
}

// subscriptionRemoved: ENS makes the subscription anew (same key) and
// catches up on mail that arrived meanwhile; missed: it catches up with a
// delta query. Each mail is pushed once, whatever arrives twice.
func TestGraphRemovedAndMissedAreRecovered(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{FrozenClock: true})
	g.register(g.graphDevice("phone", galice, 1))
	first := g.subscription(galice)
	if err := g.graph.Lifecycle(first.ID, graphsim.SubscriptionRemoved); err != nil {
		t.Fatal(err)
	}
	if _, err := g.graph.Deliver(galice, graphsim.Mail{From: "carol@example.test", Subject: "while removed"}); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the subscription made anew", func() bool {
		subs := g.graph.Subscriptions()
		return len(subs) == 1 && subs[0].ID != first.ID
	})
	g.waitFor("the mail of the gap", func() bool { return len(g.pushes.pushes("")) == 1 })
	if _, err := g.graph.Deliver(galice, graphsim.Mail{From: "carol@example.test", Subject: "after"}); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the next mail", func() bool { return len(g.pushes.pushes("")) == 2 })

	// Notifications fail for a while (ENS away): Graph holds the mail, and
	// then says it missed some. The catch-up pushes it; Graph's own retry
	// later finds it done.
	g.blockGraphNotifications(true)
	if _, err := g.graph.Deliver(galice, graphsim.Mail{From: "carol@example.test", Subject: "missed"}); err != nil {
		t.Fatal(err)
	}
	g.waitFor("Graph's failed POST", func() bool { return g.graph.Counters().NotificationsRetried >= 1 })
	g.blockGraphNotifications(false)
	if err := g.graph.Lifecycle(g.subscription(galice).ID, graphsim.Missed); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the missed mail", func() bool { return len(g.pushes.pushes("")) == 3 })
	sent := g.graph.Counters().NotificationsSent
	g.graph.Advance(5 * time.Minute) // Graph retries the held notification
	g.waitFor("Graph's retry delivered", func() bool { return g.graph.Counters().NotificationsSent == sent+1 })
	g.settle()
	var subjects []string
	for _, p := range g.pushes.pushes("") {
		subjects = append(subjects, p.Subject)
	}
	if got := strings.Join(subjects, ","); got != "while removed,after,missed" {
		t.Errorf("pushes %q: want each mail once", got)
	}
}

// A refresh token that can no longer be redeemed (revoked: the user must
// sign in again) fails the subscription and asks the devices to register
// again, with a generic notice of the new mail; status says so.
func TestGraphInvalidGrantAsksToRegisterAgain(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	g.register(g.graphDevice("phone", galice, 0))
	if err := g.graph.RevokeRefreshTokens(galice); err != nil {
		t.Fatal(err)
	}
	if err := g.graph.ExpireAccessTokens(galice); err != nil {
		t.Fatal(err)
	}
	if _, err := g.graph.Deliver(galice, graphMail); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the register-again pushes", func() bool { return len(g.pushes.pushes(tok("phone"))) == 2 })
	p := g.pushes.pushes(tok("phone"))
	if p[0].Kind != push.Reregister || p[1].Kind != push.NewMail || !p[1].Generic {
		t.Errorf("pushes %+v: want the silent push and a generic notice", p)
	}
	if status, body := g.call("GET", "/api/ens/status?deviceId=phone", nil); status != 200 || body["subscription"] != "failed" || body["resubscribe"] != true {
		t.Errorf("status %d %v", status, body)
	}
}

// Graph's 429 holds back the throttled mailbox's calls for its Retry-After
// and no other mailbox's.
func TestGraphThrottlingIsHonouredPerMailbox(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	g.register(g.graphDevice("alice", galice, 1))
	g.register(g.graphDevice("bob", gbob, 1))
	const retryAfter = 2 * time.Second
	if _, err := g.graph.Throttle(galice, 1, retryAfter); err != nil {
		t.Fatal(err)
	}
	throttled := time.Now()
	g.graph.Deliver(galice, graphMail)
	g.graph.Deliver(gbob, graphMail)
	g.waitFor("bob's push", func() bool { return len(g.pushes.pushes(tok("bob"))) == 1 })
	bobDone := time.Now()
	g.waitFor("alice's push", func() bool { return len(g.pushes.pushes(tok("alice"))) == 1 })
	aliceDone := time.Now()
	if aliceDone.Sub(throttled) < retryAfter {
		t.Errorf("alice's push %v after the 429, want no call before its Retry-After of %v", aliceDone.Sub(throttled), retryAfter)
	}
	if bobDone.After(throttled.Add(retryAfter)) {
		t.Errorf("bob's push waited for alice's Retry-After (%v)", bobDone.Sub(throttled))
	}
	if c := g.graph.Counters(); c.Throttled["injected"] != 1 {
		t.Errorf("throttled %v, want the one injected 429 and no other", c.Throttled)
	}
}

// blockGraphNotifications makes the notification URL answer 503, as a
// gateway that is away does, while on; lifecycle events still pass.
func (g *graphEnv) blockGraphNotifications(on bool) {
	g.t.Helper()
	if !on {
		g.served.Store(&g.unblocked)
		return
	}
	g.unblocked = *g.served.Load()
	var blocking http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/ens/graph/notify" && r.URL.Query().Get("validationToken") == "" {
			http.Error(w, "away", http.StatusServiceUnavailable)
			return
		}
		g.unblocked.ServeHTTP(w, r)
	})
	g.served.Store(&blocking)
}

// An EWS OAuth registration that carries a refresh token outlives its
// access token: Exchange's 401 makes ENS redeem the refresh token (here at
// the Graph simulator's token endpoint, whose tokens the EWS simulator
// trusts, as Exchange trusts its identity provider's), re-seal the rotated
// one and retry; the device is never asked to register again.
func TestEWSOAuthRefreshTokenOutlivesItsAccessToken(t *testing.T) {
	authority := graphsim.Start(t, graphsim.Config{StrictRefreshRotation: true})
	if _, err := authority.AddUser(graphsim.User{Address: alice}); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{simConfig: ewssim.Config{TokenAuthority: authority.TokenOwner},
		ewsOAuth: store.OAuth{ClientID: graphsim.DefaultClientID, Authority: authority.Authority, Scope: "https://outlook.office365.com/.default offline_access"}})
	access, _, err := authority.MintAccessToken(alice, graphsim.DefaultClientID)
	if err != nil {
		t.Fatal(err)
	}
	refresh, _ := authority.MintRefreshToken(alice, graphsim.DefaultClientID)
	e.register(deviceclient.Device{ID: "phone", Email: alice, Platform: "ios", PushToken: tok("phone"), AuthType: "oauth",
		NotificationLevel: 1, Credentials: map[string]string{"accessToken": access, "refreshToken": refresh}})
	for round := 1; round <= 3; round++ {
		if round > 1 {
			authority.ExpireAccessTokens(alice) // each hour's token expires
		}
		e.deliver(alice, ewssim.Mail{From: "carol@example.test", Subject: fmt.Sprintf("round %d", round)})
		e.waitFor("the push", func() bool { return len(e.pushes.pushes("")) == round })
	}
	for i, p := range e.pushes.pushes("") {
		if p.Kind != push.NewMail || p.Subject != fmt.Sprintf("round %d", i+1) {
			t.Errorf("push %d: %+v", i, p)
		}
	}
	if c := authority.Counters(); c.TokenRequests != 3 || c.TokenErrors["invalid_grant"] != 0 {
		t.Errorf("%d redemptions (%v errors), want one at registration and one per expired token, each with the rotated refresh token", c.TokenRequests, c.TokenErrors)
	}
	if status, body := e.call("GET", "/api/ens/status?deviceId=phone", nil); status != 200 || body["subscription"] != "active" || body["resubscribe"] != false {
		t.Errorf("status %d %v", status, body)
	}
}

// At levels that show nothing of a message, Graph's notification is still
// vetted: a message that arrived long ago (moved into the Inbox by a rule
// or the user) is no new mail, and no "New message" is pushed for it.
func TestGraphOldMailMovedIntoTheInboxIsNotAnnounced(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	g.register(g.graphDevice("private", galice, 3))
	if _, err := g.graph.Deliver(galice, graphsim.Mail{From: "carol@example.test", Subject: "from last week", Received: time.Now().Add(-7 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := g.graph.Deliver(galice, graphMail); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the new mail's push", func() bool { return len(g.pushes.pushes("")) >= 1 })
	g.settle()
	if p := g.pushes.pushes(""); len(p) != 1 || !p[0].Generic {
		t.Errorf("pushes %+v: want one generic notice, for the new mail only", p)
	}
}

// A subscription's key opens its own source's route only: an EWS
// callback key presented as a Graph clientState (or the other way round)
// is refused like a wrong one.
func TestSubscriptionKeysOpenTheirOwnSourceOnly(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	ewsID := g.register(g.basicDevice("ews-phone", alice, alicePW, 0))
	var ewsKey string
	for _, s := range g.sim.Subscriptions() {
		if u, err := url.Parse(s.URL); err == nil && u.Query().Get("id") == ewsID {
			ewsKey = u.Query().Get("f")
		}
	}
	if ewsKey == "" {
		t.Fatal("no callback key for the EWS subscription")
	}
	body := fmt.Sprintf(`{"value":[{"subscriptionId":"x","changeType":"created","clientState":%q,"resource":"r","resourceData":{"id":"m"},"tenantId":"t"}]}`, ewsKey)
	if status, _ := postTo(t, g.api.URL+"/api/ens/graph/notify?id="+ewsID, "application/json", []byte(body)); status != http.StatusForbidden {
		t.Errorf("an EWS key as Graph's clientState: %d, want 403", status)
	}
	// The Graph subscription's key, as Graph sends it.
	graphID := g.register(g.graphDevice("graph-phone", galice, 0))
	keys := make(chan string, 10)
	inner := *g.served.Load()
	var capture http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/ens/graph/notify" {
			b, _ := io.ReadAll(r.Body)
			var n struct {
				Value []struct{ ClientState string } `json:"value"`
			}
			if json.Unmarshal(b, &n) == nil && len(n.Value) > 0 {
				keys <- n.Value[0].ClientState
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		inner.ServeHTTP(w, r)
	})
	g.served.Store(&capture)
	g.graph.Deliver(galice, graphMail)
	graphKey := <-keys
	g.waitFor("the Graph push", func() bool { return len(g.pushes.pushes(tok("graph-phone"))) == 1 })
	if status, _ := postTo(t, g.api.URL+"/api/ens/notify?id="+graphID+"&f="+graphKey, "text/xml", []byte("<x/>")); status != http.StatusForbidden {
		t.Errorf("a Graph subscription's key through Exchange's webhook: %d, want 403", status)
	}
}

// A burst of mail to one mailbox is worked by one worker on the node: all
// of it is pushed, once, and Graph never sees more concurrent requests for
// the mailbox than Outlook allows (no MailboxConcurrency 429).
func TestGraphBurstForOneMailboxStaysWithinOutlooksConcurrency(t *testing.T) {
	g := newGraphEnv(t, envOptions{callbackRate: 1000}, graphsim.Config{})
	g.register(g.graphDevice("phone", galice, 1))
	const mails = 40
	var wg sync.WaitGroup
	for i := range mails {
		wg.Go(func() {
			if _, err := g.graph.Deliver(galice, graphsim.Mail{From: "carol@example.test", Subject: fmt.Sprintf("burst %d", i)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	g.waitFor("every push", func() bool { return len(g.pushes.pushes("")) >= mails })
	g.settle()
	seen := map[string]int{}
	for _, p := range g.pushes.pushes("") {
		seen[p.Subject]++
	}
	if len(seen) != mails || len(g.pushes.pushes("")) != mails {
		t.Errorf("%d pushes of %d subjects, want each of %d mails once", len(g.pushes.pushes("")), len(seen), mails)
	}
	if c := g.graph.Counters(); c.Throttled["MailboxConcurrency"] != 0 {
		t.Errorf("Graph refused %d requests for too many at once", c.Throttled["MailboxConcurrency"])
	}
}

// The "mail" of a directory's user is the directory's own to set: a
// registration for an address whose domain the token's directory has not
// verified is refused, whatever /me says, and so is a token from another
// directory than the one the endpoint's authority names.
func TestGraphRegistrationNeedsTheDirectoryThatOwnsTheAddress(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{VerifiedDomains: []string{"fabrikam.test"}})
	if _, err := g.graph.AddUser(graphsim.User{Address: "ceo@contoso.test"}); err != nil {
		t.Fatal(err)
	}
	status, body := g.call("POST", "/api/ens/registerdevicev2", g.registerBody(g.graphDevice("spoof", "ceo@contoso.test", 0)))
	if status != http.StatusForbidden || body["error"] != "mailbox_mismatch" {
		t.Errorf("an address the directory did not verify: %d %v", status, body)
	}
	g.register(g.graphDevice("phone", galice, 0)) // fabrikam.test is verified

	// An endpoint whose authority names another directory admits none of
	// this one's tokens.
	other := newGraphEnv(t, envOptions{}, graphsim.Config{})
	if _, err := other.store.Pool().Exec(context.Background(),
		`UPDATE ews_endpoints SET oauth_authority = $1 WHERE kind = 'graph'`, other.graph.URL+"/11111111-2222-3333-4444-555555555555"); err != nil {
		t.Fatal(err)
	}
	status, body = other.call("POST", "/api/ens/registerdevicev2", other.registerBody(other.graphDevice("phone", galice, 0)))
	if status != http.StatusForbidden || body["error"] != "mailbox_mismatch" {
		t.Errorf("a token of another directory than the authority's: %d %v", status, body)
	}
	if c := g.graph.Counters(); c.SubscriptionsCreated != 1 {
		t.Errorf("%d Graph subscriptions made, want only the verified address's", c.SubscriptionsCreated)
	}
}

// A subscription ENS ended (its last device unregistered) is ended at
// Graph at its next notification, with the access token it holds: Graph
// stops calling, nothing is pushed, no refresh token is redeemed.
func TestGraphSubscriptionEndedHereIsEndedAtGraph(t *testing.T) {
	g := newGraphEnv(t, envOptions{}, graphsim.Config{})
	g.register(g.graphDevice("phone", galice, 1))
	if status, _ := g.call("POST", "/api/ens/unregister", g.unregisterBody("phone")); status != http.StatusOK {
		t.Fatalf("unregister: %d", status)
	}
	before := g.graph.Counters()
	if _, err := g.graph.Deliver(galice, graphMail); err != nil {
		t.Fatal(err)
	}
	g.waitFor("the subscription ended at Graph", func() bool { return len(g.graph.Subscriptions()) == 0 })
	g.settle()
	if c := g.graph.Counters(); c.SubscriptionsDeleted != before.SubscriptionsDeleted+1 || c.TokenRequests != before.TokenRequests {
		t.Errorf("deleted %d, token requests %d: want one deletion with the held token", c.SubscriptionsDeleted-before.SubscriptionsDeleted, c.TokenRequests-before.TokenRequests)
	}
	if n := len(g.pushes.pushes("")); n != 0 {
		t.Errorf("%d pushes for an unregistered device", n)
	}
}

package ens_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/testenv/syncbuf"
)

// node is a second ENS on e's database, as another gateway node behind the
// same load balancer: its own caches, its own callback URL.
type node struct {
	t     *testing.T
	e     *env
	api   *httptest.Server
	svc   *ens.Service
	token string
}

func (e *env) startNode(t *testing.T) *node {
	t.Helper()
	n := &node{t: t, e: e, token: e.token}
	var handler http.Handler
	n.api = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.ServeHTTP(w, r) }))
	t.Cleanup(n.api.Close)
	cfg := e.cfg
	cfg.PublicURL, _ = url.Parse(n.api.URL)
	logs := &syncbuf.Buffer{}
	cfg.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("second node's logs:\n%s", logs.String())
		}
	})
	svc, err := ens.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.svc, handler = svc, svc.Handler()
	svc.Start()
	t.Cleanup(svc.Stop)
	return n
}

// register posts a registration body prepared by e to this node.
func (n *node) register(body map[string]any) (int, map[string]any) {
	n.t.Helper()
	data, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", n.api.URL+"/api/ens/registerdevicev2", bytes.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+n.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		n.t.Fatalf("registration answer %d is not JSON: %q", resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

// A new pin (after a certificate compromise, say) reaches a running node
// within seconds: it stops trusting the old certificate for registrations
// and for the GetItem calls of its live subscriptions.
func TestRepinnedEndpointReachesEveryNode(t *testing.T) {
	tlsSim := ewssim.StartTLS(t, ewssim.Config{ClockScale: 100 * time.Millisecond, Users: []ewssim.User{
		{Address: alice, Password: alicePW, DisplayName: "Alice"}, {Address: bob, Password: bobPW, DisplayName: "Bob"}}})
	e := newEnv(t, envOptions{rootCAs: tlsSim.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs})
	resp, err := tlsSim.Client().Get(tlsSim.URL + "/_sim/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	leaf := sha256.Sum256(resp.TLS.PeerCertificates[0].Raw)
	ctx := context.Background()
	if _, err := e.store.AddEndpoint(ctx, e.tenant.ID, tlsSim.EWSURL, "sha256:"+hex.EncodeToString(leaf[:])); err != nil {
		t.Fatal(err)
	}
	other := e.startNode(t)

	bobPhone := e.basicDevice("bob-phone", bob, bobPW, 0)
	bobPhone.EWSURL = tlsSim.EWSURL
	if status, body := other.register(e.registerBody(bobPhone)); status != http.StatusOK {
		t.Fatalf("registration on the second node: %d %v", status, body)
	}
	if _, err := tlsSim.Deliver(bob, mailFromCarol); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the push through the second node", func() bool { return len(e.pushes.pushes(tok("bob-phone"))) == 1 })

	// The pin moves to another certificate: the server's own is now refused.
	newPin := "sha256:" + strings.Repeat("ab", 32)
	if _, err := e.store.SetEndpointPin(ctx, e.tenant.ID, tlsSim.EWSURL, newPin); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; ; i++ {
		alicePhone := e.basicDevice(fmt.Sprint("alice-phone-", i), alice, alicePW, 0)
		alicePhone.EWSURL = tlsSim.EWSURL
		status, body := other.register(e.registerBody(alicePhone))
		if status == http.StatusBadGateway && strings.Contains(fmt.Sprint(body["message"]), "pinned") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 s after the new pin, the second node still registers with the old certificate: %d %v", status, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := tlsSim.Counters()
	if _, err := tlsSim.Deliver(bob, mailFromCarol); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // Exchange's callback and its retries
	if n := len(e.pushes.pushes(tok("bob-phone"))); n != 1 {
		t.Errorf("%d pushes to bob: the second node fetched the mail through the old pin", n)
	}
	if after := tlsSim.Counters(); after.Requests["GetItem"] != before.Requests["GetItem"] || after.Auth["basic_ok"] != before.Auth["basic_ok"] {
		t.Errorf("the server whose certificate no longer matches got GetItem %d→%d, basic logins %d→%d",
			before.Requests["GetItem"], after.Requests["GetItem"], before.Auth["basic_ok"], after.Auth["basic_ok"])
	}
}

// Removing an endpoint ends its subscriptions cleanly on every node: new
// registrations are refused, and Exchange's next callback is answered
// Unsubscribe. Added again, it works again.
func TestRemovedEndpointEndsItsSubscriptionsOnEveryNode(t *testing.T) {
	e := newEnv(t, envOptions{})
	other := e.startNode(t)
	ctx := context.Background()

	if status, body := other.register(e.registerBody(e.basicDevice("alice-phone", alice, alicePW, 0))); status != http.StatusOK {
		t.Fatalf("registration on the second node: %d %v", status, body)
	}
	e.deliver(alice, mailFromCarol)
	e.waitFor("the push through the second node", func() bool { return len(e.pushes.pushes(tok("alice-phone"))) == 1 })

	ended, err := e.store.RemoveEndpoint(ctx, e.tenant.ID, e.sim.EWSURL)
	if err != nil || ended != 1 {
		t.Fatalf("RemoveEndpoint: %d ended, %v", ended, err)
	}
	if _, err := e.store.RemoveEndpoint(ctx, e.tenant.ID, e.sim.EWSURL); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("removing it twice: %v", err)
	}
	status, body := other.register(e.registerBody(e.basicDevice("bob-phone", bob, bobPW, 0)))
	if status != http.StatusForbidden || body["error"] != "forbidden" {
		t.Fatalf("registration for a removed endpoint: %d %v", status, body)
	}
	if n := e.sim.Counters().Requests["Subscribe"]; n != 1 {
		t.Errorf("Exchange got %d Subscribe calls, want only the first registration's", n)
	}

	e.deliver(alice, mailFromCarol)
	e.waitFor("Unsubscribe", func() bool { return e.newestSimState(alice) == ewssim.StateUnsubscribed })
	if n := len(e.pushes.pushes(tok("alice-phone"))); n != 1 {
		t.Errorf("%d pushes to alice after her endpoint was removed", n)
	}
	if eps, err := e.store.Endpoints(ctx, e.tenant.ID); err != nil || len(eps) != 0 {
		t.Errorf("endpoints after the removal: %v, %v", eps, err)
	}

	if _, err := e.store.AddEndpoint(ctx, e.tenant.ID, e.sim.EWSURL, ""); err != nil {
		t.Fatalf("adding the endpoint again: %v", err)
	}
	if status, body := other.register(e.registerBody(e.basicDevice("alice-tablet", alice, alicePW, 0))); status != http.StatusOK {
		t.Fatalf("registration after the endpoint was added again: %d %v", status, body)
	}
	e.deliver(alice, mailFromCarol)
	e.waitFor("the push after the endpoint came back", func() bool { return len(e.pushes.pushes(tok("alice-tablet"))) == 1 })
}

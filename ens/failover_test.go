package ens_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

// The primary fails over to its streaming standby while mail arrives
// (issue 13): ENS runs on a multi-host URL with
// target_session_attrs=read-write. While no primary is reachable (the
// standby answers, but read-only) the device API answers 503 with
// Retry-After and Exchange's callbacks fail, so Exchange retries; once the
// standby is promoted, the mail that arrived meanwhile is pushed once,
// status answers, a new registration is written to the new primary and the
// compliance cache listens to the new primary.
func TestFailoverToPromotedStandby(t *testing.T) {
	primary := pgtest.NewServer(t)
	standby := primary.NewStandby(t)
	e := newEnv(t, envOptions{dbURL: pgtest.MultiHostURL(primary, standby), compliance: true, statusFrequency: 30})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.deliver(alice, mailFromCarol)
	e.waitFor("the first push", func() bool { return len(e.pushes.pushes("")) == 1 })
	// Replication is asynchronous: without this, the crash below could
	// lose the registration, which is not what this test is about.
	primary.WaitReplayed(t, standby)

	primary.Kill(t)
	died := time.Now()
	if st, retry := e.statusWithHeader("phone"); st != http.StatusServiceUnavailable || retry == "" {
		t.Fatalf("status without a primary: %d, Retry-After %q; want 503 with Retry-After", st, retry)
	}
	e.deliver(alice, mailForAlice)
	e.waitFor("Exchange's failed callback", func() bool { return e.sim.Counters().NotificationFailures >= 1 })
	// The compliance cache fails closed while its listener is away.
	phone := store.DeviceKey{TenantID: e.tenant.ID, DeviceID: "phone"}
	e.waitFor("the compliance listener to notice", func() bool {
		_, err := e.cfg.Compliance.Lookup(context.Background(), phone)
		return errors.Is(err, compliance.ErrUnknown)
	})
	// A load balancer hears it: the node's copy of the states is not current.
	if st, body := e.ready(); st != http.StatusServiceUnavailable || !strings.Contains(fmt.Sprint(body["missing"]), "compliance") {
		t.Errorf("ready while the compliance listener is lost: %d %v", st, body)
	}
	// Only the standby answers now, read-only: a read and a write (a key
	// for a new device) both wait for a primary rather than fail. The first
	// requests may still fail on the pool's connections to the dead primary
	// (each is dropped after one failure); asking once more than the pool
	// holds makes the last ones open new connections, which
	// target_session_attrs=read-write keeps off the standby.
	for range e.store.Pool().Config().MaxConns + 1 {
		if st, retry := e.statusWithHeader("phone"); st != http.StatusServiceUnavailable || retry == "" {
			t.Fatalf("status with only a read-only standby: %d, Retry-After %q; want 503 with Retry-After", st, retry)
		}
	}
	if st, retry := e.postWithHeader("/api/ens/publickey", map[string]string{"deviceId": "tablet", "email": alice}); st != http.StatusServiceUnavailable || retry == "" {
		t.Fatalf("publickey with only a read-only standby: %d, Retry-After %q; want 503 with Retry-After", st, retry)
	}

	standby.Promote(t)
	promoted := time.Now()
	e.waitFor("status answering again", func() bool {
		st, _ := e.call("GET", "/api/ens/status?deviceId=phone", nil)
		return st == http.StatusOK
	})
	answering := time.Since(promoted)
	e.waitFor("the mail that arrived meanwhile", func() bool { return len(e.pushes.pushes("")) == 2 })
	t.Logf("without a primary for %v; after the promotion: status answers in %v, the first push in %v (Exchange's retry)",
		promoted.Sub(died).Round(time.Millisecond), answering.Round(time.Millisecond), time.Since(promoted).Round(time.Millisecond))
	e.settle()
	if p := e.pushes.pushes(""); len(p) != 2 || p[1].Subject != mailForAlice.Subject {
		t.Fatalf("pushes after the failover: %+v", p)
	}
	e.register(e.basicDevice("tablet", alice, alicePW, 0))
	newPrimary, err := store.Open(context.Background(), standby.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer newPrimary.Close()
	if _, err := newPrimary.DeviceByID(context.Background(), e.tenant.ID, "tablet"); err != nil {
		t.Fatalf("the new registration on the promoted standby: %v", err)
	}

	// An admin's block on the new primary reaches the cache by NOTIFY: the
	// listener is back (it reloaded, so the state is known) before the block.
	e.waitFor("the compliance listener on the new primary", func() bool {
		_, err := e.cfg.Compliance.Lookup(context.Background(), phone)
		return err == nil
	})
	if err := e.store.SetCompliance(context.Background(), e.tenant.ID, "phone", store.Blocked); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the block in the compliance cache", func() bool {
		s, _ := e.cfg.Compliance.Lookup(context.Background(), phone)
		return s == store.Blocked
	})
	e.deliver(alice, mailFromCarol)
	e.waitFor("the tablet's push", func() bool { return len(e.pushes.pushes(tok("tablet"))) == 1 })
	e.settle()
	if n := len(e.pushes.pushes(tok("phone"))); n != 2 {
		t.Fatalf("the phone blocked after the failover got %d pushes, want the 2 from before", n)
	}
}

// postWithHeader posts body as JSON with the tenant's token and returns
// the HTTP status and the Retry-After header.
func (e *env) postWithHeader(path string, body any) (int, string) {
	e.t.Helper()
	data, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", e.api.URL+path, bytes.NewReader(data))
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// statusWithHeader asks for a device's status, as its app does, and
// returns the HTTP status and the Retry-After header.
func (e *env) statusWithHeader(deviceID string) (int, string) {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.api.URL+"/api/ens/status?deviceId="+deviceID, nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set(ens.DeviceSecretHeader, e.devices().Secret(deviceID))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

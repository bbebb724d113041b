package ens_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

// PostgreSQL restarted while mail arrives (issue 13): while it is down the
// device API answers 503 with Retry-After and Exchange's callbacks 503, so
// Exchange retries; once it is back, the mail that arrived meanwhile is
// pushed, once, status answers again and a new registration works. The
// compliance cache's LISTEN connection comes back by itself.
func TestPostgreSQLRestartLosesNothing(t *testing.T) {
	db := pgtest.NewServer(t)
	e := newEnv(t, envOptions{dbURL: db.URL(), compliance: true, statusFrequency: 30})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.deliver(alice, mailFromCarol)
	e.waitFor("the first push", func() bool { return len(e.pushes.pushes("")) == 1 })

	db.Stop(t)
	if st, _ := e.call("GET", "/api/ens/status?deviceId=phone", nil); st != http.StatusServiceUnavailable {
		t.Fatalf("status while PostgreSQL is down: %d, want 503", st)
	}
	e.deliver(alice, mailForAlice)
	e.waitFor("Exchange's failed callback", func() bool { return e.sim.Counters().NotificationFailures >= 1 })
	time.Sleep(200 * time.Millisecond)
	db.Start(t)

	e.waitFor("the mail that arrived meanwhile", func() bool { return len(e.pushes.pushes("")) == 2 })
	e.settle()
	if p := e.pushes.pushes(""); len(p) != 2 || p[1].Subject != mailForAlice.Subject {
		t.Fatalf("pushes after the restart: %+v", p)
	}
	e.waitFor("status answering again", func() bool {
		st, _ := e.call("GET", "/api/ens/status?deviceId=phone", nil)
		return st == http.StatusOK
	})
	e.register(e.basicDevice("tablet", alice, alicePW, 0))

	// An admin's block after the restart reaches the compliance cache,
	// whose LISTEN connection the restart broke.
	phone := store.DeviceKey{TenantID: e.tenant.ID, DeviceID: "phone"}
	e.waitFor("the compliance listener back", func() bool {
		_, err := e.cfg.Compliance.Lookup(context.Background(), phone)
		return err == nil
	})
	if err := e.store.SetCompliance(context.Background(), e.tenant.ID, "phone", store.Blocked); err != nil {
		t.Fatal(err)
	}
	e.waitFor("the block in the compliance cache", func() bool {
		state, _ := e.cfg.Compliance.Lookup(context.Background(), phone)
		return state == store.Blocked
	})
	e.deliver(alice, mailFromCarol)
	e.waitFor("the tablet's push", func() bool { return len(e.pushes.pushes(tok("tablet"))) == 1 })
	e.settle()
	if n := len(e.pushes.pushes(tok("phone"))); n != 2 {
		t.Fatalf("the phone blocked after the restart got %d pushes, want the 2 from before", n)
	}
}

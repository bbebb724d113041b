package compliance_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// Lookup, which requests use, waits for the first load; State, which
// answers at once, does not know the states until then.
func TestLookupWaitsForTheFirstLoad(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	s.SetCompliance(ctx, tenant.ID, "phone", store.Blocked)
	key := store.DeviceKey{TenantID: tenant.ID, DeviceID: "phone"}
	c := compliance.New(s, slog.New(slog.DiscardHandler)) // not running yet

	if _, err := c.State(key); !errors.Is(err, compliance.ErrUnknown) {
		t.Errorf("State before the first load: %v, want ErrUnknown", err)
	}
	gone, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Lookup(gone, key); !errors.Is(err, compliance.ErrUnknown) {
		t.Errorf("Lookup for a request that is gone: %v, want ErrUnknown", err)
	}

	type result struct {
		state string
		err   error
	}
	looked := make(chan result, 1)
	go func() {
		state, err := c.Lookup(ctx, key)
		looked <- result{state, err}
	}()
	select {
	case r := <-looked:
		t.Fatalf("Lookup answered %+v before the first load", r)
	case <-time.After(200 * time.Millisecond):
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(runCtx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	if r := <-looked; r.state != store.Blocked || r.err != nil {
		t.Errorf("Lookup after the first load: %+v, want blocked", r)
	}
}

// A database that accepts connections and never answers (a dropped-packet
// host) holds a request at most FirstLoadWait, then it is refused as
// unknown rather than kept for the TCP timeout.
func TestLookupWaitsForTheFirstLoadBoundedly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	silent, err := store.Open(context.Background(), "postgres://ensgate@"+l.Addr().String()+"/ensgate?connect_timeout=120")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c := compliance.New(silent, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	_, err = c.Lookup(deadline, store.DeviceKey{TenantID: 1, DeviceID: "phone"})
	if deadline.Err() != nil || !errors.Is(err, compliance.ErrUnknown) {
		t.Fatalf("Lookup against a silent database: %v (context %v), want ErrUnknown well before the request's own deadline", err, deadline.Err())
	}
}

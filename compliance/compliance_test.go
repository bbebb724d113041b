package compliance_test

import (
	"context"
	"errors"
	"log/slog"
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

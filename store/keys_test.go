package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/pgtest"
	"github.com/ensgate/ensgate/store"
)

// roomy limits never get in the way of a test about something else.
var roomy = store.KeyPairLimits{MaxAge: time.Hour, PerTenant: 1000}

// fillPool puts n free pairs under master key "m" into the pool.
func fillPool(t *testing.T, s *store.Store, n int) {
	t.Helper()
	var seq atomic.Int64
	gen := func() (store.KeyPair, error) {
		return store.KeyPair{KeyID: fmt.Sprintf("k%d-%d", time.Now().UnixNano(), seq.Add(1)), PublicKey: []byte("pub"),
			SealedPrivateKey: []byte("sealed"), MasterKeyID: "m"}, nil
	}
	if _, err := s.FillKeyPool(context.Background(), n, []string{"m"}, gen); err != nil {
		t.Fatal(err)
	}
}

// A tenant's cap holds under concurrent requests on two nodes, and the
// tenant at its cap takes nothing more from the pool while another tenant
// is still served.
func TestKeyPairCapPerTenantHoldsAcrossNodes(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	var nodes [2]*store.Store
	for i := range nodes {
		s, err := store.Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		if _, _, err := s.Migrate(ctx); err != nil {
			t.Fatal(err)
		}
		nodes[i] = s
	}
	spammer, _, _ := nodes[0].CreateTenant(ctx, "spammer", 0)
	other, _, _ := nodes[0].CreateTenant(ctx, "fabrikam", 0)
	fillPool(t, nodes[0], 30)
	lim := store.KeyPairLimits{MaxAge: 10 * time.Minute, PerTenant: 5}

	var got, capped atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			_, err := nodes[i%2].AssignKeyPair(ctx, spammer.ID, fmt.Sprintf("random-%d", i), []string{"m"}, lim)
			var capErr *store.KeyPairCapError
			switch {
			case err == nil:
				got.Add(1)
			case errors.As(err, &capErr):
				if capErr.RetryAfter <= 0 || capErr.RetryAfter > lim.MaxAge {
					t.Errorf("Retry-After %v", capErr.RetryAfter)
				}
				capped.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got.Load() != 5 || capped.Load() != 15 {
		t.Fatalf("20 concurrent requests under a cap of 5: %d pairs handed out, %d refused", got.Load(), capped.Load())
	}
	if free, _ := nodes[0].FreeKeyPairs(ctx, []string{"m"}); free != 25 {
		t.Errorf("%d free pairs, want 25: the capped requests took from the pool", free)
	}
	for i := range 5 {
		if _, err := nodes[i%2].AssignKeyPair(ctx, other.ID, fmt.Sprintf("phone-%d", i), []string{"m"}, lim); err != nil {
			t.Fatalf("another tenant while the spammer is at its cap: %v", err)
		}
	}
}

// A device that asks again gets its own unused pair back, and its expiry
// starts again; once expired, the pair is refused, and the clean-up
// deletes it.
func TestKeyPairAskedAgainIsTheSameUntilItExpires(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	fillPool(t, s, 5)
	lim := store.KeyPairLimits{MaxAge: 10 * time.Minute, PerTenant: 1}

	first, err := s.AssignKeyPair(ctx, tenant.ID, "phone", []string{"m"}, lim)
	if err != nil {
		t.Fatal(err)
	}
	age := func(d time.Duration) {
		t.Helper()
		if _, err := s.Pool().Exec(ctx, `UPDATE key_pairs SET assigned_at = now() - $2::interval WHERE key_id = $1`, first.KeyID, d); err != nil {
			t.Fatal(err)
		}
	}
	age(9 * time.Minute)
	again, err := s.AssignKeyPair(ctx, tenant.ID, "phone", []string{"m"}, lim)
	if err != nil || again.KeyID != first.KeyID {
		t.Fatalf("asked again: %s, %v; want its own %s", again.KeyID, err, first.KeyID)
	}
	if free, _ := s.FreeKeyPairs(ctx, []string{"m"}); free != 4 {
		t.Errorf("%d free pairs after asking twice, want 4", free)
	}
	if n, _ := s.DeleteStaleKeyPairs(ctx, lim.MaxAge); n != 0 {
		t.Errorf("asking again did not restart the expiry: %d deleted", n)
	}
	if _, err := s.AssignKeyPair(ctx, tenant.ID, "tablet", []string{"m"}, lim); !errors.As(err, new(*store.KeyPairCapError)) {
		t.Errorf("a second device past a cap of 1: %v", err)
	}

	age(11 * time.Minute)
	if _, err := s.DeviceKeyPair(ctx, tenant.ID, "phone", first.KeyID, lim.MaxAge); !errors.Is(err, store.ErrKeyPairExpired) {
		t.Fatalf("an expired pair: %v", err)
	}
	if n, err := s.DeleteStaleKeyPairs(ctx, lim.MaxAge); n != 1 || err != nil {
		t.Fatalf("clean-up deleted %d, %v; want the expired pair", n, err)
	}
	if _, err := s.DeviceKeyPair(ctx, tenant.ID, "phone", first.KeyID, lim.MaxAge); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a deleted pair: %v", err)
	}
	renewed, err := s.AssignKeyPair(ctx, tenant.ID, "phone", []string{"m"}, lim)
	if err != nil || renewed.KeyID == first.KeyID {
		t.Fatalf("after expiry: %s, %v; want a new pair", renewed.KeyID, err)
	}
}

// A tenant holding Reserve or more unused pairs cannot take the last
// Reserve free ones: they stay for tenants that hold few.
func TestKeyPoolReserveStaysForOtherTenants(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	spammer, _, _ := s.CreateTenant(ctx, "spammer", 0)
	other, _, _ := s.CreateTenant(ctx, "fabrikam", 0)
	fillPool(t, s, 10)
	lim := store.KeyPairLimits{MaxAge: 10 * time.Minute, PerTenant: 100, Reserve: 4}

	got := 0
	for i := range 10 {
		_, err := s.AssignKeyPair(ctx, spammer.ID, fmt.Sprintf("random-%d", i), []string{"m"}, lim)
		if errors.Is(err, store.ErrPoolEmpty) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got++
	}
	if got != 6 {
		t.Fatalf("the spammer got %d of 10 pairs, want 6 (4 kept back)", got)
	}
	for i := range 4 {
		if _, err := s.AssignKeyPair(ctx, other.ID, fmt.Sprintf("phone-%d", i), []string{"m"}, lim); err != nil {
			t.Fatalf("the other tenant's pair %d: %v", i, err)
		}
	}
}

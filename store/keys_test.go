package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

// roomy limits never get in the way of a test about something else.
var roomy = store.KeyPairLimits{MaxAge: time.Hour, PerTenant: 1000, PerAddress: 1000}

// fillPool puts n free pairs under master key "m" into the pool.
func fillPool(t *testing.T, s *store.Store, n int) {
	t.Helper()
	var pairs []store.KeyPair
	for i := range n {
		pairs = append(pairs, store.KeyPair{KeyID: fmt.Sprintf("k%d-%d", time.Now().UnixNano(), i), PublicKey: []byte("pub"),
			SealedPrivateKey: []byte("sealed"), MasterKeyID: "m"})
	}
	if _, err := s.AddKeyPairs(context.Background(), n, []string{"m"}, pairs); err != nil {
		t.Fatal(err)
	}
}

// twoNodes opens two stores on one new database, as two nodes would.
func twoNodes(t *testing.T) [2]*store.Store {
	t.Helper()
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
	return nodes
}

// assignConcurrently makes n concurrent requests for key pairs of tenantID,
// each with a device id of its own and the client address addr(i), on the
// two nodes by turns. It counts the pairs handed out and the requests
// refused with a *KeyPairCapError, whose ByAddress must be byAddress.
func assignConcurrently(t *testing.T, nodes [2]*store.Store, tenantID int64, n int, addr func(int) string,
	lim store.KeyPairLimits, byAddress bool) (got, capped int32) {
	t.Helper()
	var gotN, cappedN atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			l := lim
			l.ClientAddress = addr(i)
			_, err := nodes[i%2].AssignKeyPair(context.Background(), tenantID, fmt.Sprintf("random-%d", i), []string{"m"}, l)
			var capErr *store.KeyPairCapError
			switch {
			case err == nil:
				gotN.Add(1)
			case errors.As(err, &capErr):
				if capErr.RetryAfter <= 0 || capErr.RetryAfter > lim.MaxAge || capErr.ByAddress != byAddress {
					t.Errorf("cap error %+v", capErr)
				}
				cappedN.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	return gotN.Load(), cappedN.Load()
}

// A tenant's cap holds under concurrent requests on two nodes, and the
// tenant at its cap takes nothing more from the pool while another tenant
// is still served.
func TestKeyPairCapPerTenantHoldsAcrossNodes(t *testing.T) {
	ctx := context.Background()
	nodes := twoNodes(t)
	spammer, _, _ := nodes[0].CreateTenant(ctx, "spammer", 0)
	other, _, _ := nodes[0].CreateTenant(ctx, "fabrikam", 0)
	fillPool(t, nodes[0], 30)
	lim := store.KeyPairLimits{MaxAge: 10 * time.Minute, PerTenant: 5, PerAddress: 5}

	// An address each: only the tenant's cap can stop them.
	got, capped := assignConcurrently(t, nodes, spammer.ID, 20, func(i int) string { return fmt.Sprintf("192.0.2.%d", i) }, lim, false)
	if got != 5 || capped != 15 {
		t.Fatalf("20 concurrent requests under a cap of 5: %d pairs handed out, %d refused", got, capped)
	}
	if free, _ := nodes[0].FreeKeyPairs(ctx, []string{"m"}); free != 25 {
		t.Errorf("%d free pairs, want 25: the capped requests took from the pool", free)
	}
	for i := range 5 {
		lim.ClientAddress = "198.51.100.7"
		if _, err := nodes[i%2].AssignKeyPair(ctx, other.ID, fmt.Sprintf("phone-%d", i), []string{"m"}, lim); err != nil {
			t.Fatalf("another tenant while the spammer is at its cap: %v", err)
		}
	}
}

// Finding 4 (fair shares): one app asking for keys with random device ids
// from one address holds at most its address's cap, enforced across nodes
// under concurrency, and the tenant's other devices, at other addresses,
// still get keys.
func TestKeyPairCapPerAddressLeavesTheTenantToOthers(t *testing.T) {
	ctx := context.Background()
	nodes := twoNodes(t)
	tenant, _, _ := nodes[0].CreateTenant(ctx, "contoso", 0)
	fillPool(t, nodes[0], 30)
	lim := store.KeyPairLimits{MaxAge: 10 * time.Minute, PerTenant: 6, PerAddress: 3}

	got, capped := assignConcurrently(t, nodes, tenant.ID, 20, func(int) string { return "192.0.2.1" }, lim, true)
	if got != 3 || capped != 17 {
		t.Fatalf("20 concurrent requests from one address under its cap of 3: %d pairs handed out, %d refused", got, capped)
	}
	for i := range 3 {
		lim.ClientAddress = fmt.Sprintf("198.51.100.%d", i)
		if _, err := nodes[i%2].AssignKeyPair(ctx, tenant.ID, fmt.Sprintf("phone-%d", i), []string{"m"}, lim); err != nil {
			t.Fatalf("a device at another address while one holds its cap: %v", err)
		}
	}
	// The tenant's cap still bounds the sum.
	lim.ClientAddress = "203.0.113.1"
	if _, err := nodes[0].AssignKeyPair(ctx, tenant.ID, "tablet", []string{"m"}, lim); !errors.As(err, new(*store.KeyPairCapError)) {
		t.Errorf("a seventh pair under a tenant cap of 6: %v", err)
	}
}

// A device that asks again gets its own unused pair back, but its expiry
// does not start again: asking every few minutes would otherwise hold a
// pair, and a place under the caps, for ever. Once expired, the pair is
// refused, and the clean-up deletes it.
func TestKeyPairAskedAgainIsTheSameUntilItExpires(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	fillPool(t, s, 5)
	lim := store.KeyPairLimits{MaxAge: 10 * time.Minute, PerTenant: 1, PerAddress: 1, ClientAddress: "192.0.2.1"}

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
		t.Errorf("a pair asked for 9 minutes ago was deleted: %d", n)
	}
	if _, err := s.AssignKeyPair(ctx, tenant.ID, "tablet", []string{"m"}, lim); !errors.As(err, new(*store.KeyPairCapError)) {
		t.Errorf("a second device past a cap of 1: %v", err)
	}

	// Two minutes on (the pair as asked for again, moved back by two
	// minutes): 11 minutes after it was first handed out, it has expired.
	if _, err := s.Pool().Exec(ctx, `UPDATE key_pairs SET assigned_at = assigned_at - interval '2 minutes' WHERE key_id = $1`, first.KeyID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeviceKeyPair(ctx, tenant.ID, "phone", first.KeyID, lim.MaxAge); !errors.Is(err, store.ErrKeyPairExpired) {
		t.Fatalf("a pair asked for again 2 minutes before its expiry, 2 minutes later: %v", err)
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
	lim := store.KeyPairLimits{MaxAge: 10 * time.Minute, PerTenant: 100, PerAddress: 100, Reserve: 4}

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

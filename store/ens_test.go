package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/store"
)

func TestKeyPoolFillsOnceAcrossNodesAndAssignsEachPairOnce(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	var seq sync.Mutex
	n := 0
	gen := func() (store.KeyPair, error) {
		seq.Lock()
		defer seq.Unlock()
		n++
		time.Sleep(5 * time.Millisecond) // generation takes time; others must not pile on
		return store.KeyPair{KeyID: fmt.Sprintf("k%d", n), PublicKey: []byte("pub"), SealedPrivateKey: []byte("sealed"), MasterKeyID: "m"}, nil
	}
	var wg sync.WaitGroup
	for range 4 { // four nodes at once
		wg.Go(func() {
			if _, err := s.FillKeyPool(ctx, 10, gen); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if free, _ := s.FreeKeyPairs(ctx); free != 10 {
		t.Fatalf("%d free key pairs after four concurrent fills to 10", free)
	}

	got := make(chan string, 20)
	for i := range 12 {
		wg.Go(func() {
			kp, err := s.AssignKeyPair(ctx, tenant.ID, fmt.Sprintf("dev-%d", i))
			if errors.Is(err, store.ErrPoolEmpty) {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			got <- kp.KeyID
		})
	}
	wg.Wait()
	close(got)
	seen := map[string]bool{}
	for id := range got {
		if seen[id] {
			t.Fatalf("key pair %s assigned twice", id)
		}
		seen[id] = true
	}
	if len(seen) != 10 {
		t.Fatalf("%d key pairs assigned from a pool of 10", len(seen))
	}
	if _, err := s.DeviceKeyPair(ctx, tenant.ID, "someone-else", "k1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a key pair was found for a device it was not assigned to: %v", err)
	}
}

func TestPushClaimsAreExclusiveAndExpire(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, _ := s.AddEndpoint(ctx, tenant.ID, "https://mail.example.test/EWS/Exchange.asmx", "")
	kp := store.KeyPair{KeyID: "k", PublicKey: []byte("p"), SealedPrivateKey: []byte("s"), MasterKeyID: "m"}
	s.FillKeyPool(ctx, 1, func() (store.KeyPair, error) { return kp, nil })
	assigned, _ := s.AssignKeyPair(ctx, tenant.ID, "phone")
	sub, err := s.Register(ctx, store.Registration{
		Subscription: store.Subscription{PublicID: "sub", TenantID: tenant.ID, MailboxHash: []byte("mbx"), EndpointID: ep.ID,
			AuthType: "basic", SealedCredentials: []byte("x"), EWSSubscriptionID: "ews", StatusFrequency: 15},
		Device:    store.Device{TenantID: tenant.ID, DeviceID: "phone", MailboxHash: []byte("mbx"), Platform: "ios", PushToken: "t"},
		KeyPairID: assigned.ID,
	})
	if err != nil {
		t.Fatal(err)
	}
	item := []byte("item-1")
	devices := []int64{1, 2}

	var mu sync.Mutex
	owners := map[int64]int{}
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			claimed, _, err := s.ClaimPushes(ctx, sub.ID, item, devices, time.Minute)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			for _, d := range claimed {
				owners[d]++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if owners[1] != 1 || owners[2] != 1 {
		t.Fatalf("claims %v: each push must have exactly one owner", owners)
	}
	claimed, pending, _ := s.ClaimPushes(ctx, sub.ID, item, devices, time.Minute)
	if len(claimed) != 0 || !pending {
		t.Fatalf("while claimed elsewhere: claimed %v, pending %v", claimed, pending)
	}
	// Device 1 finished; device 2's owner died: its claim expires.
	s.FinishPushes(ctx, sub.ID, item, []int64{1})
	s.Pool().Exec(ctx, `UPDATE push_claims SET claimed_until = now() - interval '1 second' WHERE device_id = 2`)
	claimed, pending, _ = s.ClaimPushes(ctx, sub.ID, item, devices, time.Minute)
	if len(claimed) != 1 || claimed[0] != 2 || pending {
		t.Fatalf("after expiry: claimed %v, pending %v; want device 2 taken over", claimed, pending)
	}
	s.ReleasePushes(ctx, sub.ID, item, []int64{2})
	claimed, _, _ = s.ClaimPushes(ctx, sub.ID, item, devices, time.Minute)
	if len(claimed) != 1 || claimed[0] != 2 {
		t.Fatalf("after release: claimed %v", claimed)
	}
	s.FinishPushes(ctx, sub.ID, item, []int64{2})
	if claimed, pending, _ := s.ClaimPushes(ctx, sub.ID, item, devices, time.Minute); len(claimed) != 0 || pending {
		t.Fatalf("after both finished: claimed %v, pending %v", claimed, pending)
	}
}

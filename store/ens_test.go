package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ensgate/ensgate/store"
	"github.com/jackc/pgx/v5"
)

func TestKeyPoolFillsOnceAcrossNodesAndAssignsEachPairOnce(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	var wg sync.WaitGroup
	var added atomic.Int64
	for node := range 4 { // four nodes at once, each with a batch of 10
		wg.Go(func() {
			var pairs []store.KeyPair
			for i := range 10 {
				pairs = append(pairs, store.KeyPair{KeyID: fmt.Sprintf("k%d-%d", node, i), PublicKey: []byte("pub"),
					SealedPrivateKey: []byte("sealed"), MasterKeyID: "m"})
			}
			n, err := s.AddKeyPairs(ctx, 10, []string{"m"}, pairs)
			if err != nil {
				t.Error(err)
			}
			added.Add(int64(n))
		})
	}
	wg.Wait()
	if free, _ := s.FreeKeyPairs(ctx, []string{"m"}); free != 10 || added.Load() != 10 {
		t.Fatalf("%d free key pairs (%d reported added) after four concurrent fills to 10", free, added.Load())
	}

	got := make(chan string, 20)
	for i := range 12 {
		wg.Go(func() {
			kp, err := s.AssignKeyPair(ctx, tenant.ID, fmt.Sprintf("dev-%d", i), []string{"m"}, roomy)
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
	if _, err := s.DeviceKeyPair(ctx, tenant.ID, "someone-else", "k1", time.Hour); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a key pair was found for a device it was not assigned to: %v", err)
	}
}

// Only pairs under keys the node can open are counted and handed out; pairs
// are re-sealed each once.
func TestKeyPoolIsPerMasterKeyAndResealsOnce(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	var pairs []store.KeyPair
	for n := range 3 {
		pairs = append(pairs, store.KeyPair{KeyID: fmt.Sprintf("k%d", n), PublicKey: []byte("pub"), SealedPrivateKey: []byte("under old"), MasterKeyID: "old"})
	}
	if _, err := s.AddKeyPairs(ctx, 3, []string{"old"}, pairs); err != nil {
		t.Fatal(err)
	}
	if free, _ := s.FreeKeyPairs(ctx, []string{"new"}); free != 0 {
		t.Fatalf("%d free pairs under the new key, want 0", free)
	}
	if _, err := s.AssignKeyPair(ctx, tenant.ID, "phone", []string{"new"}, roomy); !errors.Is(err, store.ErrPoolEmpty) {
		t.Fatalf("a pair under the old key was handed out to a node that cannot open it: %v", err)
	}
	assigned, err := s.AssignKeyPair(ctx, tenant.ID, "tablet", []string{"new", "old"}, roomy)
	if err != nil {
		t.Fatal(err)
	}

	pairs, err = s.KeyPairsSealedUnder(ctx, []string{"old", "other"}, 10)
	if err != nil || len(pairs) != 3 {
		t.Fatalf("pairs under old: %d, %v; want all 3, free and assigned", len(pairs), err)
	}
	for _, kp := range pairs {
		if ok, err := s.ResealKeyPair(ctx, kp, []byte("under new"), "new"); !ok || err != nil {
			t.Fatalf("re-seal %s: %v, %v", kp.KeyID, ok, err)
		}
		if ok, _ := s.ResealKeyPair(ctx, kp, []byte("again"), "new"); ok {
			t.Fatalf("%s re-sealed twice from the same read", kp.KeyID)
		}
	}
	if left, _ := s.KeyPairsSealedUnder(ctx, []string{"old"}, 10); len(left) != 0 {
		t.Fatalf("%d pairs still under the old key", len(left))
	}
	kp, err := s.DeviceKeyPair(ctx, tenant.ID, "tablet", assigned.KeyID, time.Hour)
	if err != nil || kp.MasterKeyID != "new" || string(kp.SealedPrivateKey) != "under new" {
		t.Fatalf("the assigned pair after re-sealing: %+v, %v", kp, err)
	}
	if free, _ := s.FreeKeyPairs(ctx, []string{"new"}); free != 2 {
		t.Fatalf("%d free pairs under the new key after re-sealing, want 2", free)
	}
	if err := s.DeleteKeyPair(ctx, kp.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DeviceKeyPair(ctx, tenant.ID, "tablet", assigned.KeyID, time.Hour); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("deleted pair: %v", err)
	}
}

// A registration after a master-key rotation gathers the mailbox's rows
// made under the old key: one live subscription, every device on it.
func TestRegisterMovesAMailboxToItsNewHash(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, _ := s.AddEndpoint(ctx, tenant.ID, "https://mail.example.test/EWS/Exchange.asmx", "")
	register := func(device, mailbox string, former ...[]byte) store.Subscription {
		t.Helper()
		sub, err := s.Register(ctx, store.Registration{
			Subscription: store.Subscription{PublicID: "sub-" + device, TenantID: tenant.ID, MailboxHash: []byte(mailbox), EndpointID: ep.ID,
				AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: "ews-" + device, StatusFrequency: 15},
			Device:              store.Device{TenantID: tenant.ID, DeviceID: device, MailboxHash: []byte(mailbox), Platform: "ios", PushToken: device},
			FormerMailboxHashes: former,
		})
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	old := register("phone", "alice under old key")
	register("laptop", "bob under old key")
	renewed := register("tablet", "alice under new key", []byte("alice under old key"), []byte("alice under older key"))

	if sub, _ := s.SubscriptionByPublicID(ctx, old.PublicID); sub.State != store.SubscriptionEnded || sub.StateReason != store.ReasonSuperseded {
		t.Errorf("the old-key subscription: %s/%s, want ended/superseded", sub.State, sub.StateReason)
	}
	devices, err := s.ActiveDevices(ctx, tenant.ID, renewed.MailboxHash)
	if err != nil || len(devices) != 2 {
		t.Fatalf("devices under the new hash: %d, %v; want phone and tablet", len(devices), err)
	}
	if left, _ := s.ActiveDevices(ctx, tenant.ID, []byte("alice under old key")); len(left) != 0 {
		t.Errorf("%d devices left under the old hash", len(left))
	}
	if bob, _ := s.ActiveDevices(ctx, tenant.ID, []byte("bob under old key")); len(bob) != 1 {
		t.Errorf("another mailbox was moved: %d devices left for bob", len(bob))
	}
	if latest, err := s.LatestSubscription(ctx, tenant.ID, renewed.MailboxHash); err != nil || latest.PublicID != renewed.PublicID {
		t.Errorf("latest subscription: %s, %v", latest.PublicID, err)
	}
}

// Registrations of one mailbox at once, first of new devices, then of the
// same devices after a master-key rotation (moving every device row while
// each registration holds its own): all succeed, one subscription stays.
func TestConcurrentRegistrationsOfOneMailboxLeaveOneLiveSubscription(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, _ := s.AddEndpoint(ctx, tenant.ID, "https://mail.example.test/EWS/Exchange.asmx", "")
	registerAll := func(round, mailbox string, former [][]byte) {
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				device := fmt.Sprintf("dev-%d", i)
				_, err := s.Register(ctx, store.Registration{
					Subscription: store.Subscription{PublicID: round + device, TenantID: tenant.ID, MailboxHash: []byte(mailbox), EndpointID: ep.ID,
						AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: round + device, StatusFrequency: 15},
					Device:              store.Device{TenantID: tenant.ID, DeviceID: device, MailboxHash: []byte(mailbox), Platform: "ios", PushToken: device},
					Owner:               store.DeviceOwner{MailboxHashes: append([][]byte{[]byte(mailbox)}, former...)},
					FormerMailboxHashes: former,
				})
				if err != nil {
					t.Errorf("%s: register %s: %v", round, device, err)
				}
			})
		}
		wg.Wait()
		var live int
		if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM subscriptions WHERE state = 'active'`).Scan(&live); err != nil || live != 1 {
			t.Fatalf("%s: %d live subscriptions after 8 concurrent registrations of one mailbox (%v), want 1", round, live, err)
		}
		if devices, _ := s.ActiveDevices(ctx, tenant.ID, []byte(mailbox)); len(devices) != 8 {
			t.Fatalf("%s: %d active devices, want 8", round, len(devices))
		}
	}
	registerAll("new devices", "alice under old key", nil)
	registerAll("after rotation", "alice under new key", [][]byte{[]byte("alice under old key")})
}

func TestPushClaimsAreExclusiveAndExpire(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, _ := s.AddEndpoint(ctx, tenant.ID, "https://mail.example.test/EWS/Exchange.asmx", "")
	kp := store.KeyPair{KeyID: "k", PublicKey: []byte("p"), SealedPrivateKey: []byte("s"), MasterKeyID: "m"}
	s.AddKeyPairs(ctx, 1, []string{"m"}, []store.KeyPair{kp})
	assigned, _ := s.AssignKeyPair(ctx, tenant.ID, "phone", []string{"m"}, roomy)
	sub, err := s.Register(ctx, store.Registration{
		Subscription: store.Subscription{PublicID: "sub", TenantID: tenant.ID, MailboxHash: []byte("mbx"), EndpointID: ep.ID,
			AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: "ews", StatusFrequency: 15},
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
	s.FinishPushes(ctx, sub.ID, item, []int64{1}, store.PushDelivered)
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
	s.FinishPushes(ctx, sub.ID, item, []int64{2}, store.PushDelivered)
	if claimed, pending, _ := s.ClaimPushes(ctx, sub.ID, item, devices, time.Minute); len(claimed) != 0 || pending {
		t.Fatalf("after both finished: claimed %v, pending %v", claimed, pending)
	}

	// A push handed to a job is the job's: not claimable, and not pending
	// either (Exchange's retry is answered, the job sees it through).
	other := []byte("another item")
	claimed, _, _ = s.ClaimPushes(ctx, sub.ID, other, devices, time.Minute)
	queued := false
	if err := s.QueuePushes(ctx, sub.ID, other, claimed, func(_ context.Context, _ pgx.Tx, owned []int64) error {
		queued = len(owned) == len(claimed)
		return nil
	}); err != nil || !queued {
		t.Fatalf("queue pushes: %v (then ran: %v)", err, queued)
	}
	if claimed, pending, _ := s.ClaimPushes(ctx, sub.ID, other, devices, time.Minute); len(claimed) != 0 || pending {
		t.Fatalf("pushes held by a job: claimed %v, pending %v; want neither", claimed, pending)
	}

	// A push another job holds already is not queued twice.
	if err := s.QueuePushes(ctx, sub.ID, other, devices, func(_ context.Context, _ pgx.Tx, owned []int64) error {
		t.Errorf("queued %v again", owned)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

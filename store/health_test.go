package store_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/ensgate/ensgate/store"
)

// The summary counts each state and reason of the tenant's subscriptions
// only, and times the live ones by when Exchange was last heard from.
func TestSubscriptionHealthCountsStatesReasonsAndSilence(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	other, _, _ := s.CreateTenant(ctx, "fabrikam", 0)
	endpoints := map[int64]int64{}
	for _, id := range []int64{tenant.ID, other.ID} {
		ep, err := s.AddEndpoint(ctx, id, "https://mail.example.test/EWS/Exchange.asmx", "")
		if err != nil {
			t.Fatal(err)
		}
		endpoints[id] = ep.ID
	}
	register := func(tenantID int64, device string) store.Subscription {
		t.Helper()
		mailbox := []byte("mailbox of " + device)
		sub, err := s.Register(ctx, store.Registration{
			Subscription: store.Subscription{PublicID: fmt.Sprint(tenantID, device, time.Now().UnixNano()), TenantID: tenantID, MailboxHash: mailbox,
				EndpointID: endpoints[tenantID], AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: "ews-" + device, StatusFrequency: 15},
			Device: store.Device{TenantID: tenantID, DeviceID: device, MailboxHash: mailbox, Platform: "ios", PushToken: device},
			Owner:  store.DeviceOwner{MailboxHashes: [][]byte{mailbox}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	lastSeen := func(sub store.Subscription, ago time.Duration) {
		t.Helper()
		if _, err := s.Pool().Exec(ctx, `UPDATE subscriptions SET last_seen_at = now() - $2::interval WHERE id = $1`,
			sub.ID, ago.String()); err != nil {
			t.Fatal(err)
		}
	}

	if h, err := s.SubscriptionHealth(ctx, tenant.ID); err != nil || h.Active+h.Failed+h.Ended != 0 || h.Groups != nil || h.AsOf.IsZero() || !h.NewestHeard.IsZero() {
		t.Fatalf("no subscriptions: %+v, %v", h, err)
	}

	register(tenant.ID, "fresh")
	lastSeen(register(tenant.ID, "quiet"), 10*time.Minute)   // within its 15 minutes
	lastSeen(register(tenant.ID, "overdue"), 20*time.Minute) // past them
	register(tenant.ID, "fresh")                             // supersedes the first
	for _, stop := range []struct{ device, state, reason string }{
		{"unauthorized", store.SubscriptionFailed, store.ReasonUnauthorized},
		{"silent-1", store.SubscriptionFailed, store.ReasonSilent},
		{"silent-2", store.SubscriptionFailed, store.ReasonSilent},
		{"gone", store.SubscriptionEnded, store.ReasonNoDevices},
	} {
		sub := register(tenant.ID, stop.device)
		lastSeen(sub, time.Hour)
		if stop.reason == store.ReasonSilent {
			continue // the liveness check fails these below
		}
		if ok, err := s.StopSubscription(ctx, sub.ID, stop.state, stop.reason, nil); !ok || err != nil {
			t.Fatalf("stop %s: %v, %v", stop.device, ok, err)
		}
	}
	if failed, err := s.FailSilentSubscriptions(ctx, 10, nil); err != nil || len(failed) != 2 {
		t.Fatalf("FailSilentSubscriptions: %d, %v", len(failed), err)
	}
	register(other.ID, "elsewhere") // another tenant's: not counted
	lastSeen(register(other.ID, "elsewhere-overdue"), time.Hour)

	h, err := s.SubscriptionHealth(ctx, tenant.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.SubscriptionGroup{
		{State: "active", Count: 3},
		{State: "failed", Reason: "silent", Count: 2},
		{State: "failed", Reason: "unauthorized", Count: 1},
		{State: "ended", Reason: "no_devices", Count: 1},
		{State: "ended", Reason: "superseded", Count: 1},
	}
	if !reflect.DeepEqual(h.Groups, want) {
		t.Errorf("groups %+v, want %+v", h.Groups, want)
	}
	if h.Active != 3 || h.Overdue != 1 || h.Failed != 3 || h.Ended != 2 {
		t.Errorf("active %d (overdue %d), failed %d, ended %d; want 3 (1), 3, 2", h.Active, h.Overdue, h.Failed, h.Ended)
	}
	// The stopped subscriptions were last heard from an hour ago: only the
	// live ones time the silence.
	if age := h.AsOf.Sub(h.OldestHeard); age < 20*time.Minute || age > 21*time.Minute {
		t.Errorf("oldest heard %v before %v, want 20 minutes", age, h.AsOf)
	}
	if age := h.AsOf.Sub(h.NewestHeard); age < 0 || age > time.Minute {
		t.Errorf("newest heard %v before %v, want just now", age, h.AsOf)
	}
}

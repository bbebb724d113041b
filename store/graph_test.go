package store_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ensgate/ensgate/store"
)

// A Graph root is allowed with the mail app's OAuth client, which it cannot
// be without; it is listed and found like an EWS URL, with its kind.
func TestGraphEndpointNeedsItsOAuthClient(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	if _, err := s.Allow(ctx, store.Endpoint{TenantID: tenant.ID, Kind: store.KindGraph, URL: "https://graph.microsoft.com"}); err == nil {
		t.Fatal("a Graph endpoint without a client id was allowed")
	}
	oauth := store.OAuth{ClientID: "app-id", Authority: "https://login.microsoftonline.com/organizations/", Scope: "https://graph.microsoft.com/.default offline_access"}
	added, err := s.Allow(ctx, store.Endpoint{TenantID: tenant.ID, Kind: store.KindGraph, URL: "HTTPS://Graph.Microsoft.com", OAuth: oauth})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddEndpoint(ctx, tenant.ID, "https://mail.contoso.test/EWS/Exchange.asmx", ""); err != nil {
		t.Fatal(err)
	}
	found, err := s.EndpointFor(ctx, tenant.ID, "https://graph.microsoft.com:443")
	if err != nil || found.ID != added.ID || found.Kind != store.KindGraph || found.OAuth != oauth {
		t.Fatalf("found %+v, %v; want the Graph entry with its client", found, err)
	}
	if got := found.OAuth.TokenURL(); got != "https://login.microsoftonline.com/organizations/oauth2/v2.0/token" {
		t.Errorf("token URL %q", got)
	}
	list, _ := s.Endpoints(ctx, tenant.ID)
	if len(list) != 2 || list[0].Kind != store.KindGraph || list[1].Kind != store.KindEWS || list[1].OAuth != (store.OAuth{}) {
		t.Errorf("endpoints %+v", list)
	}
}

// Rotated refresh tokens are re-sealed in place, one refresh at a time. A
// Graph subscription past its expiry fails as expired.
func TestGraphSubscriptionResealsAndExpires(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, err := s.Allow(ctx, store.Endpoint{TenantID: tenant.ID, Kind: store.KindGraph, URL: "https://graph.microsoft.com",
		OAuth: store.OAuth{ClientID: "app", Authority: "https://login.example.test/x", Scope: "s"}})
	if err != nil {
		t.Fatal(err)
	}
	mailbox := []byte("mailbox")
	sub, err := s.Register(ctx, store.Registration{
		Subscription: store.Subscription{PublicID: "g1", TenantID: tenant.ID, MailboxHash: mailbox, EndpointID: ep.ID, AuthType: "oauth",
			SealedCredentials: []byte("v1"), Source: store.SourceGraph, RemoteID: "graph-sub-1", ExpiresAt: time.Now().Add(time.Hour), StatusFrequency: 60},
		Device: store.Device{TenantID: tenant.ID, DeviceID: "phone", MailboxHash: mailbox, Platform: "ios", PushToken: "ab"},
		Owner:  store.DeviceOwner{MailboxHashes: [][]byte{mailbox}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if sub.Source != store.SourceGraph || sub.RemoteID != "graph-sub-1" || time.Until(sub.ExpiresAt) < 50*time.Minute {
		t.Fatalf("stored %+v", sub)
	}
	// Two nodes refresh at once: the second waits for the first and sees
	// its result, so a rotating refresh token is redeemed once.
	var wg sync.WaitGroup
	var redeemed atomic.Int32
	for range 2 {
		wg.Go(func() {
			_, err := s.UpdateCredentials(ctx, sub.ID, func(current []byte) ([]byte, error) {
				if string(current) != "v1" {
					return nil, nil // refreshed meanwhile
				}
				redeemed.Add(1)
				time.Sleep(50 * time.Millisecond) // the token endpoint's round trip
				return []byte("v2"), nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if redeemed.Load() != 1 {
		t.Fatalf("the refresh token was redeemed %d times, want once", redeemed.Load())
	}
	if err := s.SetRemoteSubscription(ctx, sub.ID, "graph-sub-2", time.Now().Add(-time.Second)); err != nil {
		t.Fatal(err)
	}
	got, _ := s.SubscriptionByPublicID(ctx, "g1")
	if string(got.SealedCredentials) != "v2" || got.RemoteID != "graph-sub-2" {
		t.Fatalf("after reseal and renewal: %+v", got)
	}
	failed, err := s.FailSilentSubscriptions(ctx, 10, nil)
	if err != nil || len(failed) != 1 || failed[0].ID != sub.ID || failed[0].StateReason != store.ReasonExpired {
		t.Fatalf("failed %+v, %v; want the expired subscription", failed, err)
	}
	if _, err := s.SubscriptionByPublicID(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown id: %v", err)
	}
}

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

// Every change to an endpoint is announced, and a listener is reset when it
// (re)connects.
func TestEndpointChangesAreAnnounced(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tenant, _, err := s.CreateTenant(ctx, "contoso", 0)
	if err != nil {
		t.Fatal(err)
	}
	const url = "https://mail.contoso.test/EWS/Exchange.asmx"
	ep, err := s.AddEndpoint(ctx, tenant.ID, url, "")
	if err != nil {
		t.Fatal(err)
	}
	resets, changes := make(chan struct{}, 10), make(chan int64, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ListenEndpoints(ctx, func() { resets <- struct{}{} }, func(id int64) { changes <- id }, func(err error) { t.Errorf("listener: %v", err) })
	}()
	defer func() { cancel(); <-done }()
	select {
	case <-resets:
	case <-time.After(10 * time.Second):
		t.Fatal("the listener did not start")
	}
	pin := "sha256:" + fmt.Sprintf("%064x", 1)
	for _, step := range []struct {
		name   string
		change func() error
	}{ // in this order: each needs the one before
		{"pin", func() error { _, err := s.SetEndpointPin(ctx, tenant.ID, url, pin); return err }},
		{"remove", func() error { _, err := s.RemoveEndpoint(ctx, tenant.ID, url); return err }},
		{"re-add", func() error { _, err := s.AddEndpoint(ctx, tenant.ID, url, ""); return err }},
	} {
		name := step.name
		if err := step.change(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		select {
		case id := <-changes:
			if id != ep.ID {
				t.Errorf("%s announced endpoint %d, want %d", name, id, ep.ID)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s was not announced", name)
		}
	}
	if e, err := s.EndpointFor(ctx, tenant.ID, url); err != nil || e.ID != ep.ID || e.Fingerprint != "" {
		t.Errorf("after removal and re-adding: %+v, %v; want the same id without a pin", e, err)
	}
}

// No live subscription ever points at a removed endpoint: a registration
// after the removal fails, and those racing it are ended with it.
func TestRemovedEndpointKeepsNoLiveSubscription(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	tenant, _, err := s.CreateTenant(ctx, "contoso", 0)
	if err != nil {
		t.Fatal(err)
	}
	const url = "https://mail.contoso.test/EWS/Exchange.asmx"
	ep, err := s.AddEndpoint(ctx, tenant.ID, url, "")
	if err != nil {
		t.Fatal(err)
	}
	register := func(round, device string) error {
		_, err := s.Register(ctx, store.Registration{
			Subscription: store.Subscription{PublicID: round + device, TenantID: tenant.ID, MailboxHash: []byte("mailbox of " + device),
				EndpointID: ep.ID, AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: round + device, StatusFrequency: 15},
			Device: store.Device{TenantID: tenant.ID, DeviceID: device, MailboxHash: []byte("mailbox of " + device), Platform: "ios", PushToken: device},
			Owner:  store.DeviceOwner{TenantID: tenant.ID, DeviceID: device, MailboxHashes: [][]byte{[]byte("mailbox of " + device)}},
		})
		return err
	}
	for i := range 10 {
		if err := register("first-", fmt.Sprint("phone-", i)); err != nil {
			t.Fatal(err)
		}
	}
	// Registrations superseding those subscriptions, and new mailboxes,
	// while the endpoint is removed.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() { register("second-", fmt.Sprint("phone-", i)) })
	}
	ended, err := s.RemoveEndpoint(ctx, tenant.ID, url)
	wg.Wait()
	if err != nil || ended == 0 {
		t.Fatalf("RemoveEndpoint: %d ended, %v", ended, err)
	}
	if err := register("third-", "phone-0"); !errors.Is(err, store.ErrEndpointRemoved) {
		t.Errorf("a registration for a removed endpoint: %v, want ErrEndpointRemoved", err)
	}
	var live int
	if err := s.Pool().QueryRow(ctx, `SELECT count(*) FROM subscriptions WHERE endpoint_id = $1 AND state = 'active'`, ep.ID).Scan(&live); err != nil {
		t.Fatal(err)
	}
	if live != 0 {
		t.Errorf("%d live subscriptions on the removed endpoint", live)
	}
	var reason string
	if err := s.Pool().QueryRow(ctx, `SELECT state_reason FROM subscriptions WHERE public_id = 'first-phone-5'`).Scan(&reason); err != nil ||
		(reason != store.ReasonEndpointRemoved && reason != store.ReasonSuperseded) {
		t.Errorf("an old subscription ended with %q, %v", reason, err)
	}
	if _, err := s.RemoveEndpoint(ctx, tenant.ID, url); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("removing it again: %v, want ErrNotFound", err)
	}
	if _, err := s.SetEndpointPin(ctx, tenant.ID, url, ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("pinning a removed endpoint: %v, want ErrNotFound", err)
	}
	if _, err := s.EndpointByID(ctx, ep.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("EndpointByID of a removed endpoint: %v, want ErrNotFound", err)
	}
}

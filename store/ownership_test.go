package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/ensgate/ensgate/store"
)

// Register itself, under the device row's lock, refuses an id that another
// registration took meanwhile: two apps that both found the id free race
// through Exchange, and only the first is stored.
func TestRegisterKeepsAnIDWithTheFirstDevice(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, _ := s.AddEndpoint(ctx, tenant.ID, "https://mail.example.test/EWS/Exchange.asmx", "")
	secretA, secretB := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	register := func(sub, mailbox string, secret []byte, presented []byte) error {
		_, err := s.Register(ctx, store.Registration{
			Subscription: store.Subscription{PublicID: sub, TenantID: tenant.ID, MailboxHash: []byte(mailbox), EndpointID: ep.ID,
				AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: sub, StatusFrequency: 15},
			Device: store.Device{TenantID: tenant.ID, DeviceID: "phone", MailboxHash: []byte(mailbox), Platform: "ios",
				PushToken: "t-" + sub, SecretHash: secret},
			Owner: store.DeviceOwner{SecretHash: presented, MailboxHashes: [][]byte{[]byte(mailbox)}},
		})
		return err
	}
	if err := register("a", "alice", secretA, nil); err != nil {
		t.Fatal(err)
	}
	if err := register("b", "bob", secretB, nil); !errors.Is(err, store.ErrNotOwner) {
		t.Fatalf("a second device took the id: %v", err)
	}
	if err := register("b2", "bob", secretB, secretB); !errors.Is(err, store.ErrNotOwner) {
		t.Fatalf("a wrong secret took the id: %v", err)
	}
	dev, err := s.DeviceByID(ctx, tenant.ID, "phone")
	if err != nil || string(dev.MailboxHash) != "alice" || dev.PushToken != "t-a" || !bytes.Equal(dev.SecretHash, secretA) {
		t.Fatalf("the device row changed: %+v %v", dev, err)
	}
	if err := register("a2", "alice", secretA, secretA); err != nil {
		t.Fatalf("the owner registering again: %v", err)
	}
	// Unregister needs the secret too; an admin's SetDeviceState does not.
	if _, err := s.Unregister(ctx, tenant.ID, "phone", secretB); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unregister with a wrong secret: %v", err)
	}
	if _, err := s.Unregister(ctx, tenant.ID, "phone", secretA); err != nil {
		t.Fatalf("unregister with the secret: %v", err)
	}
	// An id given up is free.
	if err := register("b3", "bob", secretB, nil); err != nil {
		t.Fatalf("registering a given-up id: %v", err)
	}
}

// Two apps that both found an id free race through Exchange at once: one
// registration wins, the other is refused, and the row is the winner's.
func TestConcurrentRegistrationsOfAFreeIDStoreOne(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, _ := s.AddEndpoint(ctx, tenant.ID, "https://mail.example.test/EWS/Exchange.asmx", "")
	for round := range 10 {
		device := fmt.Sprint("phone-", round)
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for i, mailbox := range []string{"alice", "bob"} {
			wg.Go(func() {
				sub := fmt.Sprint(device, "-", mailbox)
				_, errs[i] = s.Register(ctx, store.Registration{
					Subscription: store.Subscription{PublicID: sub, TenantID: tenant.ID, MailboxHash: []byte(mailbox), EndpointID: ep.ID,
						AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: sub, StatusFrequency: 15},
					Device: store.Device{TenantID: tenant.ID, DeviceID: device, MailboxHash: []byte(mailbox), Platform: "ios",
						PushToken: mailbox, SecretHash: bytes.Repeat([]byte{byte(i + 1)}, 32)},
					Owner: store.DeviceOwner{MailboxHashes: [][]byte{[]byte(mailbox)}},
				})
			})
		}
		wg.Wait()
		won := slices.IndexFunc(errs, func(err error) bool { return err == nil })
		if won < 0 || !errors.Is(errs[1-won], store.ErrNotOwner) {
			t.Fatalf("%s: registrations answered %v, want one success and one ErrNotOwner", device, errs)
		}
		dev, err := s.DeviceByID(ctx, tenant.ID, device)
		if err != nil || dev.SecretHash[0] != byte(won+1) {
			t.Fatalf("%s: the row is not the winner's: %+v %v", device, dev, err)
		}
	}
}

// An admin's block or removal made while a registration waits for Exchange
// still keeps the device out.
func TestRegisterRefusesADeviceBlockedMeanwhile(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, _ := s.AddEndpoint(ctx, tenant.ID, "https://mail.example.test/EWS/Exchange.asmx", "")
	register := func(sub string) error {
		_, err := s.Register(ctx, store.Registration{
			Subscription: store.Subscription{PublicID: sub, TenantID: tenant.ID, MailboxHash: []byte("alice"), EndpointID: ep.ID,
				AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: sub, StatusFrequency: 15},
			Device: store.Device{TenantID: tenant.ID, DeviceID: "phone", MailboxHash: []byte("alice"), Platform: "ios",
				PushToken: "t", SecretHash: bytes.Repeat([]byte{1}, 32)},
			Owner: store.DeviceOwner{SecretHash: bytes.Repeat([]byte{1}, 32), MailboxHashes: [][]byte{[]byte("alice")}},
		})
		return err
	}
	for _, state := range []string{store.Blocked, store.Wiped, store.NonCompliant} {
		if err := s.SetCompliance(ctx, tenant.ID, "phone", state); err != nil {
			t.Fatal(err)
		}
		if err := register("s-" + state); !errors.Is(err, store.ErrDeviceRefused) {
			t.Fatalf("%s device: %v, want ErrDeviceRefused", state, err)
		}
	}
	if err := s.SetCompliance(ctx, tenant.ID, "phone", store.Compliant); err != nil {
		t.Fatal(err)
	}
	if err := register("s-ok"); err != nil {
		t.Fatalf("unblocked device: %v", err)
	}
}

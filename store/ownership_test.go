package store_test

import (
	"bytes"
	"context"
	"errors"
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
				AuthType: "basic", SealedCredentials: []byte("x"), EWSSubscriptionID: sub, StatusFrequency: 15},
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

package ens_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/store"
)

func masterKey(t *testing.T, key []byte) *seal.MasterKey {
	t.Helper()
	m, err := seal.NewMasterKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Rotating the master key with the old one accepted loses nothing: a key
// pair handed out before still registers, a mailbox keeps one subscription
// for all its devices, and a mailbox that never registers again keeps its
// pushes even after the old key is dropped.
func TestMasterKeyRotation(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, envOptions{})
	oldKey, newKey := e.cfg.MasterKey, bytes.Repeat([]byte{8}, 32)
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.register(e.basicDevice("laptop", bob, bobPW, 0))
	pending := e.registerBody(e.basicDevice("tablet", alice, alicePW, 0)) // its key pair is sealed under the old key

	e.restart(func(c *ens.Config) { c.MasterKey, c.AcceptedMasterKeys = newKey, [][]byte{oldKey} })
	oldMaster, newMaster := masterKey(t, oldKey), masterKey(t, newKey)
	e.waitFor("every key pair re-sealed under the new master key", func() bool {
		left, err := e.store.KeyPairsSealedUnder(ctx, []string{oldMaster.ID()}, 100)
		free, _ := e.store.FreeKeyPairs(ctx, []string{newMaster.ID()})
		return err == nil && len(left) == 0 && free > 0
	})
	if status, body := e.call("POST", "/api/ens/registerdevicev2", pending); status != http.StatusOK {
		t.Fatalf("registration with a key pair from before the rotation: %d %v", status, body)
	}
	// Alice's phone moved to the new hash and her old subscription ended.
	if devices, err := e.store.ActiveDevices(ctx, e.tenant.ID, newMaster.MailboxHash(alice)); err != nil || len(devices) != 2 {
		t.Fatalf("alice's active devices under the new key: %d, %v; want phone and tablet", len(devices), err)
	}
	if sub, err := e.store.LatestSubscription(ctx, e.tenant.ID, oldMaster.MailboxHash(alice)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a subscription is left under alice's old hash: %s/%s, %v", sub.State, sub.StateReason, err)
	}
	if bobs, _ := e.store.ActiveDevices(ctx, e.tenant.ID, oldMaster.MailboxHash(bob)); len(bobs) != 1 {
		t.Fatalf("bob, who did not register again, has %d devices under his old hash, want 1", len(bobs))
	}
	e.deliver(alice, mailFromCarol)
	e.waitFor("pushes to alice's phone (registered before) and tablet (after)", func() bool {
		return len(e.pushes.pushes(tok("phone"))) == 1 && len(e.pushes.pushes(tok("tablet"))) == 1
	})
	e.waitFor("the Unsubscribe of alice's superseded subscription", func() bool { return e.sim.Counters().Unsubscribed == 1 })

	e.restart(func(c *ens.Config) { c.AcceptedMasterKeys = nil })
	e.deliver(bob, mailFromCarol)
	e.waitFor("the push to bob's laptop, registered under the dropped key", func() bool {
		return len(e.pushes.pushes(tok("laptop"))) == 1
	})
	e.register(e.basicDevice("watch", alice, alicePW, 0))
	e.deliver(alice, mailFromCarol)
	e.waitFor("alice's three devices notified from one subscription", func() bool {
		return len(e.pushes.pushes(tok("phone"))) == 2 && len(e.pushes.pushes(tok("tablet"))) == 2 && len(e.pushes.pushes(tok("watch"))) == 1
	})
	e.waitFor("the Unsubscribe of the subscription the watch superseded", func() bool { return e.sim.Counters().Unsubscribed == 2 })
	e.settle()
	if n := len(e.pushes.pushes("")); n != 6 {
		t.Errorf("%d pushes, want 6: one per device and mail", n)
	}
}

// A key pair sealed under a master key that is no longer configured cannot
// be opened: the device is told to fetch a new one, and that works.
func TestKeyPairUnderADroppedMasterKeyAsksForANewOne(t *testing.T) {
	e := newEnv(t, envOptions{})
	pending := e.registerBody(e.basicDevice("phone", alice, alicePW, 0))
	e.restart(func(c *ens.Config) { c.MasterKey = bytes.Repeat([]byte{9}, 32) })
	status, body := e.call("POST", "/api/ens/registerdevicev2", pending)
	if status != http.StatusBadRequest || !strings.Contains(body["message"].(string), "call publickey again") {
		t.Fatalf("registration with a key pair under a dropped master key: %d %v", status, body)
	}
	e.register(e.basicDevice("phone", alice, alicePW, 0))
}

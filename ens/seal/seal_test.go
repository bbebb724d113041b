package seal

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func master(t *testing.T, fill byte) *MasterKey {
	t.Helper()
	m, err := NewMasterKey(bytes.Repeat([]byte{fill}, KeySize))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPrivateKeysOpenOnlyWithTheirMasterKeyAndRow(t *testing.T) {
	m, other := master(t, 1), master(t, 2)
	if m.ID() == other.ID() || len(m.ID()) != 16 {
		t.Fatalf("master key ids %q and %q", m.ID(), other.ID())
	}
	sealed := m.SealPrivateKey("k1", []byte("der bytes"))
	if bytes.Contains(sealed, []byte("der bytes")) {
		t.Fatal("sealed private key contains the plaintext")
	}
	got, err := m.OpenPrivateKey(m.ID(), "k1", sealed)
	if err != nil || string(got) != "der bytes" {
		t.Fatalf("open = %q, %v", got, err)
	}
	if _, err := m.OpenPrivateKey(m.ID(), "k2", sealed); !errors.Is(err, ErrOpen) {
		t.Errorf("opened under another key id: %v", err)
	}
	if _, err := other.OpenPrivateKey(m.ID(), "k1", sealed); err == nil || !strings.Contains(err.Error(), "master key") {
		t.Errorf("another master key: %v", err)
	}
	if _, err := NewMasterKey(make([]byte, 16)); err == nil {
		t.Error("a 16-byte master key was accepted")
	}
}

func TestSubscriptionKeySealsForOneSubscription(t *testing.T) {
	k := NewSubscriptionKey()
	if s := k.String(); len(s) != 43 {
		t.Fatalf("key encodes to %d characters, want 43", len(s))
	}
	parsed, err := ParseSubscriptionKey(k.String())
	if err != nil || parsed != k {
		t.Fatalf("round trip: %v", err)
	}
	sealed := k.Seal("sub1", []byte(`{"password":"pw"}`))
	if got, err := k.Open("sub1", sealed); err != nil || string(got) != `{"password":"pw"}` {
		t.Fatalf("open = %q, %v", got, err)
	}
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	for name, try := range map[string]func() ([]byte, error){
		"other subscription": func() ([]byte, error) { return k.Open("sub2", sealed) },
		"other key":          func() ([]byte, error) { return NewSubscriptionKey().Open("sub1", sealed) },
		"tampered":           func() ([]byte, error) { return k.Open("sub1", tampered) },
		"truncated":          func() ([]byte, error) { return k.Open("sub1", sealed[:10]) },
	} {
		if _, err := try(); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: err = %v, want ErrOpen", name, err)
		}
	}
	for _, bad := range []string{"", "short", k.String() + "A", strings.Repeat("*", 43)} {
		if _, err := ParseSubscriptionKey(bad); !errors.Is(err, ErrOpen) {
			t.Errorf("ParseSubscriptionKey(%q) = %v", bad, err)
		}
	}
}

func TestMailboxHashIsKeyedAndCaseInsensitive(t *testing.T) {
	m := master(t, 1)
	a, b := m.MailboxHash("Alice@Contoso.COM "), m.MailboxHash("alice@contoso.com")
	if !bytes.Equal(a, b) || len(a) != 32 {
		t.Fatal("the hash depends on case or whitespace")
	}
	if bytes.Equal(a, master(t, 2).MailboxHash("alice@contoso.com")) {
		t.Fatal("the hash does not depend on the master key")
	}
	if bytes.Equal(a, m.MailboxHash("bob@contoso.com")) {
		t.Fatal("two addresses hash alike")
	}
}

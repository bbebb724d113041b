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
	got, err := m.OpenPrivateKey("k1", sealed)
	if err != nil || string(got) != "der bytes" {
		t.Fatalf("open = %q, %v", got, err)
	}
	if _, err := m.OpenPrivateKey("k2", sealed); !errors.Is(err, ErrOpen) {
		t.Errorf("opened under another key id: %v", err)
	}
	if _, err := other.OpenPrivateKey("k1", sealed); !errors.Is(err, ErrOpen) {
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

func TestKeyringOpensWhatItsKeysSealed(t *testing.T) {
	old, next := bytes.Repeat([]byte{1}, KeySize), bytes.Repeat([]byte{2}, KeySize)
	before, err := NewKeyring(old)
	if err != nil {
		t.Fatal(err)
	}
	sealed := before.Current.SealPrivateKey("k1", []byte("der bytes"))
	rotated, err := NewKeyring(next, old)
	if err != nil {
		t.Fatal(err)
	}
	if rotated.Current.ID() == before.Current.ID() || strings.Join(rotated.AcceptedIDs(), ",") != before.Current.ID() {
		t.Fatalf("current %s, accepted %v, old %s", rotated.Current.ID(), rotated.AcceptedIDs(), before.Current.ID())
	}
	if got, err := rotated.OpenPrivateKey(before.Current.ID(), "k1", sealed); err != nil || string(got) != "der bytes" {
		t.Fatalf("open under the accepted key = %q, %v", got, err)
	}
	if _, err := rotated.OpenPrivateKey(rotated.Current.ID(), "k1", sealed); !errors.Is(err, ErrOpen) {
		t.Errorf("opened under the wrong master key: %v", err)
	}
	dropped, _ := NewKeyring(next)
	if _, err := dropped.OpenPrivateKey(before.Current.ID(), "k1", sealed); !errors.Is(err, ErrUnknownMasterKey) ||
		!strings.Contains(err.Error(), before.Current.ID()) {
		t.Errorf("a key sealed under a dropped master key: %v", err)
	}

	hashes := rotated.AcceptedMailboxHashes("Alice@contoso.com")
	if len(hashes) != 1 || !bytes.Equal(hashes[0], before.Current.MailboxHash("alice@contoso.com")) {
		t.Errorf("accepted mailbox hashes %x, want the old key's", hashes)
	}

	for name, accepted := range map[string][][]byte{
		"current listed again": {next},
		"listed twice":         {old, old},
		"short":                {make([]byte, 16)},
	} {
		if _, err := NewKeyring(next, accepted...); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Package seal holds ENS's symmetric cryptography: the master key that seals
// device private keys at rest, the per-subscription keys that seal Exchange
// credentials, and the keyed hash under which mailbox addresses are stored.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the size of every key here: AES-256.
const KeySize = 32

// ErrOpen is the only error opening a sealed value gives: a wrong key and
// tampered data look the same, so the error is no oracle.
var ErrOpen = errors.New("seal: cannot open")

// MasterKey seals device private keys and keys the mailbox hash. Subkeys are
// derived with HKDF so that each purpose has its own key.
type MasterKey struct {
	id      string
	wrap    cipher.AEAD
	mailbox []byte
}

// NewMasterKey derives the master key's subkeys from 32 secret bytes.
func NewMasterKey(secret []byte) (*MasterKey, error) {
	if len(secret) != KeySize {
		return nil, fmt.Errorf("seal: master key must be %d bytes, not %d", KeySize, len(secret))
	}
	derive := func(info string) []byte {
		k, err := hkdf.Key(sha256.New, secret, nil, "ensgate "+info, KeySize)
		if err != nil {
			panic(err) // only for lengths beyond 255 hash sizes
		}
		return k
	}
	wrap, err := newGCM(derive("private key wrap v1"))
	if err != nil {
		return nil, err
	}
	return &MasterKey{
		id:      hex.EncodeToString(derive("master key id v1")[:8]),
		wrap:    wrap,
		mailbox: derive("mailbox hash v1"),
	}, nil
}

// ID names the master key without revealing it; it is stored beside what it
// sealed so that a rotated key can be told apart.
func (m *MasterKey) ID() string { return m.id }

// SealPrivateKey encrypts a DER private key; the key id binds it to its row.
func (m *MasterKey) SealPrivateKey(keyID string, der []byte) []byte {
	return sealWith(m.wrap, der, "private key "+keyID)
}

// OpenPrivateKey decrypts what SealPrivateKey sealed.
func (m *MasterKey) OpenPrivateKey(keyID string, sealed []byte) ([]byte, error) {
	return openWith(m.wrap, sealed, "private key "+keyID)
}

// MailboxHash is the keyed hash of a lower-cased, trimmed mailbox address:
// stable, so a mailbox's devices find each other, and useless without the
// master key, so the database alone does not reveal who uses ENS.
func (m *MasterKey) MailboxHash(address string) []byte {
	mac := hmac.New(sha256.New, m.mailbox)
	mac.Write([]byte(strings.ToLower(strings.TrimSpace(address))))
	return mac.Sum(nil)
}

// Keyring is the master key in use and the others still accepted while the
// master key is rotated: everything new is sealed and hashed under Current,
// and what was sealed or hashed under an accepted key stays readable.
type Keyring struct {
	Current  *MasterKey
	Accepted []*MasterKey
}

// ErrUnknownMasterKey means a value was sealed under a master key that is
// neither the current one nor an accepted one.
var ErrUnknownMasterKey = errors.New("seal: sealed under a master key that is not configured")

// NewKeyring derives the current and the accepted master keys.
func NewKeyring(current []byte, accepted ...[]byte) (*Keyring, error) {
	cur, err := NewMasterKey(current)
	if err != nil {
		return nil, err
	}
	k := &Keyring{Current: cur}
	seen := map[string]bool{cur.id: true}
	for i, secret := range accepted {
		m, err := NewMasterKey(secret)
		if err != nil {
			return nil, fmt.Errorf("accepted master key %d: %w", i+1, err)
		}
		if seen[m.id] {
			return nil, fmt.Errorf("seal: master key %s is listed twice", m.id)
		}
		seen[m.id] = true
		k.Accepted = append(k.Accepted, m)
	}
	return k, nil
}

// AcceptedIDs names the accepted keys, to find what is still sealed under them.
func (k *Keyring) AcceptedIDs() []string { return k.IDs()[1:] }

// IDs names every key of the ring, the current one first: what is sealed
// under any of them can be opened.
func (k *Keyring) IDs() []string {
	ids := []string{k.Current.id}
	for _, m := range k.Accepted {
		ids = append(ids, m.id)
	}
	return ids
}

// OpenPrivateKey decrypts a private key sealed under the master key named
// masterKeyID, the current one or an accepted one.
func (k *Keyring) OpenPrivateKey(masterKeyID, keyID string, sealed []byte) ([]byte, error) {
	for _, m := range append([]*MasterKey{k.Current}, k.Accepted...) {
		if m.id == masterKeyID {
			return m.OpenPrivateKey(keyID, sealed)
		}
	}
	return nil, fmt.Errorf("private key %s under master key %s: %w", keyID, masterKeyID, ErrUnknownMasterKey)
}

// AcceptedMailboxHashes returns the address's hashes under the accepted
// keys: rows made before a rotation carry one of them.
func (k *Keyring) AcceptedMailboxHashes(address string) [][]byte {
	hashes := make([][]byte, len(k.Accepted))
	for i, m := range k.Accepted {
		hashes[i] = m.MailboxHash(address)
	}
	return hashes
}

// SubscriptionKey seals one subscription's credentials. It is never stored:
// ENS puts it into Exchange's callback URL, so the database and the URL are
// each useless alone.
type SubscriptionKey [KeySize]byte

// NewSubscriptionKey returns a fresh random key.
func NewSubscriptionKey() SubscriptionKey {
	var k SubscriptionKey
	rand.Read(k[:])
	return k
}

// String encodes the key for a URL: 43 base64url characters.
func (k SubscriptionKey) String() string { return base64.RawURLEncoding.EncodeToString(k[:]) }

// ParseSubscriptionKey decodes String's output.
func ParseSubscriptionKey(s string) (SubscriptionKey, error) {
	var k SubscriptionKey
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != KeySize {
		return k, ErrOpen
	}
	copy(k[:], b)
	return k, nil
}

// Seal encrypts plaintext for the subscription publicID.
func (k SubscriptionKey) Seal(publicID string, plaintext []byte) []byte {
	aead, err := newGCM(k[:])
	if err != nil {
		panic(err) // the key has the right size by construction
	}
	return sealWith(aead, plaintext, "credentials "+publicID)
}

// Open decrypts what Seal sealed for publicID; any mismatch gives ErrOpen.
func (k SubscriptionKey) Open(publicID string, sealed []byte) ([]byte, error) {
	aead, err := newGCM(k[:])
	if err != nil {
		return nil, ErrOpen
	}
	return openWith(aead, sealed, "credentials "+publicID)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// sealWith returns nonce || ciphertext, with context as additional data so
// a sealed value cannot be moved to another row.
func sealWith(aead cipher.AEAD, plaintext []byte, context string) []byte {
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plaintext)+aead.Overhead())
	rand.Read(nonce)
	return aead.Seal(nonce, nonce, plaintext, []byte(context))
}

func openWith(aead cipher.AEAD, sealed []byte, context string) ([]byte, error) {
	if len(sealed) < aead.NonceSize()+aead.Overhead() {
		return nil, ErrOpen
	}
	n := aead.NonceSize()
	plain, err := aead.Open(nil, sealed[:n], sealed[n:], []byte(context))
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}

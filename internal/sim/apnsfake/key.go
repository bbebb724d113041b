package apnsfake

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
)

// Key is a provider signing key as Apple's developer portal issues it: a
// P-256 key in a PKCS#8 .p8 file, named by a 10-character key id, belonging
// to a team.
type Key struct {
	ID     string
	TeamID string
	Path   string // dir/AuthKey_<ID>.p8
	PEM    []byte // the file's content

	private *ecdsa.PrivateKey
}

// NewKey generates a key with random key and team ids and writes its .p8
// file into dir.
func NewKey(dir string) (*Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	k := &Key{
		ID:      appleID(),
		TeamID:  appleID(),
		PEM:     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		private: priv,
	}
	k.Path = filepath.Join(dir, "AuthKey_"+k.ID+".p8")
	if err := os.WriteFile(k.Path, k.PEM, 0o600); err != nil {
		return nil, err
	}
	return k, nil
}

// appleID is a random 10-character id like Apple's key and team ids.
func appleID() string {
	return strings.ToUpper(rand.Text()[:10])
}

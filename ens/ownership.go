package ens

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"

	"github.com/ensgate/ensgate/store"
)

// maxDeviceSecret bounds the deviceSecret a request may carry; ours are 43
// characters.
const maxDeviceSecret = 128

// newDeviceSecret is the secret that proves a device owns its id: 256
// random bits, base64url.
func newDeviceSecret() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// deviceSecretHash is what the database keeps of a device secret: its
// SHA-256, which suffices for 256 random bits. nil for no secret.
func deviceSecretHash(secret string) []byte {
	if secret == "" {
		return nil
	}
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// ownerError answers a registration of an id another device holds exactly
// as status and unregister answer an unknown id: nobody learns which ids
// exist, or whose they are.
func ownerError(err error) error {
	switch {
	case errors.Is(err, store.ErrNotOwner):
		return errUnknownDevice
	case errors.Is(err, store.ErrDeviceRefused):
		return errDeviceRefused
	}
	return err
}

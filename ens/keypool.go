package ens

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"log/slog"

	"github.com/ensgate/ensgate/store"
)

// newKeyPair generates an RSA key pair with its private key sealed under
// the current master key.
func (s *Service) newKeyPair() (store.KeyPair, error) {
	priv, err := rsa.GenerateKey(rand.Reader, keyBits)
	if err != nil {
		return store.KeyPair{}, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return store.KeyPair{}, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return store.KeyPair{}, err
	}
	keyID := randomID()
	return store.KeyPair{KeyID: keyID, PublicKey: pub, SealedPrivateKey: s.keys.Current.SealPrivateKey(keyID, der),
		MasterKeyID: s.keys.Current.ID()}, nil
}

// randomID is an opaque, unguessable identifier (128 bits, base64url).
func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// resealBatch bounds the key pairs re-sealed per round of the pool worker.
const resealBatch = 100

// resealKeyPairs moves key pairs, free or handed out, from the accepted
// (rotated-out) master keys to the current one, so that an accepted key is
// soon needed for nothing but mailbox hashes.
func (s *Service) resealKeyPairs(ctx context.Context) {
	accepted := s.keys.AcceptedIDs()
	if len(accepted) == 0 {
		return
	}
	pairs, err := s.store.KeyPairsSealedUnder(ctx, accepted, resealBatch)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("finding key pairs to re-seal", slog.Any("error", err))
		}
		return
	}
	resealed := 0
	for _, kp := range pairs {
		der, err := s.keys.OpenPrivateKey(kp.MasterKeyID, kp.KeyID, kp.SealedPrivateKey)
		if err != nil {
			// Only a damaged row does this; it could never serve a registration.
			s.log.Warn("deleting a key pair that does not open", slog.String("key_id", kp.KeyID),
				slog.String("master_key_id", kp.MasterKeyID), slog.Any("error", err))
			err = s.store.DeleteKeyPair(ctx, kp.ID)
		} else {
			var ok bool
			ok, err = s.store.ResealKeyPair(ctx, kp, s.keys.Current.SealPrivateKey(kp.KeyID, der), s.keys.Current.ID())
			if ok {
				resealed++
			}
		}
		if err != nil {
			s.log.Warn("re-sealing key pairs", slog.Any("error", err))
			return
		}
	}
	if resealed > 0 {
		keyPairsResealed.Add(float64(resealed))
		s.log.Info("re-sealed key pairs under the current master key", slog.Int("count", resealed),
			slog.String("master_key_id", s.keys.Current.ID()))
	}
}

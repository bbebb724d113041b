package ens

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/store"
)

// newKeyPair generates an RSA key pair with its private key sealed under
// the current master key.
func (s *Service) newKeyPair() (store.KeyPair, error) {
	priv, err := rsa.GenerateKey(rand.Reader, s.cfg.KeyBits)
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

// fillKeyPool keeps KeyPoolSize key pairs ready, so that publickey never
// waits for a key to be generated.
func (s *Service) fillKeyPool(ctx context.Context) {
	s.resealKeyPairs(ctx)
	usable := s.keys.IDs()
	added, err := s.store.FillKeyPool(ctx, s.cfg.KeyPoolSize, usable, s.newKeyPair)
	if free, err := s.store.FreeKeyPairs(ctx, usable); err == nil {
		keyPoolFree.Set(float64(free))
	}
	if err != nil && ctx.Err() == nil {
		s.log.Warn("filling the key pool", slog.Int("added", added), slog.Any("error", err))
	} else if added > 0 {
		s.log.Debug("key pool filled", slog.Int("added", added))
	}
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

// wakeKeyPool asks the pool worker to top up now.
func (s *Service) wakeKeyPool() {
	select {
	case s.keyPoolWake <- struct{}{}:
	default:
	}
}

type publicKeyRequest struct {
	DeviceID string `json:"deviceId"`
	Email    string `json:"email"`
}

// publicKey hands the device a key pair, as a JWK: its own unused one if it
// asked before, otherwise one from the pool, within the shares of the
// tenant and of the client's address.
func (s *Service) publicKey(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	var req publicKeyRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := checkDeviceID(req.DeviceID); err != nil {
		return err
	}
	if err := checkEmail(req.Email); err != nil {
		return err
	}
	if err := s.limitDevice(w, r, t, req.DeviceID); err != nil {
		return err
	}
	if err := s.refuseNonCompliant(r.Context(), t, req.DeviceID); err != nil {
		return err
	}
	kp, err := s.store.AssignKeyPair(r.Context(), t.ID, req.DeviceID, s.keys.IDs(), s.keyPairLimits(s.clientAddress(r)))
	var capErr *store.KeyPairCapError
	switch {
	case errors.As(err, &capErr):
		// The pool was not touched: no need to wake its worker.
		w.Header().Set("Retry-After", strconv.Itoa(int(capErr.RetryAfter/time.Second)+1))
		holder := "this tenant"
		if capErr.ByAddress {
			holder = "this address"
		}
		return &apiError{http.StatusTooManyRequests, "rate_limited",
			holder + " holds too many unused keys; retry when one expires or register with the key already given"}
	case errors.Is(err, store.ErrPoolEmpty):
		s.wakeKeyPool()
		w.Header().Set("Retry-After", "1")
		return &apiError{http.StatusServiceUnavailable, "overloaded", "no key is ready; retry in a second"}
	case err != nil:
		return err
	}
	s.wakeKeyPool()
	pub, err := x509.ParsePKIXPublicKey(kp.PublicKey)
	if err != nil {
		return fmt.Errorf("key pair %s: %w", kp.KeyID, err)
	}
	jwk := jose.JSONWebKey{Key: pub, KeyID: kp.KeyID, Algorithm: string(jose.RSA_OAEP_256), Use: "enc"}
	writeJSON(w, http.StatusOK, map[string]any{"keyId": kp.KeyID, "jwk": jwk})
	return nil
}

// keyPairLimits is a tenant's share of the key pool, and the share of its
// client at addr. Half the pool is kept for tenants that hold fewer than
// that many unused pairs, so a tenant working towards its cap cannot empty
// the pool for the others.
func (s *Service) keyPairLimits(addr string) store.KeyPairLimits {
	return store.KeyPairLimits{MaxAge: s.cfg.KeyPairTTL, PerTenant: s.cfg.KeyPairsPerTenant,
		PerAddress: s.cfg.KeyPairsPerAddress, ClientAddress: addr, Reserve: s.cfg.KeyPoolSize / 2}
}

// privateKey opens the device's key pair keyID.
func (s *Service) privateKey(ctx context.Context, t store.Tenant, deviceID, keyID string) (*rsa.PrivateKey, int64, error) {
	kp, err := s.store.DeviceKeyPair(ctx, t.ID, deviceID, keyID, s.cfg.KeyPairTTL)
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, badRequest("keyId: no such key for this device; call publickey first")
	}
	if errors.Is(err, store.ErrKeyPairExpired) {
		return nil, 0, badRequest("keyId: this key expired unused (after %s); call publickey again", s.cfg.KeyPairTTL)
	}
	if err != nil {
		return nil, 0, err
	}
	der, err := s.keys.OpenPrivateKey(kp.MasterKeyID, kp.KeyID, kp.SealedPrivateKey)
	if errors.Is(err, seal.ErrUnknownMasterKey) {
		s.log.Warn("registration with a key pair sealed under a master key that is no longer configured",
			slog.String("master_key_id", kp.MasterKeyID))
		return nil, 0, badRequest("keyId: this key can no longer be used; call publickey again")
	}
	if err != nil {
		return nil, 0, err
	}
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, 0, err
	}
	priv, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, 0, fmt.Errorf("key pair %s is not RSA", kp.KeyID)
	}
	return priv, kp.ID, nil
}

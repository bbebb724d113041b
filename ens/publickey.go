package ens

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"go.step.sm/crypto/jose"

	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/store"
)

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
		s.wakeKeyPool(r.Context())
		w.Header().Set("Retry-After", "1")
		return &apiError{http.StatusServiceUnavailable, "overloaded", "no key is ready; retry in a second"}
	case err != nil:
		return err
	}
	s.wakeKeyPool(r.Context())
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

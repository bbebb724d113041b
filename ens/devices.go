package ens

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"

	"github.com/ensgate/ensgate/store"
)

// status tells the app whether its device is registered and whether it
// should register again.
func (s *Service) status(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	deviceID := r.URL.Query().Get("deviceId")
	if err := checkDeviceID(deviceID); err != nil {
		return err
	}
	if err := s.limitDevice(w, r, t, deviceID); err != nil {
		return err
	}
	ctx := r.Context()
	dev, err := s.store.DeviceByID(ctx, t.ID, deviceID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err // a database outage is not an unknown device: apps would all register again
	}
	if err != nil || dev.State == store.DeviceUnregistered || dev.State == store.DeviceRemoved ||
		!secretMatches(dev, r.Header.Get(DeviceSecretHeader)) {
		return errUnknownDevice
	}
	answer := map[string]any{"registered": true, "subscription": "none", "resubscribe": true}
	if dev.State != store.DeviceActive {
		answer["registered"] = false
		writeJSON(w, http.StatusOK, answer)
		return nil
	}
	sub, err := s.store.LatestSubscription(ctx, t.ID, dev.MailboxHash)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	switch sub.State {
	case store.SubscriptionActive:
		answer["subscription"], answer["resubscribe"] = "active", false
	case store.SubscriptionFailed:
		answer["subscription"] = "failed"
	}
	writeJSON(w, http.StatusOK, answer)
	return nil
}

// DeviceSecretHeader carries the device secret on status, a GET.
const DeviceSecretHeader = "X-Device-Secret"

// secretMatches reports whether secret is the one dev's registration
// returned. A device registered before device secrets has none, and so no
// secret matches until it registers again.
func secretMatches(dev store.Device, secret string) bool {
	return dev.SecretHash != nil && secret != "" && len(secret) <= maxDeviceSecret &&
		subtle.ConstantTimeCompare(dev.SecretHash, deviceSecretHash(secret)) == 1
}

type unregisterRequest struct {
	DeviceID     string `json:"deviceId"`
	DeviceSecret string `json:"deviceSecret"`
}

// unregister stops notifications to the device; when it was the mailbox's
// last, the subscription ends at Exchange's next callback.
func (s *Service) unregister(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	var req unregisterRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := checkDeviceID(req.DeviceID); err != nil {
		return err
	}
	if err := s.limitDevice(w, r, t, req.DeviceID); err != nil {
		return err
	}
	if len(req.DeviceSecret) > maxDeviceSecret {
		return errUnknownDevice
	}
	_, err := s.store.Unregister(r.Context(), t.ID, req.DeviceID, deviceSecretHash(req.DeviceSecret))
	if errors.Is(err, store.ErrNotFound) {
		return errUnknownDevice
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

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

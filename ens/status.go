package ens

import (
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
	ctx := r.Context()
	dev, err := s.store.DeviceByID(ctx, t.ID, deviceID)
	if errors.Is(err, store.ErrNotFound) || dev.State == store.DeviceUnregistered || dev.State == store.DeviceRemoved {
		return errUnknownDevice
	}
	if err != nil {
		return err
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

type unregisterRequest struct {
	DeviceID string `json:"deviceId"`
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
	_, err := s.store.SetDeviceState(r.Context(), t.ID, req.DeviceID, store.DeviceUnregistered, "")
	if errors.Is(err, store.ErrNotFound) {
		return errUnknownDevice
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct{}{})
	return nil
}

package ens

import (
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/ensgate/ensgate/store"
)

// adminAPI serves the admin routes below BasePath/admin, guarded by the
// admin token (Authorization: Bearer). Without a configured token they do
// not exist.
func (s *Service) adminAPI(mux *http.ServeMux) {
	if s.cfg.AdminToken == "" {
		return
	}
	prefix := BasePath + "/admin/tenants/{tenant}/devices"
	mux.Handle("GET "+prefix, s.admin(s.adminListDevices))
	for action, state := range map[string]string{"block": store.Blocked, "unblock": store.Compliant, "remove": store.Wiped} {
		mux.Handle("POST "+prefix+"/{device}/"+action, s.admin(func(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
			return s.adminSetCompliance(w, r, t, state)
		}))
	}
}

// admin checks the admin token and resolves the tenant in the path.
func (s *Service) admin(h func(http.ResponseWriter, *http.Request, store.Tenant) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.AdminToken)) != 1 {
			writeError(w, &apiError{http.StatusUnauthorized, "unauthorized", "missing or wrong admin token (Authorization: Bearer <ENS_ADMIN_TOKEN>)"})
			return
		}
		t, err := s.store.TenantByName(r.Context(), r.PathValue("tenant"))
		if errors.Is(err, store.ErrNotFound) {
			err = &apiError{http.StatusNotFound, "not_found", "no such tenant"}
		}
		if err == nil {
			err = h(w, r, t)
		}
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				ae = &apiError{http.StatusInternalServerError, "internal", "internal error; the gateway's log has details"}
			}
			writeError(w, ae)
		}
	})
}

func (s *Service) adminListDevices(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	devices, err := s.store.ListDevices(r.Context(), t.ID)
	if err != nil {
		return err
	}
	type device struct {
		DeviceID     string     `json:"deviceId"`
		Platform     string     `json:"platform,omitempty"`
		State        string     `json:"state,omitempty"`
		StateReason  string     `json:"stateReason,omitempty"`
		Compliance   string     `json:"compliance,omitempty"`
		RegisteredAt *time.Time `json:"registeredAt,omitempty"`
	}
	out := make([]device, len(devices))
	for i, d := range devices {
		out[i] = device(d)
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out})
	return nil
}

func (s *Service) adminSetCompliance(w http.ResponseWriter, r *http.Request, t store.Tenant, state string) error {
	deviceID := r.PathValue("device")
	if err := checkDeviceID(deviceID); err != nil {
		return err
	}
	answer := map[string]any{"deviceId": deviceID, "compliance": state}
	if state == store.Wiped {
		ended, err := s.store.RemoveDevice(r.Context(), t.ID, deviceID)
		if err != nil {
			return err
		}
		answer["subscriptionEnded"] = ended
	} else if err := s.store.SetCompliance(r.Context(), t.ID, deviceID, state); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, answer)
	return nil
}

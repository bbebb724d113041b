package ens

import (
	"context"
	"net/http"

	"github.com/ensgate/ensgate/store"
)

// errDeviceRefused answers a blocked, wiped (removed) or non-compliant
// device at publickey and registerdevicev2.
var errDeviceRefused = &apiError{http.StatusForbidden, "device_blocked",
	"this device is blocked, wiped or not compliant; an admin must unblock it"}

// refuseNonCompliant is the first check of every device request that could
// lead to Exchange: an admin's block, wipe or removal holds whatever the
// tenant's endpoint is (Exchange itself or the EWS proxy). It reads the
// database, not a node's cache, so an unblock counts at once.
func (s *Service) refuseNonCompliant(ctx context.Context, t store.Tenant, deviceID string) error {
	state, err := s.store.ComplianceState(ctx, store.DeviceKey{TenantID: t.ID, DeviceID: deviceID})
	if err != nil {
		return err
	}
	if state != "" && state != store.Compliant {
		return errDeviceRefused
	}
	return nil
}

// compliantDevices drops devices that the compliance state keeps from
// mail: blocked, wiped or non-compliant. Unknown devices stay: whether they
// may reach Exchange is the EWS proxy's policy, which answers ENS's calls.
func (s *Service) compliantDevices(devices []store.Device) ([]store.Device, error) {
	if s.cfg.Compliance == nil {
		return devices, nil
	}
	var ok []store.Device
	for _, dev := range devices {
		state, err := s.cfg.Compliance.State(store.DeviceKey{TenantID: dev.TenantID, DeviceID: dev.DeviceID})
		if err != nil {
			return nil, err
		}
		if state == "" || state == store.Compliant {
			ok = append(ok, dev)
		}
	}
	return ok, nil
}

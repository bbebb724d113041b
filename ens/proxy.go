package ens

import (
	"context"
	"errors"
	"net/http"
	"slices"

	"github.com/ensgate/ensgate/attest"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/store"
)

// refuseNonCompliant is the first check of every device request that could
// lead to Exchange: an admin's block, wipe or removal holds whatever the
// tenant's endpoint is (Exchange itself or the EWS proxy). It reads the
// database, not a node's cache, so an unblock counts at once.
func (s *Service) refuseNonCompliant(ctx context.Context, t store.Tenant, deviceID string) error {
	state, err := s.store.ComplianceState(ctx, store.DeviceKey{TenantID: t.ID, DeviceID: deviceID})
	if err != nil {
		return err
	}
	if !mayGetMail(state) {
		return errDeviceRefused
	}
	return nil
}

// mayGetMail is ENS's reading of a compliance state: blocked, wiped and
// non-compliant devices get nothing; unknown ones ("") are the EWS proxy's
// policy to judge.
func mayGetMail(state string) bool { return state == "" || state == store.Compliant }

// compliantDevices drops devices that the compliance state keeps from
// mail: blocked, wiped or non-compliant. Unknown devices stay: whether they
// may reach Exchange is the EWS proxy's policy, which answers ENS's calls.
func (s *Service) compliantDevices(ctx context.Context, devices []store.Device) ([]store.Device, error) {
	if s.cfg.Compliance == nil {
		return devices, nil
	}
	var ok []store.Device
	for _, dev := range devices {
		state, err := s.cfg.Compliance.Lookup(ctx, store.DeviceKey{TenantID: dev.TenantID, DeviceID: dev.DeviceID})
		if err != nil {
			return nil, err
		}
		if mayGetMail(state) {
			ok = append(ok, dev)
		}
	}
	return ok, nil
}

// attestation is the call option that signs the list of devices into each
// EWS call it is given to, bound to that request, for an ENSGate EWS proxy
// in front of Exchange; without a proxy secret it signs nothing.
func (s *Service) attestation(tenantID int64, deviceIDs []string) ews.CallOption {
	var sign func(*http.Request, []byte)
	if len(s.cfg.ProxySecret) > 0 {
		sign = attest.Attestation{Secret: s.cfg.ProxySecret}.Signer(tenantID, deviceIDs)
	}
	return ews.WithRequestSigner(sign)
}

// refusedByProxy reports an ENSGate EWS proxy's refusal of every device.
func refusedByProxy(err error) bool {
	var he *ews.HTTPError
	return errors.As(err, &he) && he.StatusCode == http.StatusForbidden
}

// noteProxyAnswer keeps the device list of the latest EWS answer that
// carried one. An ENSGate EWS proxy names the devices it accepted on every
// answer it lets through; an answer without the list after one with it (an
// error of the proxy's, or of a balancer in front of it) must not count as
// "every device accepted".
func (e *ewsSource) noteProxyAnswer() {
	if v := e.answer[http.CanonicalHeaderKey(attest.AcceptedHeader)]; len(v) > 0 {
		e.d.accepted = v
	}
}

// acceptedByProxy splits devs into those an ENSGate EWS proxy in front of
// Exchange accepted (all of them when no answer named any: no proxy) and
// the ids of the others.
func (d *delivery) acceptedByProxy(devs []store.Device) (accepted []store.Device, refused []int64) {
	if d.accepted == nil {
		return devs, nil
	}
	ids, err := attest.SplitIDs(d.accepted[0])
	for _, dev := range devs {
		if err == nil && slices.Contains(ids, dev.DeviceID) {
			accepted = append(accepted, dev)
		} else {
			refused = append(refused, dev.ID)
		}
	}
	return accepted, refused
}

// DeviceCompliance reports a device's compliance state ("" if unknown),
// waiting briefly for a first load (compliance.Cache), and whether its copy
// is current.
type DeviceCompliance interface {
	Lookup(context.Context, store.DeviceKey) (string, error)
	Current() bool
}

package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Compliance states. A device without a row is unknown: the proxy's policy
// decides.
const (
	Compliant    = "compliant"
	NonCompliant = "noncompliant"
	Blocked      = "blocked"
	Wiped        = "wiped"
)

// ComplianceChannel is the PostgreSQL NOTIFY channel that announces
// compliance changes; the payload is "<tenant id>:<device id>".
const ComplianceChannel = "ensgate_compliance"

// DeviceKey names a device across tenants.
type DeviceKey struct {
	TenantID int64
	DeviceID string
}

// ValidateComplianceState explains the accepted states.
func ValidateComplianceState(state string) error {
	switch state {
	case Compliant, NonCompliant, Blocked, Wiped:
		return nil
	}
	return fmt.Errorf("compliance state %q: must be compliant, noncompliant, blocked or wiped", state)
}

// SetCompliance records a device's state and tells every node at once
// (NOTIFY is delivered when the transaction commits).
func (s *Store) SetCompliance(ctx context.Context, tenantID int64, deviceID, state string) error {
	if err := ValidateComplianceState(state); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			INSERT INTO device_compliance (tenant_id, device_id, state) VALUES ($1, $2, $3)
			ON CONFLICT (tenant_id, device_id) DO UPDATE SET state = excluded.state, changed_at = now()`,
			tenantID, deviceID, state); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, ComplianceChannel, fmt.Sprintf("%d:%s", tenantID, deviceID))
		return err
	})
	if err != nil {
		return s.queryError("set compliance", err)
	}
	return nil
}

// RemoveDevice wipes a device server-side: its compliance becomes wiped
// (the proxy refuses it) and its ENS registration ends, so the mailbox's
// subscription ends at Exchange's next callback when no device is left. It
// does not depend on the device calling unregister.
func (s *Store) RemoveDevice(ctx context.Context, tenantID int64, deviceID string) (subscriptionEnded bool, err error) {
	if err := s.SetCompliance(ctx, tenantID, deviceID, Wiped); err != nil {
		return false, err
	}
	ended, err := s.SetDeviceState(ctx, tenantID, deviceID, DeviceRemoved, "removed by an admin")
	if errors.Is(err, ErrNotFound) {
		return false, nil // never registered with ENS: the compliance state is all there is
	}
	return ended, err
}

// ComplianceStates loads every known state, for a node's cache.
func (s *Store) ComplianceStates(ctx context.Context) (map[DeviceKey]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT tenant_id, device_id, state FROM device_compliance`)
	if err != nil {
		return nil, s.queryError("load compliance", err)
	}
	defer rows.Close()
	states := map[DeviceKey]string{}
	for rows.Next() {
		var k DeviceKey
		var state string
		if err := rows.Scan(&k.TenantID, &k.DeviceID, &state); err != nil {
			return nil, s.queryError("load compliance", err)
		}
		states[k] = state
	}
	if err := rows.Err(); err != nil {
		return nil, s.queryError("load compliance", err)
	}
	return states, nil
}

// ComplianceState returns one device's state, "" when unknown.
func (s *Store) ComplianceState(ctx context.Context, k DeviceKey) (string, error) {
	var state string
	err := s.pool.QueryRow(ctx, `SELECT state FROM device_compliance WHERE tenant_id = $1 AND device_id = $2`,
		k.TenantID, k.DeviceID).Scan(&state)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", s.queryError("load compliance", err)
	}
	return state, nil
}

// ListenCompliance calls changed for each device whose compliance changes,
// and reset after each (re)connection, when changes may have been missed,
// until ctx ends. It holds one connection of its own; when that is lost, or
// changed fails, it reports the error to failed and starts over a second
// later.
func (s *Store) ListenCompliance(ctx context.Context, reset func(), changed func(DeviceKey) error, failed func(error)) {
	s.listen(ctx, ComplianceChannel, reset, func(payload string) error {
		tenant, device, ok := strings.Cut(payload, ":")
		id, err := strconv.ParseInt(tenant, 10, 64)
		if !ok || err != nil {
			return nil // not SetCompliance's: no device to reload
		}
		return changed(DeviceKey{TenantID: id, DeviceID: device})
	}, failed)
}

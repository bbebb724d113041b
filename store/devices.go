package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ensgate/ensgate/privacy"
)

// DeviceSummary is what an admin sees of a device: its ENS registration (if
// any) and its compliance state, without anything that identifies the user.
type DeviceSummary struct {
	DeviceID     string
	Platform     string // "ios", "android", or "" if never registered with ENS
	State        string // active, inactive, unregistered, removed, or "" (never registered)
	StateReason  string
	Compliance   string // compliant, noncompliant, blocked, wiped, or "" (unknown)
	RegisteredAt *time.Time
}

// ListDevices returns every device the tenant knows, registered with ENS or
// only judged for compliance, ordered by device ID.
func (s *Store) ListDevices(ctx context.Context, tenantID int64) ([]DeviceSummary, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT coalesce(d.device_id, c.device_id), coalesce(d.platform, ''), coalesce(d.state, ''),
		       coalesce(d.state_reason, ''), coalesce(c.state, ''), d.registered_at
		FROM (SELECT * FROM devices WHERE tenant_id = $1) d
		FULL JOIN (SELECT * FROM device_compliance WHERE tenant_id = $1) c ON c.device_id = d.device_id
		ORDER BY 1`, tenantID)
	if err != nil {
		return nil, s.queryError("list devices", err)
	}
	devices, err := pgx.CollectRows(rows, pgx.RowToStructByPos[DeviceSummary])
	if err != nil {
		return nil, s.queryError("list devices", err)
	}
	return devices, nil
}

// Device is a phone registered with ENS for one mailbox.
type Device struct {
	ID                int64
	TenantID          int64
	DeviceID          string
	MailboxHash       []byte
	Platform          string
	PushToken         string
	Topic             string
	NotificationLevel privacy.Level // what the device asked to be shown; the tenant's is a ceiling
	State             string        // active, inactive (push service said the token is dead), unregistered, removed
	StateReason       string
	RegisteredAt      time.Time
	SecretHash        []byte // SHA-256 of the device secret; nil if registered before secrets existed
}

// Device states.
const (
	DeviceActive       = "active"
	DeviceInactive     = "inactive"
	DeviceUnregistered = "unregistered"
	DeviceRemoved      = "removed"
)

const deviceColumns = `id, tenant_id, device_id, mailbox_hash, platform, push_token, coalesce(topic, ''),
	notification_level, state, coalesce(state_reason, ''), registered_at, secret_hash`

func collectDevices(rows pgx.Rows) ([]Device, error) {
	return pgx.CollectRows(rows, pgx.RowToStructByPos[Device])
}

// DeviceByID finds a tenant's device in any state.
func (s *Store) DeviceByID(ctx context.Context, tenantID int64, deviceID string) (Device, error) {
	return s.device(ctx, `tenant_id = $1 AND device_id = $2`, tenantID, deviceID)
}

// DeviceByRowID finds a device in any state by its row id, as jobs name it.
func (s *Store) DeviceByRowID(ctx context.Context, id int64) (Device, error) {
	return s.device(ctx, `id = $1`, id)
}

func (s *Store) device(ctx context.Context, condition string, args ...any) (Device, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deviceColumns+` FROM devices WHERE `+condition, args...)
	if err != nil {
		return Device{}, s.queryError("find device", err)
	}
	devices, err := collectDevices(rows)
	if err != nil {
		return Device{}, s.queryError("find device", err)
	}
	if len(devices) == 0 {
		return Device{}, ErrNotFound
	}
	return devices[0], nil
}

// ActiveDevices lists the mailbox's devices that should be notified.
func (s *Store) ActiveDevices(ctx context.Context, tenantID int64, mailboxHash []byte) ([]Device, error) {
	return s.mailboxDevices(ctx, "list mailbox devices", tenantID, mailboxHash, `state = 'active'`)
}

// mailboxDevices lists the mailbox's devices that meet condition.
func (s *Store) mailboxDevices(ctx context.Context, op string, tenantID int64, mailboxHash []byte, condition string) ([]Device, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deviceColumns+` FROM devices
		WHERE tenant_id = $1 AND mailbox_hash = $2 AND `+condition+` ORDER BY id`, tenantID, mailboxHash)
	if err != nil {
		return nil, s.queryError(op, err)
	}
	devices, err := collectDevices(rows)
	if err != nil {
		return nil, s.queryError(op, err)
	}
	return devices, nil
}

// SetDeviceState moves an active or inactive device to state (inactive,
// unregistered or removed) and ends its mailbox's subscription if no active
// device is left. It returns ErrNotFound if the device is unknown, already
// gone or already in that state, and whether the subscription ended.
func (s *Store) SetDeviceState(ctx context.Context, tenantID int64, deviceID, state, reason string) (subscriptionEnded bool, err error) {
	return s.setDeviceState(ctx, tenantID, deviceID, state, reason, nil)
}

// Unregister ends a device's registration at its own request, which needs
// the device's secret (its SHA-256): a wrong one is ErrNotFound, as for an
// unknown device.
func (s *Store) Unregister(ctx context.Context, tenantID int64, deviceID string, secretHash []byte) (subscriptionEnded bool, err error) {
	if secretHash == nil {
		return false, fmt.Errorf("device %q: %w", deviceID, ErrNotFound)
	}
	return s.setDeviceState(ctx, tenantID, deviceID, DeviceUnregistered, "", secretHash)
}

// setDeviceState is SetDeviceState for the device whose secret hashes to
// secretHash, or for any device when it is nil.
func (s *Store) setDeviceState(ctx context.Context, tenantID int64, deviceID, state, reason string, secretHash []byte) (subscriptionEnded bool, err error) {
	if state == DeviceActive {
		return false, errors.New("set device state: use Register to activate a device")
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var mailbox []byte
		err := tx.QueryRow(ctx, `
			UPDATE devices SET state = $3, state_reason = NULLIF($4, ''), state_changed_at = now()
			WHERE tenant_id = $1 AND device_id = $2 AND state IN ('active', 'inactive') AND state <> $3
			AND ($5::bytea IS NULL OR secret_hash = $5)
			RETURNING mailbox_hash`, tenantID, deviceID, state, reason, secretHash).Scan(&mailbox)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		subscriptionEnded, err = endIfNoDevices(ctx, tx, tenantID, mailbox)
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return false, fmt.Errorf("device %q: %w", deviceID, ErrNotFound)
	}
	if err != nil {
		return false, s.queryError("change device state", err)
	}
	return subscriptionEnded, nil
}

package store

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"slices"

	"github.com/jackc/pgx/v5"
)

// ErrNotOwner means a device id is registered by a device whose secret was
// not presented.
var ErrNotOwner = errors.New("the device id belongs to another registration")

// DeviceOwner is who asks to register a device id: the SHA-256 of the
// device secret it presented (nil for none) and the hashes of the mailbox
// it claims (under the current and the accepted master keys).
type DeviceOwner struct {
	TenantID      int64
	DeviceID      string
	SecretHash    []byte
	MailboxHashes [][]byte
}

// CheckDeviceOwner tells whether o may register its device id: a new,
// unregistered or removed id is free (proven false); a registered one
// (active or inactive) needs its secret (proven true), else ErrNotOwner.
// A device registered before device secrets existed has none: its mailbox
// may claim it, and gets a secret then.
func (s *Store) CheckDeviceOwner(ctx context.Context, o DeviceOwner) (proven bool, err error) {
	proven, err = checkOwner(ctx, s.pool, o, "")
	if err != nil && !errors.Is(err, ErrNotOwner) {
		return false, s.queryError("check device owner", err)
	}
	return proven, err
}

type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func checkOwner(ctx context.Context, q rowQuerier, o DeviceOwner, lock string) (bool, error) {
	var state string
	var secret, mailbox []byte
	err := q.QueryRow(ctx, `SELECT state, secret_hash, mailbox_hash FROM devices WHERE tenant_id = $1 AND device_id = $2 `+lock,
		o.TenantID, o.DeviceID).Scan(&state, &secret, &mailbox)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, err
	case state != DeviceActive && state != DeviceInactive:
		// Given up by its device, or removed by an admin (whose compliance
		// state, not this, keeps it out).
		return false, nil
	case secret == nil:
		if slices.ContainsFunc(o.MailboxHashes, func(h []byte) bool { return bytes.Equal(h, mailbox) }) {
			return false, nil
		}
		return false, ErrNotOwner
	case subtle.ConstantTimeCompare(secret, o.SecretHash) == 1:
		return true, nil
	}
	return false, ErrNotOwner
}

// DevicesToReverify lists a mailbox's devices registered before mailbox
// binding (no secret), which the upgrade to it deactivated: they get no
// pushes until they register again.
func (s *Store) DevicesToReverify(ctx context.Context, tenantID int64, mailboxHash []byte) ([]Device, error) {
	return s.mailboxDevices(ctx, "list devices to reverify", tenantID, mailboxHash, `state = 'inactive' AND secret_hash IS NULL`)
}

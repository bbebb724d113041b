package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
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

package store

import (
	"context"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
)

// Upgrading to mailbox binding (002) deactivates every device registered
// before it, which was never checked to belong to its mailbox; devices
// already deactivated keep their reason.
func TestUpgradeDeactivatesDevicesRegisteredBeforeMailboxBinding(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := newMigrator(ctx, conn.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if err := m.MigrateTo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	conn.Release()
	for _, stmt := range []string{
		`INSERT INTO tenants (name) VALUES ('contoso')`,
		`INSERT INTO devices (tenant_id, device_id, mailbox_hash, platform, push_token, notification_level, state, state_reason)
			VALUES (1, 'active-phone', 'm', 'ios', 't', 0, 'active', NULL),
			       (1, 'dead-token', 'm', 'ios', 't', 0, 'inactive', 'push token dead'),
			       (1, 'gone', 'm', 'ios', 't', 0, 'unregistered', NULL)`,
	} {
		if _, err := s.pool.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"active-phone": "inactive reverify: registered before mailbox binding",
		"dead-token": "inactive push token dead", "gone": "unregistered "}
	rows, err := s.pool.Query(ctx, `SELECT device_id, state || ' ' || coalesce(state_reason, '') FROM devices`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, got string
		rows.Scan(&id, &got)
		if got != want[id] {
			t.Errorf("%s: %q, want %q", id, got, want[id])
		}
	}
}

package ewsproxy_test

import (
	"context"
	"runtime"
	"strconv"
	"testing"

	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

// BenchmarkScale100kDevices fills a database with 100,000 registered
// devices (one mailbox subscription each, with sealed credentials of a
// realistic size) and compliance states, then reports the database bytes
// per device and the heap a node's compliance copy takes.
func BenchmarkScale100kDevices(b *testing.B) {
	const devices = 100_000
	ctx := context.Background()
	s, err := store.Open(ctx, pgtest.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, _, err := s.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	ep, _ := s.AddEndpoint(ctx, tenant.ID, "https://mail.contoso.test/EWS/Exchange.asmx", "")
	// 32-byte keyed mailbox hashes, ~300 bytes of sealed credentials (a
	// Basic login), Exchange's long ids, 64-hex APNs tokens.
	if _, err := s.Pool().Exec(ctx, `
		INSERT INTO subscriptions (public_id, tenant_id, mailbox_hash, endpoint_id, auth_type, sealed_credentials,
			remote_id, watermark, status_frequency)
		SELECT 'sub' || i, $1, sha256(i::text::bytea), $2, 'basic', decode(repeat(md5(i::text), 10), 'hex'),
			repeat('F', 60) || i, repeat('A', 40), 15 FROM generate_series(1, $3) i`, tenant.ID, ep.ID, devices); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `
		INSERT INTO devices (tenant_id, device_id, mailbox_hash, platform, push_token, notification_level)
		SELECT $1, 'device-' || i, sha256(i::text::bytea), 'ios', encode(sha256(('t' || i)::bytea), 'hex'), 0
		FROM generate_series(1, $2) i`, tenant.ID, devices); err != nil {
		b.Fatal(err)
	}
	if _, err := s.Pool().Exec(ctx, `
		INSERT INTO device_compliance (tenant_id, device_id, state)
		SELECT $1, 'device-' || i, 'compliant' FROM generate_series(1, $2) i`, tenant.ID, devices); err != nil {
		b.Fatal(err)
	}
	s.Pool().Exec(ctx, `VACUUM ANALYZE`)
	var bytes int64
	if err := s.Pool().QueryRow(ctx, `SELECT sum(pg_total_relation_size(t))::bigint FROM unnest(ARRAY
		['subscriptions', 'devices', 'device_compliance']::regclass[]) t`).Scan(&bytes); err != nil {
		b.Fatal(err)
	}

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c := compliance.New(s, quiet)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { c.Run(runCtx); close(done) }()
	for {
		if st, err := c.State(store.DeviceKey{TenantID: tenant.ID, DeviceID: "device-1"}); err == nil && st != "" {
			break
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ResetTimer()
	for i := range b.N {
		c.State(store.DeviceKey{TenantID: tenant.ID, DeviceID: "device-" + strconv.Itoa(i%devices+1)})
	}
	b.StopTimer()
	cancel()
	<-done
	b.ReportMetric(float64(bytes)/devices, "db-bytes/device")
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "compliance-heap-MiB")
}

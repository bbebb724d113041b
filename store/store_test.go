package store_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/privacy"
	"github.com/ensgate/ensgate/store"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// newStore returns a store on a fresh, migrated database.
func newStore(t *testing.T) *store.Store {
	t.Helper()
	ctx := context.Background()
	s, err := store.Open(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if _, _, err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMigrateIsIdempotent(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(ctx, pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	cur, want, err := s.SchemaVersion(ctx)
	if err != nil || cur != 0 || want < 1 {
		t.Fatalf("fresh database: version %d of %d, %v", cur, want, err)
	}
	from, to, err := s.Migrate(ctx)
	if err != nil || from != 0 || to != want {
		t.Fatalf("first migrate: %d -> %d (want 0 -> %d), %v", from, to, want, err)
	}
	from, to, err = s.Migrate(ctx)
	if err != nil || from != want || to != want {
		t.Fatalf("second migrate: %d -> %d (want no change at %d), %v", from, to, want, err)
	}
	if cur, _, _ := s.SchemaVersion(ctx); cur != want {
		t.Fatalf("schema version after migrate = %d, want %d", cur, want)
	}
}

func TestConcurrentMigrationsDoNotCollide(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			s, err := store.Open(ctx, url)
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			_, _, err = s.Migrate(ctx)
			errs <- err
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent migrate: %v", err)
		}
	}
}

func TestCreateTenantStoresOnlyTheTokenHash(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)

	tenant, token, err := s.CreateTenant(ctx, "contoso", 2)
	if err != nil {
		t.Fatal(err)
	}
	if tenant.ID == 0 || tenant.NotificationLevel != 2 {
		t.Fatalf("tenant = %+v", tenant)
	}
	if !strings.HasPrefix(token, "ens_") || len(token) != len("ens_")+43 {
		t.Fatalf("token %q is not ens_ + 256 bits in base64url", token)
	}
	var stored int
	err = s.Pool().QueryRow(ctx,
		`SELECT count(*) FROM api_tokens WHERE position($1::bytea in token_hash) > 0`, []byte(token)).Scan(&stored)
	if err != nil || stored != 0 {
		t.Fatalf("token found in clear in api_tokens (%d rows, %v)", stored, err)
	}

	got, err := s.TenantByToken(ctx, token)
	if err != nil || got.ID != tenant.ID || got.Name != "contoso" {
		t.Fatalf("TenantByToken = %+v, %v", got, err)
	}
	if _, err := s.TenantByToken(ctx, token+"x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("altered token: err = %v, want ErrNotFound", err)
	}
	_, other, _ := s.CreateTenant(ctx, "fabrikam", 0)
	if other == token {
		t.Fatal("two tenants got the same token")
	}
	if _, _, err := s.CreateTenant(ctx, "contoso", 0); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate tenant: err = %v, want ErrExists", err)
	}
}

func TestCreateTenantRejectsBadInput(t *testing.T) {
	s := newStore(t)
	for _, tc := range []struct {
		name  string
		level privacy.Level
		want  string
	}{
		{"", 0, "tenant name"},
		{"has space", 0, "tenant name"},
		{"-dash-first", 0, "tenant name"},
		{"ok", 5, "notification level 5"},
		{"ok", -1, "notification level -1"},
	} {
		if _, _, err := s.CreateTenant(context.Background(), tc.name, tc.level); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CreateTenant(%q, %d) err = %v, want mention of %q", tc.name, tc.level, err, tc.want)
		}
	}
}

func TestNormalizeEWSURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://Mail.Contoso.COM/EWS/Exchange.asmx":      "https://mail.contoso.com/EWS/Exchange.asmx",
		"HTTPS://mail.contoso.com:443/EWS/Exchange.asmx":  "https://mail.contoso.com/EWS/Exchange.asmx",
		"https://mail.contoso.com:8443/EWS/Exchange.asmx": "https://mail.contoso.com:8443/EWS/Exchange.asmx",
		"http://127.0.0.1:80/ews/exchange.asmx":           "http://127.0.0.1/ews/exchange.asmx",
		"https://[::1]:443/EWS/Exchange.asmx":             "https://[::1]/EWS/Exchange.asmx",
	} {
		got, err := store.NormalizeEWSURL(in)
		if err != nil || got != want {
			t.Errorf("NormalizeEWSURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"ftp://x/EWS", "https:///EWS", "https://u:p@x/EWS", "https://x/EWS?a=1", "mail.contoso.com/EWS"} {
		if got, err := store.NormalizeEWSURL(bad); err == nil {
			t.Errorf("NormalizeEWSURL(%q) = %q, want an error", bad, got)
		}
	}
}

func TestEndpointsArePerTenantWithTheirOwnPins(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	a, _, _ := s.CreateTenant(ctx, "a", 0)
	b, _, _ := s.CreateTenant(ctx, "b", 0)
	pinA := "sha256:" + strings.Repeat("ab", 32)
	pinB := "spki-sha256:" + strings.Repeat("cd", 32)

	if _, err := s.AddEndpoint(ctx, a.ID, "https://MAIL.example.test:443/EWS/Exchange.asmx", pinA); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddEndpoint(ctx, b.ID, "https://mail.example.test/EWS/Exchange.asmx", pinB); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddEndpoint(ctx, a.ID, "https://mail.example.test/EWS/Exchange.asmx", ""); !errors.Is(err, store.ErrExists) {
		t.Fatalf("same URL twice for one tenant: err = %v, want ErrExists", err)
	}

	got, err := s.EndpointFor(ctx, a.ID, "https://mail.EXAMPLE.test/EWS/Exchange.asmx")
	if err != nil || got.Fingerprint != pinA {
		t.Fatalf("tenant a endpoint = %+v, %v", got, err)
	}
	got, err = s.EndpointFor(ctx, b.ID, "https://mail.example.test/EWS/Exchange.asmx")
	if err != nil || got.Fingerprint != pinB {
		t.Fatalf("tenant b endpoint = %+v, %v", got, err)
	}
	if _, err := s.EndpointFor(ctx, a.ID, "https://mail.example.test/ews/exchange.asmx"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("path case must count: err = %v", err)
	}
	list, err := s.Endpoints(ctx, a.ID)
	if err != nil || len(list) != 1 || list[0].URL != "https://mail.example.test/EWS/Exchange.asmx" {
		t.Fatalf("Endpoints(a) = %+v, %v", list, err)
	}
	if _, err := s.AddEndpoint(ctx, a.ID, "https://other.example.test/EWS/Exchange.asmx", "sha256:nothex"); err == nil {
		t.Fatal("a malformed fingerprint was stored")
	}
}

func TestListDevicesJoinsRegistrationsAndCompliance(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	tenant, _, _ := s.CreateTenant(ctx, "contoso", 0)
	other, _, _ := s.CreateTenant(ctx, "other", 0)
	db := s.Pool()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO devices (tenant_id, device_id, mailbox_hash, platform, push_token, notification_level)
		  VALUES ($1, 'dev-ios', '\x01', 'ios', 'tok', 0), ($2, 'dev-other', '\x01', 'android', 'tok', 0)`, []any{tenant.ID, other.ID}},
		{`INSERT INTO device_compliance (tenant_id, device_id, state)
		  VALUES ($1, 'dev-ios', 'compliant'), ($1, 'dev-blocked', 'blocked')`, []any{tenant.ID}},
	} {
		if _, err := db.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
	devices, err := s.ListDevices(ctx, tenant.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(devices) != 2 {
		t.Fatalf("got %d devices, want 2 (other tenant's must not show): %+v", len(devices), devices)
	}
	blocked, ios := devices[0], devices[1]
	if blocked.DeviceID != "dev-blocked" || blocked.Compliance != "blocked" || blocked.State != "" || blocked.RegisteredAt != nil {
		t.Errorf("compliance-only device = %+v", blocked)
	}
	if ios.DeviceID != "dev-ios" || ios.Platform != "ios" || ios.State != "active" || ios.Compliance != "compliant" || ios.RegisteredAt == nil {
		t.Errorf("registered device = %+v", ios)
	}
}

func TestUnreachableDatabaseIsNamedWithoutPassword(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(ctx, "postgres://ens:s3cret-pw@127.0.0.1:1/ens?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, _, err = s.Migrate(ctx)
	if err == nil || !strings.Contains(err.Error(), "database unreachable at postgres://ens:xxxxx@127.0.0.1:1/ens") {
		t.Fatalf("err = %v, want it to name the database", err)
	}
	if strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("error reveals the password: %v", err)
	}
	if _, err := store.Open(ctx, "postgres://ens:s3cret-pw@host:notaport/db"); err == nil || strings.Contains(err.Error(), "s3cret-pw") {
		t.Fatalf("bad URL: err = %v", err)
	}
}

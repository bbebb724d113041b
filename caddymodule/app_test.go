package caddymodule

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/ensgate/ensgate/ens/push"
)

const goodKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=" // 32 bytes

func TestAppResolvesPlaceholdersFromTheEnvironment(t *testing.T) {
	t.Setenv("TEST_DB", "postgres://ens@db/ens")
	t.Setenv("TEST_KEY", goodKey)
	a := &App{DatabaseURL: "{env.TEST_DB}", MasterKey: "{env.TEST_KEY}", PublicURL: "https://ens.example.com/",
		APNs: &APNsConfig{URL: "{env.UNSET_APNS_URL}"}}
	if err := a.resolve(); err != nil {
		t.Fatal(err)
	}
	if a.databaseURL != "postgres://ens@db/ens" || len(a.masterKey) != 32 || a.publicURL.String() != "https://ens.example.com" {
		t.Errorf("resolved %q, %d-byte key, %v", a.databaseURL, len(a.masterKey), a.publicURL)
	}
	if a.apns.URL != push.APNsDefaultURL || a.fcm.URL != push.FCMDefaultURL {
		t.Errorf("push URLs default to %q and %q", a.apns.URL, a.fcm.URL)
	}
}

func TestAcceptedMasterKeysMayShareOneVariable(t *testing.T) {
	other := "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=" // 32 bytes
	t.Setenv("TEST_ACCEPTED", "  "+goodKey+"\t"+other+" ")
	t.Setenv("TEST_UNSET_ACCEPTED", "")
	a := &App{DatabaseURL: "postgres://x", MasterKey: "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=", PublicURL: "https://x",
		AcceptedMasterKeys: []string{"{env.TEST_ACCEPTED}", "{env.TEST_UNSET_ACCEPTED}"}}
	if err := a.resolve(); err != nil {
		t.Fatal(err)
	}
	if len(a.accepted) != 2 || string(a.accepted[0]) != "0123456789abcdef0123456789abcdef" || string(a.accepted[1]) != "fedcba9876543210fedcba9876543210" {
		t.Fatalf("accepted keys %q", a.accepted)
	}
	// Or in a file, one key per line, read again at every reload.
	file := filepath.Join(t.TempDir(), "accepted-master-keys")
	os.WriteFile(file, []byte(other+"\n"+goodKey+"\n"), 0o600)
	a.AcceptedMasterKeys = []string{"{file." + file + "}"}
	if err := a.resolve(); err != nil {
		t.Fatal(err)
	}
	if len(a.accepted) != 2 || string(a.accepted[0]) != "fedcba9876543210fedcba9876543210" || string(a.accepted[1]) != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("accepted keys from a file %q", a.accepted)
	}
}

func TestAppValidationNamesEveryBadField(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "AuthKey.p8")
	os.WriteFile(keyFile, []byte("key"), 0o600)
	for _, tc := range []struct {
		name string
		app  App
		want []string
	}{
		{"empty", App{}, []string{"database_url is required (set DATABASE_URL", "master_key is required (set ENS_MASTER_KEY", "public_url is required (set ENS_PUBLIC_URL"}},
		{"short key", App{DatabaseURL: "postgres://x", MasterKey: "c2hvcnQ=", PublicURL: "https://x"}, []string{"master_key must be base64 of exactly 32 bytes (got 5 bytes)"}},
		{"not base64", App{DatabaseURL: "postgres://x", MasterKey: "%%%", PublicURL: "https://x"}, []string{"master_key must be base64 of exactly 32 bytes (got something that is not base64)"}},
		{"accepted key", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", AcceptedMasterKeys: []string{goodKey + " c2hvcnQ="}},
			[]string{"accepted_master_keys key 2 of 2 must be base64 of exactly 32 bytes (got 5 bytes)"}},
		{"accepted key is the master key", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", AcceptedMasterKeys: []string{goodKey}},
			[]string{"accepted_master_keys key 1 of 1 is master_key itself"}},
		{"accepted key twice", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x",
			AcceptedMasterKeys: []string{"ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=", "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="}},
			[]string{"accepted_master_keys key 2 of 2 is listed twice"}},
		{"public url", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x/?q=1"}, []string{`public_url "https://x/?q=1": must be an absolute http(s) URL`}},
		{"admin token", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", AdminToken: "short"}, []string{"admin_token is too short (5 characters)"}},
		{"apns partial", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", APNs: &APNsConfig{KeyID: "ABCDE12345"}},
			[]string{"apns.key_file is required", "apns.team_id must be the 10-character team id"}},
		{"apns missing file", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", APNs: &APNsConfig{KeyFile: "/nonexistent.p8", KeyID: "ABCDE12345", TeamID: "TEAM123456"}},
			[]string{"apns.key_file is unusable"}},
		{"apns http url", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", APNs: &APNsConfig{URL: "http://apns.test", KeyFile: keyFile, KeyID: "ABCDE12345", TeamID: "TEAM123456"}},
			[]string{`apns.url "http://apns.test": want production, sandbox or an https:// URL (set ENS_APNS_URL)`}},
		{"apns cert and key", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", APNs: &APNsConfig{KeyFile: keyFile, CertFile: keyFile}},
			[]string{"apns.cert_file and apns.key_file are alternatives: configure one"}},
		{"fcm", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", FCM: &FCMConfig{URL: "fcm.test", CredentialsFile: "/nonexistent.json"}},
			[]string{"fcm.credentials_file is unusable", `fcm.url "fcm.test": want an https:// URL (set ENS_FCM_URL)`}},
		{"tunables", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", KeyPoolSize: -1,
			StatusFrequency: caddy.Duration(90 * time.Second), RateLimit: -1, KeyPairTTL: caddy.Duration(-time.Minute), EWSConcurrency: -2},
			[]string{"ens: key_pool_size must be 1 to 10000, or 0 for the default (got -1)", "ens: status_frequency must be whole minutes from 1m to 24h (got 1m30s)",
				"ens: rate_limit must be a positive number", "ens: key_pair_ttl must be positive (got -1m0s", "ens: ews_concurrency must be positive (got -2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.app.resolve()
			if err == nil {
				t.Fatal("resolve accepted a bad config")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "c2hvcnQ=") || strings.Contains(err.Error(), "short\"") {
				t.Errorf("error reveals a secret: %v", err)
			}
		})
	}
	ok := App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", APNs: &APNsConfig{KeyFile: keyFile, KeyID: "ABCDE12345", TeamID: "TEAM123456"}}
	if err := ok.resolve(); err != nil {
		t.Errorf("a complete APNs config was refused: %v", err)
	}
	// Apple's endpoint names, which push.NewAPNs maps, pass the app too
	// (it used to demand an https:// URL, so `url sandbox` never loaded).
	ok.APNs.URL = "sandbox"
	if err := ok.resolve(); err != nil || ok.apns.URL != "sandbox" {
		t.Errorf("apns url sandbox: %v (resolved %q)", err, ok.apns.URL)
	}
}

func TestAppPassesEveryTunableToENS(t *testing.T) {
	a := &App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x",
		KeyPoolSize: 50, StatusFrequency: caddy.Duration(30 * time.Minute), RateLimit: 40, DeviceRateLimit: 5,
		TenantRateLimit: 2000, CallbackRateLimit: 20, KeyPairTTL: caddy.Duration(5 * time.Minute),
		KeyPairsPerTenant: 500, KeyPairsPerAddress: 20, EWSTimeout: caddy.Duration(45 * time.Second), EWSConcurrency: 32,
		NotificationsInFlight: 64}
	if err := a.resolve(); err != nil {
		t.Fatal(err)
	}
	s := a.settings
	if s.KeyPoolSize != 50 || s.StatusFrequency != 30*time.Minute || s.RateLimit != 40 || s.DeviceRateLimit != 5 ||
		s.TenantRateLimit != 2000 || s.CallbackRateLimit != 20 || s.KeyPairTTL != 5*time.Minute ||
		s.KeyPairsPerTenant != 500 || s.KeyPairsPerAddress != 20 || s.EWSTimeout != 45*time.Second || s.EWSConcurrency != 32 ||
		s.NotificationsInFlight != 64 {
		t.Errorf("ens settings %+v", s)
	}
}

package caddymodule

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	if a.apns.URL != DefaultAPNsURL || a.fcm.URL != DefaultFCMURL {
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
			[]string{`apns.url is invalid: "http://apns.test" must be an https:// URL`}},
		{"fcm", App{DatabaseURL: "postgres://x", MasterKey: goodKey, PublicURL: "https://x", FCM: &FCMConfig{URL: "fcm.test", CredentialsFile: "/nonexistent.json"}},
			[]string{"fcm.credentials_file is unusable", "fcm.url is invalid"}},
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
}

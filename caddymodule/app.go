// Package caddymodule adapts ENSGate's domain packages to Caddy: the ens app
// (database pool, settings, background workers), the ens and ews_proxy HTTP
// handlers, their Caddyfile syntax and the `ensgate ens` subcommands. It is
// the only package that imports Caddy.
package caddymodule

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/store"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `ens` app: it owns ENS's settings and background workers, and
// shares the PostgreSQL pool and the compliance cache (pool.go). Every
// value may be a placeholder such as {env.DATABASE_URL}; placeholders are
// resolved at provisioning, so secrets stay out of the adapted JSON config.
type App struct {
	// PostgreSQL connection string (postgres://user:pass@host:port/db).
	DatabaseURL string `json:"database_url,omitempty"`
	// Base64 of 32 random bytes; encrypts device private keys at rest.
	MasterKey string `json:"master_key,omitempty"`
	// Master keys still accepted while master_key is rotated (base64, each
	// entry may hold several separated by spaces): key pairs sealed under
	// them are re-sealed under master_key, and mailboxes registered under
	// them are found again. See docs/operations.md.
	AcceptedMasterKeys []string `json:"accepted_master_keys,omitempty"`
	// The base URL Exchange calls back (…/api/ens/notify).
	PublicURL string `json:"public_url,omitempty"`
	// Credential for the admin API; the admin API is off when empty.
	AdminToken string `json:"admin_token,omitempty"`
	// Secret shared by ENS and the EWS proxy (also across deployments):
	// ENS signs the devices it will notify with it on its EWS calls.
	ProxySecret string `json:"proxy_secret,omitempty"`
	// Apple Push Notification service (token auth).
	APNs *APNsConfig `json:"apns,omitempty"`
	// Firebase Cloud Messaging HTTP v1.
	FCM *FCMConfig `json:"fcm,omitempty"`
	// Free device key pairs kept ready (default 20).
	KeyPoolSize int `json:"key_pool_size,omitempty"`
	// Exchange's status ping interval, whole minutes from 1m to 24h (default 15m).
	StatusFrequency caddy.Duration `json:"status_frequency,omitempty"`
	// Device API requests per second per tenant and node (default 20).
	RateLimit float64 `json:"rate_limit,omitempty"`

	// Resolved settings, filled by Provision.
	databaseURL string
	masterKey   []byte
	accepted    [][]byte // accepted master keys
	publicURL   *url.URL
	adminToken  string
	apns        APNsConfig
	fcm         FCMConfig

	proxySecret []byte

	store      *store.Store
	compliance *compliance.Cache
	service    *ens.Service
	handler    http.Handler
	logger     *zap.Logger
}

// APNsConfig selects the APNs endpoint and the credentials: a .p8
// token-signing key (key_file, key_id, team_id) or a certificate (cert_file).
type APNsConfig struct {
	// https://api.push.apple.com (default), https://api.sandbox.push.apple.com or a test server.
	URL     string `json:"url,omitempty"`
	KeyFile string `json:"key_file,omitempty"`
	KeyID   string `json:"key_id,omitempty"`
	TeamID  string `json:"team_id,omitempty"`
	// A .p12 or PEM certificate with its key, instead of token auth.
	CertFile     string `json:"cert_file,omitempty"`
	CertPassword string `json:"cert_password,omitempty"`
	// Default apns-topic (the app's bundle id) when a device gives none.
	Topic string `json:"topic,omitempty"`
}

// FCMConfig selects the FCM endpoint and the service-account credentials.
type FCMConfig struct {
	// https://fcm.googleapis.com (default) or a test server.
	URL             string `json:"url,omitempty"`
	CredentialsFile string `json:"credentials_file,omitempty"`
}

// Defaults applied when the APNs or FCM URL is empty.
const (
	DefaultAPNsURL = "https://api.push.apple.com"
	DefaultFCMURL  = "https://fcm.googleapis.com"
)

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "ens",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision resolves placeholders, checks every setting and takes the shared
// database pool and compliance cache. The cache starts loading at once, but
// neither needs the database to be up, so `caddy validate` works without one.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if err := a.resolve(); err != nil {
		return err
	}
	s, err := acquireStore(a.databaseURL)
	if err != nil {
		return fmt.Errorf("ens: database_url: %w", err)
	}
	a.store = s
	if a.compliance, err = acquireCompliance(a.databaseURL, ctx.Slogger()); err != nil {
		return fmt.Errorf("ens: database_url: %w", err)
	}
	if err := push.Register(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("ens: push metrics: %w", err)
	}
	if err := ens.Register(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("ens: metrics: %w", err)
	}
	sender, err := a.pushSender(ctx.Slogger())
	if err != nil {
		return err
	}
	a.service, err = ens.New(ens.Config{
		Store: s, MasterKey: a.masterKey, AcceptedMasterKeys: a.accepted, PublicURL: a.publicURL, Push: sender, Logger: ctx.Slogger(),
		Compliance: a.compliance, ProxySecret: a.proxySecret, AdminToken: a.adminToken,
		KeyPoolSize: a.KeyPoolSize, StatusFrequency: int(time.Duration(a.StatusFrequency) / time.Minute), RateLimit: a.RateLimit,
		ClientIP: caddyClientIP,
	})
	if err != nil {
		return fmt.Errorf("ens: %w", err)
	}
	a.handler = a.service.Handler()
	return nil
}

// pushSender builds the APNs and FCM senders that are configured.
func (a *App) pushSender(logger *slog.Logger) (push.Sender, error) {
	router := &push.Router{Logger: logger}
	retry := push.RetryPolicy{MaxElapsed: ens.PushTimeBudget}
	if a.apns.KeyFile != "" || a.apns.CertFile != "" {
		apns, err := push.NewAPNs(push.APNsConfig{URL: a.apns.URL, KeyFile: a.apns.KeyFile, KeyID: a.apns.KeyID,
			TeamID: a.apns.TeamID, CertFile: a.apns.CertFile, CertPassword: a.apns.CertPassword, Topic: a.apns.Topic,
			Retry: retry, Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("ens: apns: %w", err)
		}
		router.APNs = apns
	} else {
		a.logger.Warn("APNs is not configured: iOS devices get no pushes (set ENS_APNS_KEY_FILE, ENS_APNS_KEY_ID, ENS_APNS_TEAM_ID)")
	}
	if a.fcm.CredentialsFile != "" {
		fcm, err := push.NewFCM(push.FCMConfig{URL: a.fcm.URL, CredentialsFile: a.fcm.CredentialsFile, Retry: retry, Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("ens: fcm: %w", err)
		}
		router.FCM = fcm
	} else {
		a.logger.Warn("FCM is not configured: Android devices get no pushes (set ENS_FCM_CREDENTIALS_FILE)")
	}
	return router, nil
}

// placeholderResolver returns a function that fills in Caddy's global
// placeholders ({env.*} and the like) and trims the result.
func placeholderResolver() func(string) string {
	repl := caddy.NewReplacer()
	return func(v string) string { return strings.TrimSpace(repl.ReplaceKnown(v, "")) }
}

// resolve replaces placeholders and validates, naming the field and the
// environment variable an admin most likely has to fix.
func (a *App) resolve() error {
	get := placeholderResolver()

	var errs []error
	fail := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("ens: %s "+format, append([]any{field}, args...)...))
	}

	if a.databaseURL = get(a.DatabaseURL); a.databaseURL == "" {
		fail("database_url", "is required (set DATABASE_URL to a postgres:// URL)")
	}

	if mk := get(a.MasterKey); mk == "" {
		fail("master_key", "is required (set ENS_MASTER_KEY to base64 of 32 random bytes: openssl rand -base64 32)")
	} else if key, err := decodeMasterKey(mk); err != nil {
		fail("master_key", "%v", err)
	} else {
		a.masterKey = key
	}
	var accepted []string
	for _, v := range a.AcceptedMasterKeys {
		accepted = append(accepted, strings.Fields(get(v))...)
	}
	var keys [][]byte
	for i, mk := range accepted {
		key, err := decodeMasterKey(mk)
		switch {
		case err != nil:
			fail("accepted_master_keys", "key %d of %d %v", i+1, len(accepted), err)
		case bytes.Equal(key, a.masterKey):
			fail("accepted_master_keys", "key %d of %d is master_key itself: list only the other key (when rotating, the old one; set ENS_ACCEPTED_MASTER_KEYS)", i+1, len(accepted))
		case slices.ContainsFunc(keys, func(k []byte) bool { return bytes.Equal(k, key) }):
			fail("accepted_master_keys", "key %d of %d is listed twice", i+1, len(accepted))
		default:
			keys = append(keys, key)
		}
	}
	a.accepted = keys

	if pu := get(a.PublicURL); pu == "" {
		fail("public_url", "is required (set ENS_PUBLIC_URL to the https:// base URL Exchange can reach)")
	} else if u, err := url.Parse(pu); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		fail("public_url", "%q: must be an absolute http(s) URL without query or fragment", pu)
	} else {
		u.Path = strings.TrimSuffix(u.Path, "/")
		a.publicURL = u
	}

	if a.adminToken = get(a.AdminToken); a.adminToken != "" && len(a.adminToken) < 32 {
		fail("admin_token", tooShort, len(a.adminToken))
	}
	if ps := get(a.ProxySecret); ps != "" && len(ps) < 32 {
		fail("proxy_secret", tooShort, len(ps))
	} else {
		a.proxySecret = []byte(ps)
	}

	if a.APNs != nil {
		a.apns = APNsConfig{URL: get(a.APNs.URL), KeyFile: get(a.APNs.KeyFile), KeyID: get(a.APNs.KeyID),
			TeamID: get(a.APNs.TeamID), Topic: get(a.APNs.Topic), CertFile: get(a.APNs.CertFile),
			CertPassword: get(a.APNs.CertPassword)}
	}
	if a.apns.CertFile != "" {
		if a.apns.KeyFile != "" {
			fail("apns.cert_file", "and apns.key_file are alternatives: configure one")
		}
		if _, err := os.Stat(a.apns.CertFile); err != nil {
			fail("apns.cert_file", "is unusable: %v", err)
		}
	} else if a.apns.KeyFile != "" || a.apns.KeyID != "" || a.apns.TeamID != "" {
		if a.apns.KeyFile == "" {
			fail("apns.key_file", "is required when APNs is configured (set ENS_APNS_KEY_FILE to the .p8 file)")
		} else if _, err := os.Stat(a.apns.KeyFile); err != nil {
			fail("apns.key_file", "is unusable: %v", err)
		}
		if len(a.apns.KeyID) != 10 {
			fail("apns.key_id", "must be the 10-character key id from Apple (set ENS_APNS_KEY_ID)")
		}
		if len(a.apns.TeamID) != 10 {
			fail("apns.team_id", "must be the 10-character team id from Apple (set ENS_APNS_TEAM_ID)")
		}
	}
	if a.apns.URL == "" {
		a.apns.URL = DefaultAPNsURL
	} else if err := checkHTTPSURL(a.apns.URL); err != nil {
		fail("apns.url", "is invalid: %v", err)
	}

	if a.KeyPoolSize < 0 || a.KeyPoolSize > 10000 {
		fail("key_pool_size", "must be 1 to 10000 (got %d)", a.KeyPoolSize)
	}
	if sf := time.Duration(a.StatusFrequency); sf != 0 && (sf%time.Minute != 0 || sf < time.Minute || sf > 24*time.Hour) {
		fail("status_frequency", "must be whole minutes from 1m to 24h (got %s)", sf)
	}
	if a.RateLimit < 0 {
		fail("rate_limit", "must be positive (requests per second per tenant)")
	}

	if a.FCM != nil {
		a.fcm = FCMConfig{URL: get(a.FCM.URL), CredentialsFile: get(a.FCM.CredentialsFile)}
	}
	if a.fcm.CredentialsFile != "" {
		if _, err := os.Stat(a.fcm.CredentialsFile); err != nil {
			fail("fcm.credentials_file", "is unusable: %v", err)
		}
	}
	if a.fcm.URL == "" {
		a.fcm.URL = DefaultFCMURL
	} else if err := checkHTTPSURL(a.fcm.URL); err != nil {
		fail("fcm.url", "is invalid: %v", err)
	}
	return errors.Join(errs...)
}

// tooShort explains, given its length, why admin_token or a proxy_secret
// (of the app or of ews_proxy) is refused.
const tooShort = "is too short (%d characters): use at least 32 random characters, e.g. openssl rand -hex 32"

func decodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// decodeMasterKey decodes a master key, saying what is wrong without
// revealing it.
func decodeMasterKey(s string) ([]byte, error) {
	key, err := decodeBase64(s)
	switch {
	case err != nil:
		return nil, errors.New("must be base64 of exactly 32 bytes (got something that is not base64)")
	case len(key) != 32:
		return nil, fmt.Errorf("must be base64 of exactly 32 bytes (got %d bytes)", len(key))
	}
	return key, nil
}

func checkHTTPSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("%q must be an https:// URL", raw)
	}
	return nil
}

// Start checks that the database schema matches this binary and starts the
// background workers. A database that cannot be reached does not stop Caddy:
// nodes may start before PostgreSQL, and requests report the outage until
// it is back.
func (a *App) Start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	current, wanted, err := a.store.SchemaVersion(ctx)
	switch {
	case err != nil:
		a.logger.Warn("cannot check the database schema; continuing", zap.Error(err))
	case current < wanted:
		return fmt.Errorf("ens: the database schema is at version %d but this ENSGate needs %d: run `ensgate ens migrate`", current, wanted)
	case current > wanted:
		return fmt.Errorf("ens: the database schema (version %d) is newer than this ENSGate (version %d): upgrade the binary", current, wanted)
	}
	a.service.Start()
	return nil
}

// Stop ends the background workers.
func (a *App) Stop() error {
	a.service.Stop()
	return nil
}

// Cleanup gives back this config's references to the shared compliance
// cache and pool.
func (a *App) Cleanup() error {
	var errs []error
	if a.compliance != nil {
		errs = append(errs, releaseCompliance(a.databaseURL))
	}
	if a.store != nil {
		errs = append(errs, releaseStore(a.databaseURL))
	}
	return errors.Join(errs...)
}

// ProxySettings returns the database URL and proxy secret as resolved by
// Provision. ews_proxy handlers that configure neither of their own take
// the app's through it, and nothing else of the app.
func (a *App) ProxySettings() (databaseURL string, proxySecret []byte) {
	return a.databaseURL, a.proxySecret
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

// Package caddymodule adapts ENSGate's domain packages to Caddy: the ens app
// (database pool, settings, background workers), the ens and ews_proxy HTTP
// handlers, their Caddyfile syntax and the `ensgate ens` subcommands. It is
// the only package that imports Caddy.
package caddymodule

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
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
	// Device API requests per second per client address of a tenant, on
	// each node (default 20).
	RateLimit float64 `json:"rate_limit,omitempty"`
	// Device API requests per second per device (default rate_limit/2).
	DeviceRateLimit float64 `json:"device_rate_limit,omitempty"`
	// A tenant's ceiling in requests per second (default 25 × rate_limit).
	TenantRateLimit float64 `json:"tenant_rate_limit,omitempty"`
	// Notifications per second one subscription's callback URL may bring
	// (default 10).
	CallbackRateLimit float64 `json:"callback_rate_limit,omitempty"`
	// How long a key pair handed out by publickey waits for its
	// registration (default 10m).
	KeyPairTTL caddy.Duration `json:"key_pair_ttl,omitempty"`
	// Unused key pairs a tenant may hold (default 100).
	KeyPairsPerTenant int `json:"key_pairs_per_tenant,omitempty"`
	// Unused key pairs one client address of a tenant may hold (default 10).
	KeyPairsPerAddress int `json:"key_pairs_per_address,omitempty"`
	// Bound on one EWS call (default 20s).
	EWSTimeout caddy.Duration `json:"ews_timeout,omitempty"`
	// EWS calls in flight per Exchange endpoint, on each node (default 16).
	EWSConcurrency int `json:"ews_concurrency,omitempty"`
	// NotificationsInFlight bounds the Exchange callbacks a node works on
	// at once (ens.DefaultNotificationsInFlight).
	NotificationsInFlight int `json:"notifications_in_flight,omitempty"`

	// Resolved settings, filled by Provision.
	databaseURL string
	masterKey   []byte
	accepted    [][]byte // accepted master keys
	publicURL   *url.URL
	adminToken  string
	settings    ens.Config // the tunables, validated by resolve
	apns        push.APNsConfig
	fcm         push.FCMConfig
	apnsOn      bool // credentials configured

	proxySecret []byte

	store      *store.Store
	compliance *compliance.Cache
	service    *ens.Service
	push       *push.Router // its senders keep connections, closed at Cleanup
	handler    http.Handler
	logger     *zap.Logger
}

// APNsConfig selects the APNs endpoint and the credentials: a .p8
// token-signing key (key_file, key_id, team_id) or a certificate (cert_file).
type APNsConfig struct {
	// production (https://api.push.apple.com, the default), sandbox
	// (https://api.sandbox.push.apple.com, for development builds) or the
	// https:// URL of another endpoint (a test server).
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
	a.push, err = a.pushSender(ctx.Slogger())
	if err != nil {
		return err
	}
	cfg := a.settings
	cfg.Store, cfg.MasterKey, cfg.AcceptedMasterKeys, cfg.PublicURL = s, a.masterKey, a.accepted, a.publicURL
	cfg.Push, cfg.Logger, cfg.ClientIP = a.push, ctx.Slogger(), caddyClientIP
	cfg.Compliance, cfg.ProxySecret, cfg.AdminToken = a.compliance, a.proxySecret, a.adminToken
	a.service, err = ens.New(cfg)
	if err != nil {
		return fmt.Errorf("ens: %w", err)
	}
	a.handler = a.service.Handler()
	return nil
}

// pushSender builds the APNs and FCM senders that are configured.
func (a *App) pushSender(logger *slog.Logger) (*push.Router, error) {
	router := &push.Router{Logger: logger}
	retry := push.RetryPolicy{MaxElapsed: ens.PushTimeBudget}
	if a.apnsOn {
		cfg := a.apns
		cfg.Retry, cfg.Logger = retry, logger
		apns, err := push.NewAPNs(cfg)
		if err != nil {
			return nil, fmt.Errorf("ens: %w", err)
		}
		router.APNs = apns
	} else {
		a.logger.Warn("APNs is not configured: iOS devices get no pushes (set ENS_APNS_KEY_FILE, ENS_APNS_KEY_ID, ENS_APNS_TEAM_ID)")
	}
	if a.fcm.CredentialsFile != "" {
		cfg := a.fcm
		cfg.Retry, cfg.Logger = retry, logger
		fcm, err := push.NewFCM(cfg)
		if err != nil {
			return nil, fmt.Errorf("ens: %w", err)
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

	// The push settings and the tunables follow their packages' own rules
	// (Validate); the adapter adds where Caddyfile.example takes them from.
	apns, fcm := cmp.Or(a.APNs, new(APNsConfig)), cmp.Or(a.FCM, new(FCMConfig))
	a.apns = push.APNsConfig{URL: cmp.Or(get(apns.URL), push.APNsDefaultURL), KeyFile: get(apns.KeyFile), KeyID: get(apns.KeyID),
		TeamID: get(apns.TeamID), Topic: get(apns.Topic), CertFile: get(apns.CertFile), CertPassword: get(apns.CertPassword)}
	// Any credential setting turns APNs on, so that a partial one is
	// reported rather than silently leaving iOS devices without pushes.
	if a.apnsOn = a.apns.KeyFile != "" || a.apns.CertFile != "" || a.apns.KeyID != "" || a.apns.TeamID != ""; a.apnsOn {
		errs = append(errs, withEnvHints(a.apns.Validate())...)
	}
	a.fcm = push.FCMConfig{URL: cmp.Or(get(fcm.URL), push.FCMDefaultURL), CredentialsFile: get(fcm.CredentialsFile)}
	if a.fcm.CredentialsFile != "" {
		errs = append(errs, withEnvHints(a.fcm.Validate())...)
	}

	a.settings = ens.Config{
		KeyPoolSize: a.KeyPoolSize, StatusFrequency: time.Duration(a.StatusFrequency),
		RateLimit: a.RateLimit, DeviceRateLimit: a.DeviceRateLimit, TenantRateLimit: a.TenantRateLimit,
		CallbackRateLimit: a.CallbackRateLimit, KeyPairTTL: time.Duration(a.KeyPairTTL),
		KeyPairsPerTenant: a.KeyPairsPerTenant, KeyPairsPerAddress: a.KeyPairsPerAddress,
		EWSTimeout: time.Duration(a.EWSTimeout), EWSConcurrency: a.EWSConcurrency, NotificationsInFlight: a.NotificationsInFlight,
	}
	errs = append(errs, unjoin(a.settings.Validate())...)
	return errors.Join(errs...)
}

// pushEnv names the variable Caddyfile.example takes each push setting
// from, for the hint in its error.
var pushEnv = map[string]string{
	"apns.url": "ENS_APNS_URL", "apns.key_file": "ENS_APNS_KEY_FILE", "apns.key_id": "ENS_APNS_KEY_ID",
	"apns.team_id": "ENS_APNS_TEAM_ID", "fcm.url": "ENS_FCM_URL", "fcm.credentials_file": "ENS_FCM_CREDENTIALS_FILE",
}

// withEnvHints turns push's problems (each starting with the setting's
// name) into the app's: prefixed "ens: ", with the variable to set.
func withEnvHints(err error) []error {
	var errs []error
	for _, e := range unjoin(err) {
		msg := e.Error()
		field, _, _ := strings.Cut(msg, " ")
		if v, ok := pushEnv[field]; ok {
			msg += " (set " + v + ")"
		}
		errs = append(errs, errors.New("ens: "+msg))
	}
	return errs
}

// unjoin lists the errors of an errors.Join, so that each problem is
// reported on its own line.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err != nil {
		return []error{err}
	}
	return nil
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
// cache and pool, and drops its push senders' idle connections (a reload
// builds new senders; the old ones' HTTP/2 connections would otherwise
// stay up on their keep-alive pings).
func (a *App) Cleanup() error {
	if a.push != nil {
		for _, s := range []push.Sender{a.push.APNs, a.push.FCM} {
			if c, ok := s.(interface{ Close() }); ok {
				c.Close()
			}
		}
	}
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

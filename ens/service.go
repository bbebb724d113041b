package ens

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/store"
)

// Config is what ENS needs from its host (caddymodule); zero values take
// the defaults below. The settings an admin may tune are named in comments
// and in Validate's errors as the ens app spells them (key_pool_size).
type Config struct {
	Store     *store.Store
	MasterKey []byte   // 32 bytes
	PublicURL *url.URL // base of Exchange's callback URL
	Push      push.Sender
	Logger    *slog.Logger

	// AcceptedMasterKeys are further 32-byte master keys, kept while the
	// master key is rotated: key pairs sealed under them are re-sealed
	// under MasterKey, and mailbox hashes made with them still match.
	AcceptedMasterKeys [][]byte

	KeyPoolSize int // key_pool_size: free key pairs kept ready, at most 10,000; DefaultKeyPoolSize
	// StatusFrequency (status_frequency) is how often Exchange pings a
	// quiet subscription: whole minutes from 1m to 24h, as EWS takes it;
	// DefaultStatusFrequency.
	StatusFrequency time.Duration
	RateLimit       float64          // rate_limit: device API requests per second per client address of a tenant; DefaultRateLimit
	EWSTimeout      time.Duration    // ews_timeout: one EWS call; DefaultEWSTimeout
	EWSConcurrency  int              // ews_concurrency: EWS calls in flight per endpoint; DefaultEWSConcurrency
	EWSRootCAs      *x509.CertPool   // trusted for Exchange; nil: the system roots (SSL_CERT_FILE adds to them)
	Now             func() time.Time // the clock that judges an item's age; nil: time.Now

	// Fair shares: one device, address or tenant over its share is refused
	// alone. Rates are per node, with bursts of twice the rate.
	DeviceRateLimit float64 // device_rate_limit: device API requests per second per device; RateLimit/2
	// TenantRateLimit (tenant_rate_limit) is a tenant's ceiling, far above
	// a normal tenant's load; 25 × RateLimit.
	TenantRateLimit float64
	// CallbackRateLimit (callback_rate_limit) bounds the notifications one
	// subscription's callback URL may bring per second (bursts of twice
	// it); beyond it Exchange is answered 503 and retries.
	// DefaultCallbackRateLimit.
	CallbackRateLimit float64
	// NotificationsInFlight (notifications_in_flight) bounds the callbacks
	// one node works on at once; beyond it Exchange is answered 503 and
	// retries, so a burst cannot grow memory without bound.
	// DefaultNotificationsInFlight.
	NotificationsInFlight int
	// ClientIP is the request's client address, the key of RateLimit; nil
	// or an empty answer: the host of r.RemoteAddr. Behind proxies the
	// host passes the address it trusts.
	ClientIP func(*http.Request) string
	// KeyPairTTL (key_pair_ttl) is how long a key pair handed out by
	// publickey stays usable unless a registration uses it;
	// DefaultKeyPairTTL.
	KeyPairTTL time.Duration
	// KeyPairsPerTenant (key_pairs_per_tenant) bounds a tenant's
	// unexpired, unused key pairs; DefaultKeyPairsPerTenant.
	KeyPairsPerTenant int
	// KeyPairsPerAddress (key_pairs_per_address) bounds those of one
	// client address of a tenant, so that one app cannot hold the tenant's
	// whole share; DefaultKeyPairsPerAddress.
	KeyPairsPerAddress int

	// Compliance is the EWS proxy's view of devices; nil: every device may
	// be notified. Blocked, wiped and non-compliant devices get no pushes.
	Compliance DeviceCompliance
	// ProxySecret signs the list of devices ENS will notify on every EWS
	// call, so an ENSGate EWS proxy in front of Exchange can check them;
	// empty: no list is sent.
	ProxySecret []byte
	// AdminToken guards the admin API; empty: no admin API.
	AdminToken string
}

// Defaults for Config.
const (
	DefaultKeyPoolSize     = 20
	DefaultStatusFrequency = 15 * time.Minute
	DefaultRateLimit       = 20
	DefaultEWSTimeout      = 20 * time.Second
	DefaultEWSConcurrency  = 16
	// Exchange sends a subscription's notifications one at a time, each
	// answered after its pushes: a few a second at most, even catching up.
	DefaultCallbackRateLimit = 10
	// Each notification in flight holds one EWS slot at most and a few
	// kilobytes; 256 keeps a node's memory small and its EWS bulkheads
	// (16 per endpoint) busy.
	DefaultNotificationsInFlight = 256

	// A device asks for a key and registers within seconds; 10 minutes
	// covers a user typing a password. 100 unused pairs at once is more
	// than a tenant's devices onboarding together need, and 10 more than
	// the devices behind one address (an office's NAT) do: a registration
	// frees its pair at once.
	DefaultKeyPairTTL         = 10 * time.Minute
	DefaultKeyPairsPerTenant  = 100
	DefaultKeyPairsPerAddress = 10

	// MaxKeyPoolSize bounds key_pool_size: the pool is refilled by one
	// node at a time, and more pairs than this only cost start-up time.
	MaxKeyPoolSize = 10_000
)

// keyBits is the size of device RSA keys.
const keyBits = 2048

// Validate reports every problem of cfg's settings at once, each naming
// the setting and the values it takes. Zero takes the default; negative
// values are errors. The collaborators (Store, Push, the keys) are New's
// to check.
func (cfg Config) Validate() error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf("ens: "+format, args...)) }
	if cfg.KeyPoolSize < 0 || cfg.KeyPoolSize > MaxKeyPoolSize {
		fail("key_pool_size must be 1 to %d, or 0 for the default (got %d)", MaxKeyPoolSize, cfg.KeyPoolSize)
	}
	if sf := cfg.StatusFrequency; sf != 0 && (sf%time.Minute != 0 || sf < ews.MinStatusFrequency*time.Minute || sf > ews.MaxStatusFrequency*time.Minute) {
		fail("status_frequency must be whole minutes from 1m to 24h (got %s)", sf)
	}
	for _, r := range []struct {
		name string
		v    float64
	}{{"rate_limit", cfg.RateLimit}, {"device_rate_limit", cfg.DeviceRateLimit}, {"tenant_rate_limit", cfg.TenantRateLimit}, {"callback_rate_limit", cfg.CallbackRateLimit}} {
		if r.v < 0 || math.IsNaN(r.v) || math.IsInf(r.v, 0) {
			fail("%s must be a positive number (requests per second; 0 takes the default)", r.name)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"key_pairs_per_tenant", cfg.KeyPairsPerTenant}, {"key_pairs_per_address", cfg.KeyPairsPerAddress}, {"ews_concurrency", cfg.EWSConcurrency},
		{"notifications_in_flight", cfg.NotificationsInFlight}} {
		if n.v < 0 {
			fail("%s must be positive (got %d; 0 takes the default)", n.name, n.v)
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"key_pair_ttl", cfg.KeyPairTTL}, {"ews_timeout", cfg.EWSTimeout}} {
		if d.v < 0 {
			fail("%s must be positive (got %s; 0 takes the default)", d.name, d.v)
		}
	}
	return errors.Join(errs...)
}

// Service is ENS: the device API, the webhook and the background workers.
type Service struct {
	cfg   Config
	store *store.Store
	keys  *seal.Keyring
	push  push.Sender
	log   *slog.Logger

	tenants   tenantCache
	limits    rateLimits
	endpoints endpointCache
	// adminFailures counts failed admin logins per client address.
	adminFailures loginFailures

	jobs     *river.Client[pgx.Tx] // jobs.go
	hurried  atomic.Int64          // when push jobs were last made due (UnixNano)
	inFlight chan struct{}         // a slot per notification being handled
	// Graph (graph.go): a client per root, the mailboxes' Retry-After, and
	// the work that runs after Graph was answered (graph_work.go), which
	// Stop waits for.
	graphClients  sync.Map
	graphThrottle mailboxThrottle
	graphWork     graphWork
	background    sync.WaitGroup
	// backgroundCtx ends the background work stopGrace into Stop.
	backgroundCtx    context.Context
	cancelBackground context.CancelFunc
	running          atomic.Bool // between Start and Stop
	stop             context.CancelFunc
	workers          sync.WaitGroup
}

// New validates cfg and builds the service; Start runs its workers.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.PublicURL == nil || cfg.Push == nil {
		return nil, errors.New("ens: Store, PublicURL and Push are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	keys, err := seal.NewKeyring(cfg.MasterKey, cfg.AcceptedMasterKeys...)
	if err != nil {
		return nil, err
	}
	cfg.KeyPoolSize = cmp.Or(cfg.KeyPoolSize, DefaultKeyPoolSize)
	cfg.StatusFrequency = cmp.Or(cfg.StatusFrequency, DefaultStatusFrequency)
	cfg.RateLimit = cmp.Or(cfg.RateLimit, DefaultRateLimit)
	cfg.DeviceRateLimit = cmp.Or(cfg.DeviceRateLimit, cfg.RateLimit/2)
	cfg.TenantRateLimit = cmp.Or(cfg.TenantRateLimit, 25*cfg.RateLimit)
	cfg.CallbackRateLimit = cmp.Or(cfg.CallbackRateLimit, DefaultCallbackRateLimit)
	cfg.NotificationsInFlight = cmp.Or(cfg.NotificationsInFlight, DefaultNotificationsInFlight)
	cfg.KeyPairTTL = cmp.Or(cfg.KeyPairTTL, DefaultKeyPairTTL)
	cfg.KeyPairsPerTenant = cmp.Or(cfg.KeyPairsPerTenant, DefaultKeyPairsPerTenant)
	cfg.KeyPairsPerAddress = cmp.Or(cfg.KeyPairsPerAddress, DefaultKeyPairsPerAddress)
	if cfg.ClientIP == nil {
		cfg.ClientIP = remoteHost
	}
	cfg.EWSTimeout = cmp.Or(cfg.EWSTimeout, DefaultEWSTimeout)
	cfg.EWSConcurrency = cmp.Or(cfg.EWSConcurrency, DefaultEWSConcurrency)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		cfg:      cfg,
		store:    cfg.Store,
		keys:     keys,
		push:     cfg.Push,
		log:      cfg.Logger,
		tenants:  tenantCache{entries: map[[sha256.Size]byte]cachedTenant{}},
		limits:   newRateLimits(cfg),
		inFlight: make(chan struct{}, cfg.NotificationsInFlight),
	}
	s.backgroundCtx, s.cancelBackground = context.WithCancel(context.Background())
	s.graphWork = graphWork{tasks: map[int64]*graphTask{}, slots: make(chan struct{}, cfg.NotificationsInFlight)}
	if s.jobs, err = newJobs(s); err != nil {
		return nil, fmt.Errorf("ens: jobs: %w", err)
	}
	return s, nil
}

// Start runs the background workers until Stop: the job workers
// (jobs.go), the figures of this node's metrics and the listener for EWS
// endpoint changes. Several nodes, and two config generations during a
// reload, run them at once: each job runs once.
func (s *Service) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		// River's start needs the database; a node may start before it.
		for {
			err := s.jobs.Start(context.Background())
			if err == nil {
				s.running.Store(true)
				return
			}
			s.log.Warn("starting the job workers; retrying", slog.Any("error", err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(2 * time.Second):
			}
		}
	}()
	s.every(ctx, 15*time.Second, s.countForMetrics)
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		s.store.ListenEndpoints(ctx, s.endpoints.reset, s.endpoints.forget, func(err error) {
			s.endpoints.reset() // changes go unseen until the listener is back
			s.log.Warn("listening for EWS endpoint changes; retrying", slog.Any("error", err))
		})
	}()
}

// stopGrace is how long Stop lets running jobs finish; the ones still
// running then are cancelled and retried, by another node or generation.
const stopGrace = 10 * time.Second

// Stop ends the workers and waits for them: running jobs finish within
// stopGrace or are handed back to the queue.
func (s *Service) Stop() {
	s.running.Store(false)
	if s.stop != nil {
		s.stop()
	}
	s.workers.Wait()
	// Work after Graph was answered gets stopGrace too; what is cut short
	// is its fallback job's (on another node, or the next generation).
	waited := make(chan struct{})
	go func() { s.background.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(stopGrace):
		s.cancelBackground()
		<-waited
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
	defer cancel()
	if err := s.jobs.Stop(ctx); err != nil {
		hard, cancel := context.WithTimeout(context.Background(), stopGrace)
		defer cancel()
		if err := s.jobs.StopAndCancel(hard); err != nil {
			s.log.Warn("stopping the job workers", slog.Any("error", err))
		}
	}
}

// statusMinutes is StatusFrequency as the database and EWS keep it.
func (s *Service) statusMinutes() int { return int(s.cfg.StatusFrequency / time.Minute) }

// every runs work at once, then at each tick, until ctx ends.
func (s *Service) every(ctx context.Context, interval time.Duration, work func(context.Context)) {
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for {
			work(ctx)
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
		}
	}()
}

// countForMetrics sets the gauges that count what is in the database:
// subscriptions by state, free key pairs and jobs by kind and state.
func (s *Service) countForMetrics(ctx context.Context) {
	if counts, err := s.store.SubscriptionCounts(ctx); err == nil {
		for state, n := range counts {
			subscriptionsByState.WithLabelValues(state).Set(float64(n))
		}
	}
	if free, err := s.store.FreeKeyPairs(ctx, s.keys.IDs()); err == nil {
		keyPoolFree.Set(float64(free))
	}
	if counts, err := s.store.JobCounts(ctx); err == nil {
		jobsWaiting.Reset()
		for _, c := range counts {
			jobsWaiting.WithLabelValues(c.Kind, c.State).Set(float64(c.Count))
		}
	}
}

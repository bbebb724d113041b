// Package graphsim is a Microsoft Graph simulator for tests, local runs and
// benchmarks: the Microsoft identity platform's token endpoint (refresh
// tokens that rotate, invalid_grant when revoked), the few Graph v1.0 mail
// calls a notification service makes (/me, the Inbox folder, messages with
// $select, delta queries with paging), and Graph change notifications on
// the Inbox: subscriptions with the validation handshake on both URLs,
// webhook delivery with retries for up to 4 hours, lifecycle notifications
// (reauthorizationRequired, subscriptionRemoved, missed), and Outlook's
// throttling (4 concurrent requests, 10,000 requests per 10 minutes per app
// and mailbox) with 429 and Retry-After. Time runs on a sim clock that can
// be sped up or frozen and advanced, so an hour of token lifetime passes in
// milliseconds.
//
// It is written from Microsoft's documentation, not from ENSGate's own
// client (the files named are in microsoftgraph/microsoft-graph-docs-contrib
// and MicrosoftDocs/azure-docs):
//
//   - api-reference/v1.0/api/subscription-post-subscriptions.md,
//     subscription-update.md, subscription-delete.md, resources/subscription.md
//   - concepts/change-notifications-delivery-webhooks.md (3 s, 4 hours,
//     slow endpoints), change-notifications-lifecycle-events.md,
//     includes/change-notifications-delivery-notificationurl-validation.md
//   - api/message-delta.md, concepts/delta-query-messages.md
//   - concepts/throttling-limits.md (Outlook service limits)
//   - the identity platform's v2-oauth2-auth-code-flow.md and
//     refresh-tokens.md
//
// The simulator never logs tokens, addresses, subjects, previews or
// clientState values.
package graphsim

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// ControlPrefix is the root of the JSON control API.
const ControlPrefix = "/_sim/"

// Documented limits and defaults (see the package comment for sources).
const (
	// MaxExpiration is the longest an Outlook message subscription without
	// resource data may live: 10,080 minutes (under 7 days).
	MaxExpiration = 10080 * time.Minute
	// MaxClientState is the longest clientState Graph accepts.
	MaxClientState = 128
	// MaxSubscriptionsPerMailbox is Outlook's limit of active subscriptions
	// per mailbox, for all applications together.
	MaxSubscriptionsPerMailbox = 1000
	// ValidationTimeout is how long Graph waits for the validation answer.
	ValidationTimeout = 10 * time.Second
	// DeliveryTimeout is the timeout of Graph's notification HTTP client.
	DeliveryTimeout = 3 * time.Second
	// SlowResponse: a notification answered later than this is "slow".
	SlowResponse = 2900 * time.Millisecond
	// RetryWindow is how long Graph keeps retrying a notification.
	RetryWindow = 4 * time.Hour
	// MailboxConcurrency is Outlook's limit of concurrent requests per app
	// (and mailbox).
	MailboxConcurrency = 4
	// RateLimit requests per RateWindow per app and mailbox.
	RateLimit  = 10000
	RateWindow = 10 * time.Minute
	// AccessTokenLifetime is the default lifetime of access tokens.
	AccessTokenLifetime = time.Hour
	// RefreshTokenLifetime is the default (inactivity) lifetime of refresh
	// tokens.
	RefreshTokenLifetime = 90 * 24 * time.Hour
)

// Config configures a Server. The zero value is usable.
type Config struct {
	// Users are created at start; New panics if one is invalid.
	Users []User
	// VerifiedDomains are the directory's verified domains (/organization);
	// empty: the domains of its users' addresses.
	VerifiedDomains []string
	// Clients are the registered application (client) ids; a token
	// request from any other gets unauthorized_client (AADSTS700016).
	// Empty: DefaultClientID only.
	Clients []string
	// TenantID is the directory's id, in tokens and notifications
	// (tenantId); empty: a fixed test GUID.
	TenantID string

	// Start is the sim clock's initial time; zero: now.
	Start time.Time
	// ClockScale is the wall-clock length of one simulated minute; zero:
	// real time. Ignored when FrozenClock is set.
	ClockScale time.Duration
	// FrozenClock stops the sim clock: it moves only by Advance.
	FrozenClock bool

	// AllowHTTP accepts http:// notification and lifecycle URLs (Graph
	// requires https).
	AllowHTTP bool
	// StrictRefreshRotation makes a refresh token invalid once it has been
	// redeemed. Microsoft does not do this (old refresh tokens stay valid
	// until they expire or are revoked); it is for checking that a client
	// stores the new token each time.
	StrictRefreshRotation bool
	// AccessTokenLifetime; zero: one hour (expires_in 3600).
	AccessTokenLifetime time.Duration
	// RefreshTokenLifetime, counted from the token's issue; zero: 90 days.
	RefreshTokenLifetime time.Duration

	// MaxSubscriptionsPerMailbox; zero: 1000.
	MaxSubscriptionsPerMailbox int
	// ReauthLead is how long before a subscription's authorization (the
	// access token it was created, renewed or reauthorized with) or the
	// subscription itself expires that reauthorizationRequired is sent,
	// and the interval at which it is repeated until the app acts; zero:
	// 15 minutes.
	ReauthLead time.Duration
	// ReauthGrace is how long change notifications keep flowing after a
	// subscription's authorization expired before they pause (and are
	// lost) until the app reauthorizes; zero: 15 minutes.
	ReauthGrace time.Duration

	// ValidationTimeout (wall clock); zero: 10 s.
	ValidationTimeout time.Duration
	// DeliveryTimeout (wall clock); zero: 3 s.
	DeliveryTimeout time.Duration
	// SlowResponse (wall clock); zero: 2.9 s.
	SlowResponse time.Duration
	// SlowSample is the number of notifications after which an endpoint's
	// share of slow answers is evaluated; zero: 100.
	SlowSample int
	// FirstRetry is the sim-clock wait before the first retry of a failed
	// notification POST; each further wait doubles, up to MaxRetryDelay.
	// Zero: 1 minute.
	FirstRetry time.Duration
	// MaxRetryDelay; zero: 10 minutes.
	MaxRetryDelay time.Duration
	// RetryWindow; zero: 4 hours.
	RetryWindow time.Duration
	// MaxBatch bounds the notifications sent in one POST; zero: 20.
	MaxBatch int

	// MailboxConcurrency; zero: 4.
	MailboxConcurrency int
	// RateLimit requests per RateWindow; zero: 10,000 per 10 minutes.
	RateLimit  int
	RateWindow time.Duration
	// DefaultPageSize of delta and list responses without
	// Prefer: odata.maxpagesize; zero: 10.
	DefaultPageSize int

	// ControlToken, if set, must be sent as X-Sim-Token on control API
	// requests.
	ControlToken string
	// NotifyClient sends validation requests and notifications; nil: a
	// client that does not follow redirects (timeouts are applied per
	// request).
	NotifyClient *http.Client
	// Logger receives operation-level logs, never tokens, addresses,
	// subjects or clientState; nil: discard.
	Logger *slog.Logger
}

// DefaultClientID is the client id registered when Config.Clients is empty.
const DefaultClientID = "00000000-0000-4000-8000-00000000c11e"

const defaultTenantID = "00000000-0000-4000-8000-00000000a11d"

// Errors the Go API returns.
var (
	ErrNoSuchUser         = errors.New("graphsim: no such user")
	ErrUserExists         = errors.New("graphsim: user exists")
	ErrNoSuchMessage      = errors.New("graphsim: no such message")
	ErrNoSuchSubscription = errors.New("graphsim: no such subscription")
	ErrUnknownClient      = errors.New("graphsim: unknown client id")
)

// Server is the simulator. It is an http.Handler serving the token
// endpoint (/{tenant}/oauth2/v2.0/token), Graph (/v1.0/...) and the
// control API (/_sim/...).
type Server struct {
	cfg    Config
	clock  *clock
	log    *slog.Logger
	client *http.Client
	tenant string

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu        sync.Mutex
	clients   map[string]bool
	users     map[string]*mailbox // by lower-case address
	usersByID map[string]*mailbox // by object id
	refresh   map[string]*refreshToken
	access    map[string]*accessToken
	subs      map[string]*subscription
	endpoints map[endpointKey]*endpoint
	faults    []*Fault
	faultSeq  int
	limits    map[limitKey]*limiter
	closed    bool

	control *http.ServeMux

	stats counters
}

// New returns a simulator; call Close to stop its clock and deliveries.
func New(cfg Config) *Server {
	if cfg.AccessTokenLifetime <= 0 {
		cfg.AccessTokenLifetime = AccessTokenLifetime
	}
	if cfg.RefreshTokenLifetime <= 0 {
		cfg.RefreshTokenLifetime = RefreshTokenLifetime
	}
	if cfg.MaxSubscriptionsPerMailbox <= 0 {
		cfg.MaxSubscriptionsPerMailbox = MaxSubscriptionsPerMailbox
	}
	if cfg.ReauthLead <= 0 {
		cfg.ReauthLead = 15 * time.Minute
	}
	if cfg.ReauthGrace <= 0 {
		cfg.ReauthGrace = 15 * time.Minute
	}
	if cfg.ValidationTimeout <= 0 {
		cfg.ValidationTimeout = ValidationTimeout
	}
	if cfg.DeliveryTimeout <= 0 {
		cfg.DeliveryTimeout = DeliveryTimeout
	}
	if cfg.SlowResponse <= 0 {
		cfg.SlowResponse = SlowResponse
	}
	if cfg.SlowSample <= 0 {
		cfg.SlowSample = 100
	}
	if cfg.FirstRetry <= 0 {
		cfg.FirstRetry = time.Minute
	}
	if cfg.MaxRetryDelay <= 0 {
		cfg.MaxRetryDelay = 10 * time.Minute
	}
	if cfg.RetryWindow <= 0 {
		cfg.RetryWindow = RetryWindow
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 20
	}
	if cfg.MailboxConcurrency <= 0 {
		cfg.MailboxConcurrency = MailboxConcurrency
	}
	if cfg.RateLimit <= 0 {
		cfg.RateLimit = RateLimit
	}
	if cfg.RateWindow <= 0 {
		cfg.RateWindow = RateWindow
	}
	if cfg.DefaultPageSize <= 0 {
		cfg.DefaultPageSize = 10
	}
	perWall := 1.0
	switch {
	case cfg.FrozenClock:
		perWall = 0
	case cfg.ClockScale > 0:
		perWall = float64(time.Minute) / float64(cfg.ClockScale)
	}
	s := &Server{
		cfg:       cfg,
		clock:     newClock(cfg.Start, perWall),
		log:       cfg.Logger,
		client:    cfg.NotifyClient,
		tenant:    cfg.TenantID,
		clients:   map[string]bool{},
		users:     map[string]*mailbox{},
		usersByID: map[string]*mailbox{},
		refresh:   map[string]*refreshToken{},
		access:    map[string]*accessToken{},
		subs:      map[string]*subscription{},
		endpoints: map[endpointKey]*endpoint{},
		limits:    map[limitKey]*limiter{},
	}
	s.stats.c = newCounters()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.client == nil {
		s.client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if s.tenant == "" {
		s.tenant = defaultTenantID
	}
	if len(cfg.Clients) == 0 {
		s.clients[DefaultClientID] = true
	}
	for _, c := range cfg.Clients {
		s.clients[strings.ToLower(c)] = true
	}
	s.control = s.controlMux()
	for _, u := range cfg.Users {
		if _, err := s.AddUser(u); err != nil {
			panic(fmt.Sprintf("graphsim.New: %v", err))
		}
	}
	return s
}

// ServeHTTP routes token, Graph and control requests; anything else is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, ControlPrefix):
		s.serveControl(w, r)
	case strings.HasPrefix(p, "/v1.0/"):
		s.serveGraph(w, r)
	case strings.HasSuffix(p, "/oauth2/v2.0/token") && strings.Count(p, "/") == 4:
		s.serveToken(w, r)
	default:
		graphError(w, http.StatusNotFound, "BadRequest", "Resource not found for the segment '"+firstSegment(p)+"'.")
	}
}

func firstSegment(p string) string {
	p = strings.TrimPrefix(p, "/")
	seg, _, _ := strings.Cut(p, "/")
	return seg
}

// Now is the sim clock's time.
func (s *Server) Now() time.Time { return s.clock.Now() }

// Advance moves the sim clock forward by d, firing on the way (each at its
// time) every expiry, retry and lifecycle event due, and waiting for the
// notification POSTs they start.
func (s *Server) Advance(d time.Duration) { s.clock.Advance(d) }

// Settle waits until no notification POST or validation is in flight.
func (s *Server) Settle() { s.clock.waitIdle() }

// TenantID is the directory id the simulator reports.
func (s *Server) TenantID() string { return s.tenant }

// Close stops the clock, cancels notification POSTs in flight and waits
// for them. Requests still get answers, but no notification is sent.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.clock.close()
	s.clock.waitIdle()
}

// randomID returns n random bytes in base64url.
func randomID(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// newGUID returns a random version-4 GUID in its usual lower-case form.
func newGUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// graphTime formats t as Graph does (UTC, seven fractional digits for
// subscriptions; seconds for message times: the caller chooses).
func graphTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05Z") }

func subTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.0000000Z") }

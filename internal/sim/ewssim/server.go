// Package ewssim is an Exchange Web Services simulator for tests, local
// runs and benchmarks: in-memory mailboxes behind EWS (Subscribe with push
// notifications, GetItem, GetFolder, FindItem), IIS-like authentication (Basic,
// Bearer, Negotiate/Kerberos), fault injection, a compressible clock for
// Exchange's timers, and a JSON control API under /_sim/ mirroring the Go
// methods. It is written from the EWS schema and sample messages, not from
// ENSGate's own client, so it checks that client independently.
package ewssim

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/service"
)

// EWSPath is where Exchange serves EWS; matched case-insensitively.
const EWSPath = "/EWS/Exchange.asmx"

// ControlPrefix is the root of the control API, outside any EWS path.
const ControlPrefix = "/_sim/"

// Config configures a Server. The zero value is usable.
type Config struct {
	// Users are created at start; New panics if one is invalid.
	Users []User
	// ClockScale is the wall-clock length of one Exchange minute, for
	// status pings, callback retries and the drop window. Zero: real time.
	ClockScale time.Duration
	// Realm is the Basic realm in 401 challenges; empty: the request host.
	Realm string
	// ControlToken, if set, must be sent as the X-Sim-Token header on
	// every control API request.
	ControlToken string
	// Keytab enables Negotiate (Kerberos) authentication.
	Keytab *keytab.Keytab
	// SPN selects the keytab principal to decrypt tickets with (e.g.
	// HTTP/mail.example.com); empty: the ticket's own service name.
	SPN string
	// ClientCAs enables certificate-based authentication on a TLS server
	// (StartTLS): a client certificate signed by one of these authenticates
	// the mailbox named by its e-mail address (rfc822Name), else its CN.
	ClientCAs *x509.CertPool
	// PersistKerberos keeps a Kerberos login for the rest of its TCP
	// connection, as IIS does with authPersistNonNTLM: a later request on
	// the connection without credentials is that user's. Needs the
	// http.Server's ConnContext set to ConnContext (TestServer does).
	PersistKerberos bool
	// PrincipalMap maps Kerberos principals (user@REALM, any case) to
	// mailbox addresses; unmapped principals are taken as the address.
	PrincipalMap map[string]string
	// TokenAuthority, if set, vouches for bearer tokens the simulator did
	// not assign itself (SetToken): it returns the token's mailbox, as
	// Exchange trusts the tokens its identity provider issues.
	TokenAuthority func(token string) (address string, ok bool)
	// MaxBodyBytes bounds EWS request bodies; zero: 1 MiB.
	MaxBodyBytes int64
	// MaxSubscriptions is the per-user cap on active push subscriptions
	// (ErrorExceededSubscriptionCount beyond it); zero: 20, as Exchange.
	MaxSubscriptions int
	// PushClient sends notifications; nil: a client with a 30 s timeout
	// that does not follow redirects (Exchange treats them as failures).
	PushClient *http.Client
	// Logger receives operation-level logs, never addresses, secrets or
	// callback URLs; nil: discard.
	Logger *slog.Logger
}

// Server is the simulator; it is an http.Handler serving EWS at EWSPath
// (and any case of it) and the control API under ControlPrefix.
type Server struct {
	clock      clock
	log        *slog.Logger
	realm      string
	ctlToken   string
	maxBody    int64
	maxSubs    int
	push       *http.Client
	krb        *service.Settings
	principals map[string]string
	control    *http.ServeMux
	// persistKerberos: Config.PersistKerberos
	persistKerberos bool
	tokenAuthority  func(string) (string, bool) // Config.TokenAuthority

	ctx    context.Context // cancelled by Close, aborting notification POSTs
	cancel context.CancelFunc
	wg     sync.WaitGroup // running deliveries

	mu       sync.Mutex
	users    map[string]*mailbox // by lower-case address
	tokens   map[string]string   // bearer token → address
	subs     []*subscription     // every subscription, oldest first
	faults   []*Fault
	faultSeq int
	closed   bool

	stats counters
}

// New returns a simulator configured by cfg. Call Close to stop its timers
// and notification deliveries.
func New(cfg Config) *Server {
	s := &Server{
		clock:           clock{perMinute: cfg.ClockScale},
		log:             cfg.Logger,
		realm:           cfg.Realm,
		ctlToken:        cfg.ControlToken,
		maxBody:         cfg.MaxBodyBytes,
		maxSubs:         cfg.MaxSubscriptions,
		persistKerberos: cfg.PersistKerberos,
		tokenAuthority:  cfg.TokenAuthority,
		push:            cfg.PushClient,
		principals:      map[string]string{},
		users:           map[string]*mailbox{},
		tokens:          map[string]string{},
	}
	s.stats.c = newCounters()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.maxBody <= 0 {
		s.maxBody = 1 << 20
	}
	if s.maxSubs <= 0 {
		s.maxSubs = 20
	}
	if s.push == nil {
		s.push = &http.Client{
			Timeout:       30 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if cfg.Keytab != nil {
		// No PAC decoding: the simulator needs only the client's name.
		opts := []func(*service.Settings){service.DecodePAC(false)}
		if cfg.SPN != "" {
			opts = append(opts, service.KeytabPrincipal(cfg.SPN))
		}
		s.krb = service.NewSettings(cfg.Keytab, opts...)
	}
	for p, addr := range cfg.PrincipalMap {
		s.principals[strings.ToLower(p)] = normAddr(addr)
	}
	for _, u := range cfg.Users {
		if err := s.AddUser(u); err != nil {
			panic(fmt.Sprintf("ewssim.New: %v", err))
		}
	}
	s.control = s.controlMux()
	return s
}

// ServeHTTP routes EWS and control API requests; anything else is 404.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case strings.EqualFold(p, EWSPath):
		s.serveEWS(w, r)
	case strings.HasPrefix(p, ControlPrefix):
		s.control.ServeHTTP(w, r)
	default:
		http.NotFound(w, r)
	}
}

// Close ends every subscription (state "closed"), cancels notification
// POSTs in flight and waits for them. EWS requests still work afterwards,
// but Subscribe fails.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	subs := s.subs
	s.mu.Unlock()
	for _, sub := range subs {
		sub.mu.Lock()
		if sub.state == StateActive {
			sub.endLocked(StateClosed)
		}
		sub.mu.Unlock()
	}
	s.cancel()
	s.wg.Wait()
}

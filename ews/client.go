package ews

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Client defaults.
const (
	DefaultTimeout               = 60 * time.Second
	DefaultDialTimeout           = 10 * time.Second
	DefaultTLSHandshakeTimeout   = 10 * time.Second
	DefaultResponseHeaderTimeout = 30 * time.Second
	DefaultUserAgent             = "ENSGate"
)

// Back-off caps, so that a bogus answer cannot wedge a long-lived Client.
const (
	// maxBackOff caps ErrorServerBusy's BackOffMilliseconds, which stops
	// one credential's calls, and the Retry-After reported in an HTTPError.
	maxBackOff = time.Hour
	// maxEndpointBackOff caps how long an HTTP Retry-After (a 503 or 429
	// from the server or a load balancer in front of it) stops every call
	// to the endpoint: it speaks for the server, not one user, so it must
	// not let one answer silence every mailbox for long.
	maxEndpointBackOff = 30 * time.Second
)

// Config configures a Client for one EWS endpoint. Only URL is required.
type Config struct {
	URL string // e.g. https://mail.example.com/EWS/Exchange.asmx

	// Pin, if set, requires the server's leaf certificate to match, in
	// addition to normal chain verification. It is checked during the TLS
	// handshake, before any request (or credential) is sent.
	Pin Fingerprint
	// RootCAs replaces the system roots when set.
	RootCAs *x509.CertPool
	// Certificate is presented whenever the server asks for a client
	// certificate (certificate-based auth). It belongs to the connections,
	// so a Client with a Certificate serves that one credential.
	Certificate *tls.Certificate
	// BackOff, if set, holds the back-offs of this Client, shared with
	// every other Client given the same one: give every Client made for an
	// endpoint the endpoint's BackOff, so that a back-off outlives a
	// short-lived certificate Client. Nil: the Client keeps its own.
	BackOff *BackOff

	ServerVersion   string // RequestServerVersion; DefaultServerVersion if empty
	UserAgent       string // DefaultUserAgent if empty
	MaxResponseSize int64  // DefaultMaxResponseSize if zero

	Timeout               time.Duration // whole call, unless ctx ends sooner; DefaultTimeout if zero
	DialTimeout           time.Duration // DefaultDialTimeout if zero
	TLSHandshakeTimeout   time.Duration // DefaultTLSHandshakeTimeout if zero
	ResponseHeaderTimeout time.Duration // DefaultResponseHeaderTimeout if zero
}

// Client calls one EWS endpoint on behalf of any number of mailboxes; each
// call names its Account. It keeps connections alive across calls and is
// safe for concurrent use. Create one per endpoint and keep it; for
// certificate-based auth, one per certificate, which may be short-lived if
// it is given the endpoint's BackOff.
//
// Retries: the Client does not retry failed calls. The one exception is
// safe by construction: GetItem and GetInbox change nothing, so they are
// marked idempotent, and net/http may then replay one once when a
// kept-alive connection turns out to have been closed by the server before
// it answered. Subscribe is never replayed: a duplicate would leave a
// second live subscription behind.
//
// Back-off: while one is running the Client refuses the calls it covers
// with a *ThrottledError, without touching the network, so that a busy
// answer cannot turn into a retry storm. Exchange throttles per user, so
// ErrorServerBusy with BackOffMilliseconds (at most an hour is honoured)
// stops only the calls with the same credential: the same mailbox and
// Basic username or bearer token (or, on a certificate Client, the same
// mailbox and certificate). Other users of the endpoint go on. An HTTP
// error with Retry-After, such as a 503 from a server or load balancer that
// cannot serve anyone, stops every call to the endpoint, but for at most 30
// seconds. Credentials are remembered only as SHA-256 hashes, and only
// while their back-off runs. Clients given one Config.BackOff share all of
// this.
type Client struct {
	url         string
	version     string
	userAgent   string
	maxSize     int64
	timeout     time.Duration
	http        *http.Client
	certificate string // SHA-256 of Config.Certificate's leaf; "" without one
	backOff     *BackOff
	now         func() time.Time // replaced in tests
}

// BackOff is the back-off state of one EWS endpoint: the endpoint's own,
// from an HTTP Retry-After, and each credential's, from ErrorServerBusy.
// The zero value is ready to use; it is safe for concurrent use, and its
// memory follows the back-offs running, not every credential ever seen.
type BackOff struct {
	mu          sync.Mutex
	endpoint    throttle                // from an HTTP Retry-After
	credentials map[credential]throttle // from ErrorServerBusy; expired ones are dropped
	sweepAt     int                     // len(credentials) at which expired entries are next dropped; 0: minSweep
}

// throttle is a running back-off and the answer that started it.
type throttle struct {
	until time.Time
	cause error
}

// credential identifies whom Exchange throttles: a SHA-256 over the
// mailbox and the authenticating identity, so no secret is kept.
type credential [sha256.Size]byte

// minSweep is the smallest number of remembered credentials at which
// expired ones are dropped.
const minSweep = 64

// NewClient returns a Client for cfg.URL.
func NewClient(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, errors.New("ews: endpoint URL must be an absolute http or https URL")
	}
	if u.Scheme != "https" && (!cfg.Pin.IsZero() || cfg.Certificate != nil) {
		return nil, errors.New("ews: a pin or client certificate needs an https endpoint")
	}
	c := &Client{
		url:       u.String(),
		version:   cmp.Or(cfg.ServerVersion, DefaultServerVersion),
		userAgent: cmp.Or(cfg.UserAgent, DefaultUserAgent),
		maxSize:   cmp.Or(cfg.MaxResponseSize, DefaultMaxResponseSize),
		timeout:   cmp.Or(cfg.Timeout, DefaultTimeout),
		backOff:   cfg.BackOff,
		now:       time.Now,
	}
	if c.backOff == nil {
		c.backOff = &BackOff{}
	}
	if err := checkVersion(c.version); err != nil {
		return nil, err
	}

	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: cfg.RootCAs}
	if !cfg.Pin.IsZero() {
		tlsConf.VerifyConnection = cfg.Pin.verifyConnection
	}
	if cert := cfg.Certificate; cert != nil {
		// GetClientCertificate rather than Certificates: Go would withhold
		// a certificate whose issuer is not in the server's acceptable-CA
		// list, and servers often send an incomplete list. Let the server
		// decide.
		tlsConf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
		if len(cert.Certificate) > 0 {
			sum := sha256.Sum256(cert.Certificate[0])
			c.certificate = string(sum[:])
		}
	}
	transport := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   cmp.Or(cfg.DialTimeout, DefaultDialTimeout),
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:       tlsConf,
		TLSHandshakeTimeout:   cmp.Or(cfg.TLSHandshakeTimeout, DefaultTLSHandshakeTimeout),
		ResponseHeaderTimeout: cmp.Or(cfg.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
		ForceAttemptHTTP2:     true, // a custom TLSClientConfig turns it off otherwise
		// Many mailboxes share one endpoint; Go's default of 2 idle
		// connections per host would make most calls dial anew.
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		// Accept-Encoding is left to the transport, which then asks for
		// gzip and decompresses transparently.
	}
	c.http = &http.Client{
		Transport: transport,
		// The endpoint is an exact, admin-approved URL: a redirect would
		// carry the call (and on 307/308 its credentials) somewhere else.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// CloseIdleConnections closes kept-alive connections, e.g. when a
// certificate Client is retired.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// CallOption adjusts one call for what stands between the Client and
// Exchange, such as an ENSGate EWS proxy.
type CallOption func(*callOptions)

type callOptions struct {
	sign   func(r *http.Request, body []byte)
	header *http.Header
}

// WithRequestSigner has sign called with the call's request and its body
// just before it is sent, after every other header is set, to add headers
// bound to that request (attest.Attestation.Signer). Nil signs nothing.
func WithRequestSigner(sign func(r *http.Request, body []byte)) CallOption {
	return func(o *callOptions) { o.sign = sign }
}

// ResponseHeader stores the header of the call's answer in *h, whatever
// its status, e.g. for the devices an ENSGate EWS proxy accepted. *h is
// left alone when no answer comes: refused by a back-off, or a network
// error.
func ResponseHeader(h *http.Header) CallOption {
	return func(o *callOptions) { o.header = h }
}

// Subscribe creates a push subscription on acct's Inbox.
func (c *Client) Subscribe(ctx context.Context, acct Account, req SubscribeRequest, opts ...CallOption) (*Subscription, error) {
	body, err := BuildSubscribe(c.version, acct.Mailbox, req)
	if err != nil {
		return nil, err
	}
	return call(ctx, c, acct, body, false, ParseSubscribeResponse, opts)
}

// GetItem fetches the sender, subject, preview and received time of an item.
func (c *Client) GetItem(ctx context.Context, acct Account, id ItemID, opts ...CallOption) (*Item, error) {
	body, err := BuildGetItem(c.version, id)
	if err != nil {
		return nil, err
	}
	return call(ctx, c, acct, body, true, ParseGetItemResponse, opts)
}

// GetInbox fetches the Inbox's unread count.
func (c *Client) GetInbox(ctx context.Context, acct Account, opts ...CallOption) (*Folder, error) {
	body, err := BuildGetInbox(c.version, acct.Mailbox)
	if err != nil {
		return nil, err
	}
	return call(ctx, c, acct, body, true, ParseGetFolderResponse, opts)
}

// call posts body and parses the answer, applying and recording back-off.
func call[T any](ctx context.Context, c *Client, acct Account, body []byte, idempotent bool, parse func([]byte) (*T, error), opts []CallOption) (*T, error) {
	cred := credentialOf(acct, c.certificate)
	if err := c.backOff.throttled(cred, c.now()); err != nil {
		return nil, err
	}
	var o callOptions
	for _, opt := range opts {
		opt(&o)
	}
	v, err := roundTrip(ctx, c, acct, body, idempotent, parse, o)
	c.backOff.record(cred, err, c.now())
	return v, err
}

// credentialOf hashes whom a call authenticates as and for which mailbox:
// without Auth, the Client's certificate (the SHA-256 of its leaf), so that
// certificate Clients sharing a BackOff keep apart. A password is left
// out: a changed password is still the same user.
func credentialOf(acct Account, certificate string) credential {
	var id string
	switch a := acct.Auth.(type) {
	case BasicAuth:
		id = "basic\x00" + strings.ToLower(a.Username)
	case *BasicAuth:
		id = "basic\x00" + strings.ToLower(a.Username)
	case BearerAuth:
		id = "bearer\x00" + a.Token
	case *BearerAuth:
		id = "bearer\x00" + a.Token
	default: // nil: the Client's certificate
		id = "certificate\x00" + certificate
	}
	return sha256.Sum256([]byte(strings.ToLower(acct.Mailbox) + "\x00" + id))
}

func roundTrip[T any](ctx context.Context, c *Client, acct Account, body []byte, idempotent bool, parse func([]byte) (*T, error), o callOptions) (*T, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	req.Header.Set("Accept", "text/xml")
	req.Header.Set("User-Agent", c.userAgent)
	if acct.Mailbox != "" {
		req.Header.Set("X-AnchorMailbox", acct.Mailbox)
	}
	if acct.Auth != nil {
		acct.Auth.authorize(req)
	}
	if idempotent {
		// A nil value marks the request replayable without sending the
		// header (see net/http.Transport).
		req.Header["Idempotency-Key"] = nil
	}
	if o.sign != nil {
		o.sign(req, body)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if o.header != nil {
		*o.header = resp.Header.Clone()
	}

	switch resp.StatusCode {
	case http.StatusOK:
		data, err := readLimited(resp.Body, c.maxSize)
		if err != nil {
			return nil, err
		}
		return parse(data)
	case http.StatusInternalServerError:
		// EWS sends SOAP faults (ErrorServerBusy, schema errors) with 500.
		data, err := readLimited(resp.Body, c.maxSize)
		if err != nil {
			return nil, err
		}
		var re *ResponseError
		if _, err := parse(data); errors.As(err, &re) {
			return nil, re
		}
		return nil, &HTTPError{StatusCode: resp.StatusCode}
	}
	// Drain a little so the connection can be reused; error pages are small.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return nil, &HTTPError{StatusCode: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), c.now())}
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 if absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(min(s, int(maxBackOff/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// throttled returns a *ThrottledError while a back-off for the endpoint or
// for cred is running; the longer one is reported.
func (b *BackOff) throttled(cred credential, now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.endpoint
	if ct, ok := b.credentials[cred]; ok {
		if !ct.until.After(now) {
			delete(b.credentials, cred)
		} else if ct.until.After(t.until) {
			t = ct
		}
	}
	if left := t.until.Sub(now); left > 0 {
		return &ThrottledError{Remaining: left, Err: t.cause}
	}
	return nil
}

// record starts the back-off that err asks for, if any: for the credential
// on ErrorServerBusy, for the endpoint on an HTTP Retry-After. A back-off
// already running is never shortened.
func (b *BackOff) record(cred credential, err error, now time.Time) {
	var re *ResponseError
	var he *HTTPError
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case errors.As(err, &re) && re.BackOff > 0:
		until := now.Add(min(re.BackOff, maxBackOff))
		if b.credentials == nil {
			b.credentials = map[credential]throttle{}
		}
		if until.After(b.credentials[cred].until) {
			b.credentials[cred] = throttle{until, err}
		}
		if len(b.credentials) >= max(minSweep, b.sweepAt) {
			for k, t := range b.credentials {
				if !t.until.After(now) {
					delete(b.credentials, k)
				}
			}
			// Doubling keeps the sweeps' cost constant per back-off added.
			b.sweepAt = 2 * len(b.credentials)
		}
	case errors.As(err, &he) && he.RetryAfter > 0:
		until := now.Add(min(he.RetryAfter, maxEndpointBackOff))
		if until.After(b.endpoint.until) {
			b.endpoint = throttle{until, err}
		}
	}
}

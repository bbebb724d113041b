package ewsproxy

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/ensgate/ensgate/attest"
	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/store"
)

// Config is how a proxy route identifies devices and what it allows.
type Config struct {
	// TenantID owns direct device traffic on this route; 0: any tenant
	// (the most restrictive state across tenants applies).
	TenantID int64
	// FindTenant, if set, supplies TenantID at first use (a tenant named in
	// the configuration needs the database, which may be down when the
	// route is set up); until it succeeds, direct device traffic gets 503.
	FindTenant func(context.Context) (int64, error)
	// MaxRequestBody refuses larger request bodies with 413 before they
	// reach Exchange; 0: no limit.
	MaxRequestBody int64
	// DeviceHeader and DeviceQuery name where direct device traffic
	// carries its device id (header first).
	DeviceHeader string
	DeviceQuery  string
	// AllowUnknown lets devices without a compliance state through.
	AllowUnknown bool
	// RemoveUnsupportedAuth hides NTLM and Negotiate challenges and refuses
	// NTLM requests.
	RemoveUnsupportedAuth bool
	// Attestation verifies ENS's signed device lists; an empty secret
	// refuses them.
	Attestation attest.Attestation
	// Delegator, if set, does Kerberos for clients that present a
	// certificate (verified by the TLS layer): their Authorization is
	// replaced by the Negotiate header it returns, and Negotiate challenges
	// stay visible to them.
	Delegator Delegator
	// Realm is offered in the Basic challenge to NTLM clients; empty: the
	// request's host.
	Realm string
	// Annotate, if set, learns each request's EWS operation and the
	// decision, e.g. for the access log.
	Annotate func(r *http.Request, operation, decision string)
}

// Delegator turns a client certificate into an Authorization header for
// Exchange (Kerberos Constrained Delegation). Its errors may carry the HTTP
// status to answer with (an HTTPStatus() int method: 403 for a certificate
// that names no known user); otherwise the client gets 502.
type Delegator interface {
	Authorization(ctx context.Context, cert *x509.Certificate) (string, error)
}

// Guard enforces Config in front of an upstream.
type Guard struct {
	cfg        Config
	compliance *compliance.Cache
	log        *slog.Logger
	tenant     atomic.Int64 // TenantID once FindTenant has found it
}

// NewGuard returns a guard that judges devices by compliance.
func NewGuard(cfg Config, states *compliance.Cache, log *slog.Logger) *Guard {
	g := &Guard{cfg: cfg, compliance: states, log: log}
	g.tenant.Store(cfg.TenantID)
	return g
}

// Forward sends an allowed request to Exchange. connectionBound tells that
// the request authenticates with Kerberos (the proxy's delegated ticket or
// the client's own): such requests must not share upstream connections
// with others, since IIS may keep a Kerberos login for the rest of a
// connection (authPersistNonNTLM) and answer a later request without
// credentials on it as that user.
type Forward func(w http.ResponseWriter, r *http.Request, connectionBound bool) error

// Serve decides the request and, if allowed, calls forward (the reverse
// proxy) with the request cleaned of ENS's attestation and a response
// writer that applies the auth-header policy. Refused requests never reach
// forward.
func (g *Guard) Serve(w http.ResponseWriter, r *http.Request, forward Forward) error {
	// Path and size first: they need no body, and the operation is read
	// from a body that is already limited.
	var body *limitedBody
	decision := g.screen(w, r)
	op := ""
	kerberos := false
	if decision == "" {
		if g.cfg.MaxRequestBody > 0 && r.Body != nil && r.Body != http.NoBody {
			body = &limitedBody{ReadCloser: r.Body, left: g.cfg.MaxRequestBody}
			r.Body = body
		}
		op = Operation(r)
		decision, kerberos = g.decide(w, r, op)
	}
	requests.WithLabelValues(operationLabel(op), decision).Inc()
	if g.cfg.Annotate != nil {
		g.cfg.Annotate(r, op, decision)
	}
	if decision != "forwarded" {
		return nil
	}
	rw := &responseWriter{ResponseWriter: w, filter: g.cfg.RemoveUnsupportedAuth, kerberos: kerberos}
	err := forward(rw, r, kerberos || isNegotiate(r.Header))
	if err != nil && body != nil && body.exceeded && !rw.wroteHeader {
		// A chunked body ran over the limit while streaming: the upstream
		// request was cut off there.
		g.log.Info("EWS request refused: body too large", slog.String("operation", op))
		tooLarge(w, g.cfg.MaxRequestBody)
		return nil
	}
	return err
}

// screen refuses a request whose path leaves /EWS/ or whose declared body
// is over the limit, and says so ("refused_path", "refused_size"); ""
// lets it on, with its path decoded and normalised for the upstream.
func (g *Guard) screen(w http.ResponseWriter, r *http.Request) string {
	p, err := cleanPath(r.URL)
	if err != nil {
		g.log.Info("EWS request refused: bad path", slog.Any("error", err))
		http.Error(w, "Bad request path: it contains "+err.Error()+".", http.StatusBadRequest)
		return "refused_path"
	}
	r.URL.Path, r.URL.RawPath = p, ""
	if g.cfg.MaxRequestBody > 0 && r.ContentLength > g.cfg.MaxRequestBody {
		g.log.Info("EWS request refused: body too large", slog.Int64("length", r.ContentLength))
		tooLarge(w, g.cfg.MaxRequestBody)
		return "refused_size"
	}
	return ""
}

func tooLarge(w http.ResponseWriter, limit int64) {
	w.Header().Set("Connection", "close") // the rest of the body is not read
	http.Error(w, fmt.Sprintf("Request body too large: this gateway forwards at most %d bytes.", limit), http.StatusRequestEntityTooLarge)
}

// limitedBody ends a request body with an error once more than left
// bytes have been read, and remembers that it did.
type limitedBody struct {
	io.ReadCloser
	left     int64
	exceeded bool
}

var errBodyTooLarge = errors.New("request body over the gateway's limit")

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.exceeded {
		return 0, errBodyTooLarge
	}
	if b.left < int64(len(p))-1 { // not b.left+1, which overflows for a limit of MaxInt64
		p = p[:b.left+1] // one byte more tells a body that only fills the limit from a longer one
	}
	n, err := b.ReadCloser.Read(p)
	if int64(n) > b.left {
		b.exceeded = true
		return int(b.left), errBodyTooLarge
	}
	b.left -= int64(n)
	return n, err
}

// decide answers refused requests itself and says what it did:
// forwarded (not answered yet; the request is ready for Exchange, and
// kerberos tells whether the proxy authenticated it with Kerberos),
// refused_ntlm, refused_attestation, unavailable, refused_device or
// refused_kerberos.
func (g *Guard) decide(w http.ResponseWriter, r *http.Request, op string) (decision string, kerberos bool) {
	log := g.log.With(slog.String("operation", op))
	if g.cfg.RemoveUnsupportedAuth && isNTLM(r.Header) {
		log.Info("EWS request refused: NTLM")
		realm := g.cfg.Realm
		if realm == "" {
			realm = r.Host
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", realm))
		http.Error(w, "NTLM authentication is not supported through this gateway; use Basic or OAuth (Bearer).", http.StatusUnauthorized)
		return "refused_ntlm", false
	}
	ids, tenantID, fromENS, err := g.identify(r)
	if errors.Is(err, errTenantUnknown) {
		log.Error("EWS request refused: the route's tenant cannot be found", slog.Any("error", err))
		writeFault(w, http.StatusServiceUnavailable, "ErrorServerBusy", "The gateway cannot check devices right now; retry later.")
		return "unavailable", false
	}
	if err != nil {
		log.Warn("EWS request refused: bad device attestation", slog.Any("error", err))
		writeFault(w, http.StatusForbidden, "ErrorAccessDenied", "The request's device attestation is invalid.")
		return "refused_attestation", false
	}
	allowed, accepted, err := g.allowed(r.Context(), tenantID, ids)
	if errors.Is(err, compliance.ErrUnknown) {
		log.Error("EWS request refused: compliance unknown", slog.Any("error", err))
		writeFault(w, http.StatusServiceUnavailable, "ErrorServerBusy", "Device compliance cannot be checked right now; retry later.")
		return "unavailable", false
	}
	if fromENS {
		w.Header().Set(attest.AcceptedHeader, attest.JoinIDs(accepted))
	}
	if !allowed {
		log.Info("EWS request refused: no compliant device", slog.Any("devices", ids), slog.Bool("ens", fromENS))
		writeFault(w, http.StatusForbidden, "ErrorAccessDenied", "This device is not allowed to access mail (blocked, wiped, non-compliant or unknown).")
		return "refused_device", false
	}
	r.Header.Del(attest.DevicesHeader)
	kerberos, err = g.delegate(r)
	if err != nil {
		status := http.StatusBadGateway
		var se interface{ HTTPStatus() int }
		if errors.As(err, &se) {
			status = se.HTTPStatus()
		}
		log.Warn("EWS request refused: Kerberos delegation failed", slog.Any("error", err))
		writeFault(w, status, "ErrorAccessDenied", "The gateway could not obtain a Kerberos ticket for this certificate.")
		return "refused_kerberos", false
	}
	return "forwarded", kerberos
}

// maxAttestedBody bounds the body the proxy reads to check an attestation
// bound to it: ENS's own calls (Subscribe, GetItem, GetFolder) are a few
// kilobytes.
const maxAttestedBody = 1 << 20

// identify returns the request's device ids: ENS's attested list, or the
// one a device names in the configured header or query parameter.
func (g *Guard) identify(r *http.Request) (ids []string, tenantID int64, fromENS bool, err error) {
	if v := r.Header.Get(attest.DevicesHeader); v != "" {
		body, err := peekBody(r, maxAttestedBody)
		if err != nil {
			return nil, 0, true, err
		}
		tenantID, ids, err = g.cfg.Attestation.Verify(v, r, body)
		return ids, tenantID, true, err
	}
	tenantID, err = g.tenantID(r.Context())
	if err != nil {
		return nil, 0, false, err
	}
	var id string
	if g.cfg.DeviceHeader != "" {
		id = strings.TrimSpace(r.Header.Get(g.cfg.DeviceHeader))
	}
	if id == "" && g.cfg.DeviceQuery != "" {
		id = r.URL.Query().Get(g.cfg.DeviceQuery)
	}
	if id == "" {
		return nil, tenantID, false, nil
	}
	return []string{id}, tenantID, false, nil
}

var errTenantUnknown = errors.New("the route's tenant is not known yet")

// tenantID returns the route's tenant, looking it up on first use.
func (g *Guard) tenantID(ctx context.Context) (int64, error) {
	if id := g.tenant.Load(); id != 0 || g.cfg.FindTenant == nil {
		return id, nil
	}
	id, err := g.cfg.FindTenant(ctx)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errTenantUnknown, err)
	}
	g.tenant.Store(id)
	return id, nil
}

// peekBody reads the whole body, at most max bytes, and leaves it intact
// for the upstream.
func peekBody(r *http.Request, max int64) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > max {
		return nil, fmt.Errorf("an attested request body over %d bytes", max)
	}
	r.Body = readCloser{bytes.NewReader(body), r.Body}
	return body, nil
}

// allowed returns whether the request may reach Exchange, and which of its
// devices are accepted. A request naming no device is an unknown device.
func (g *Guard) allowed(ctx context.Context, tenantID int64, ids []string) (allowed bool, accepted []string, err error) {
	if len(ids) == 0 {
		return g.cfg.AllowUnknown, nil, nil
	}
	for _, id := range ids {
		state, err := g.compliance.Lookup(ctx, store.DeviceKey{TenantID: tenantID, DeviceID: id})
		if err != nil {
			return false, nil, err
		}
		if state == store.Compliant || (state == "" && g.cfg.AllowUnknown) {
			accepted = append(accepted, id)
		}
	}
	return len(accepted) > 0, accepted, nil
}

// writeFault answers like EWS does: a SOAP fault whose detail carries the
// EWS response code, so EWS clients show a meaningful error.
func writeFault(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>`+
		`<faultcode xmlns:a="http://schemas.microsoft.com/exchange/services/2006/types">a:%s</faultcode>`+
		`<faultstring xml:lang="en-US">%s</faultstring><detail>`+
		`<e:ResponseCode xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">%s</e:ResponseCode>`+
		`<e:Message xmlns:e="http://schemas.microsoft.com/exchange/services/2006/errors">%s</e:Message>`+
		`</detail></s:Fault></s:Body></s:Envelope>`, code, message, code, message)
}

// delegate replaces the client's credentials with a Kerberos ticket for a
// client that presented a certificate, and reports whether it did. Only a
// certificate the TLS layer verified counts: with client_auth mode
// `request`, PeerCertificates holds whatever the client sent.
func (g *Guard) delegate(r *http.Request) (bool, error) {
	if g.cfg.Delegator == nil || r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return false, nil
	}
	header, err := g.cfg.Delegator.Authorization(r.Context(), r.TLS.VerifiedChains[0][0])
	if err != nil {
		return false, err
	}
	r.Header.Set("Authorization", header)
	return true, nil
}

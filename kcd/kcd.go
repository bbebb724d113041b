package kcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jcmturner/gokrb5/v8/credentials"
	"github.com/jcmturner/gokrb5/v8/iana/errorcode"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/types"
	"golang.org/x/sync/singleflight"
)

// Config is what constrained delegation needs to know.
type Config struct {
	// Realm of the proxy, Exchange and the users, e.g. CORP.EXAMPLE.TEST.
	Realm string
	// KDCs as host or host:port (default port 88), tried in order.
	KDCs []string
	// Principal is the proxy's own principal without the realm, as in its
	// keytab: "HTTP/ensgate.corp.example.test" or an AD account "svc_ensgate".
	Principal string
	// Keytab holds the proxy principal's keys.
	Keytab *keytab.Keytab
	// SPN is Exchange's service principal, e.g. HTTP/mail.corp.example.test.
	SPN string
	// Timeout bounds one attempt at one KDC (default 3 s); a request waits
	// at most about 5 exchanges × KDCs × Timeout (see docs/kcd.md).
	Timeout time.Duration
	// RenewBefore: tickets are replaced this long before they expire
	// (default 5 minutes).
	RenewBefore time.Duration
	// NegativeTTL: how long a user the KDC refused (unknown, not
	// delegable) is answered from the cache (default 1 minute).
	NegativeTTL time.Duration
	// MaxEntries bounds the ticket cache (default 100,000 users).
	MaxEntries int
	// Logger gets one line per failed step (never the user's name).
	Logger *slog.Logger

	now func() time.Time // tests move the clock
}

// outageRetry is how long a ticket due for renewal, or a TGT, is used
// without asking the KDCs again after they could not be reached.
const outageRetry = 30 * time.Second

// Delegator obtains delegated service tickets for users and turns them
// into Negotiate headers. Safe for concurrent use.
type Delegator struct {
	cfg   Config
	spn   types.PrincipalName
	x     *exchanger
	login func(context.Context) (*credential, error) // x.login; tests make it fail
	log   atomic.Pointer[slog.Logger]
	group singleflight.Group

	mu  sync.Mutex
	tgt *credential
	// tgtRetry: after a failed renewal, the current TGT is used without
	// logging in again until then.
	tgtRetry time.Time
	tickets  map[string]*cacheEntry
	// sweepAt is the cache size at which expired entries are next swept.
	sweepAt int
}

type cacheEntry struct {
	ticket  *serviceTicket // nil for a negative entry
	err     error          // why the user cannot be delegated
	refresh time.Time      // after this, ask the KDC again
}

// Validate reports every problem of the configuration at once.
func (cfg Config) Validate() error {
	var problems []string
	if cfg.Realm == "" {
		problems = append(problems, "realm is required")
	}
	if len(cfg.KDCs) == 0 {
		problems = append(problems, "at least one KDC is required")
	}
	for _, k := range cfg.KDCs {
		if _, _, err := net.SplitHostPort(withPort(k)); err != nil {
			problems = append(problems, fmt.Sprintf("KDC %q: %v", k, err))
		}
	}
	if cfg.Principal == "" || strings.Contains(cfg.Principal, "@") {
		problems = append(problems, "the proxy principal is required, without the realm (e.g. HTTP/ensgate.corp.example.test)")
	}
	if !strings.Contains(cfg.SPN, "/") || strings.Contains(cfg.SPN, "@") {
		problems = append(problems, "the Exchange SPN must look like HTTP/mail.corp.example.test (no realm)")
	}
	if cfg.Keytab == nil {
		problems = append(problems, "a keytab is required")
	}
	if cfg.Timeout < 0 || cfg.RenewBefore < 0 || cfg.NegativeTTL < 0 || cfg.MaxEntries < 0 {
		problems = append(problems, "durations and sizes must not be negative")
	}
	if len(problems) > 0 {
		return fmt.Errorf("kcd: %s", strings.Join(problems, "; "))
	}
	return nil
}

// withPort adds Kerberos's port 88 to a KDC address without one.
func withPort(kdc string) string {
	if !strings.Contains(kdc, ":") || strings.HasSuffix(kdc, "]") {
		return net.JoinHostPort(strings.Trim(kdc, "[]"), "88")
	}
	return kdc
}

// New checks the configuration; it does not contact the KDC (Exchange may
// start before it), so the first request logs in.
func New(cfg Config) (*Delegator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	kdcs := make([]string, len(cfg.KDCs))
	for i, k := range cfg.KDCs {
		kdcs[i] = withPort(k)
	}
	cfg.KDCs = kdcs
	cfg.Timeout = cmp.Or(cfg.Timeout, 3*time.Second)
	cfg.RenewBefore = cmp.Or(cfg.RenewBefore, 5*time.Minute)
	cfg.NegativeTTL = cmp.Or(cfg.NegativeTTL, time.Minute)
	cfg.MaxEntries = cmp.Or(cfg.MaxEntries, 100_000)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	principal := principalName(cfg.Principal)
	x := &exchanger{
		realm:     cfg.Realm,
		principal: principal,
		creds:     credentials.New(cfg.Principal, cfg.Realm).WithKeytab(cfg.Keytab),
		kdc:       &transport{kdcs: cfg.KDCs, timeout: cfg.Timeout},
		now:       cfg.now,
		observe:   observeKDC,
	}
	if len(x.keytabTypes()) == 0 {
		return nil, fmt.Errorf("kcd: the keytab has no key for %s@%s in a supported encryption type (aes256/aes128-cts-hmac-sha1-96, aes-sha2, rc4-hmac)", cfg.Principal, cfg.Realm)
	}
	d := &Delegator{
		cfg:     cfg,
		spn:     principalName(cfg.SPN),
		x:       x,
		login:   x.login,
		tickets: make(map[string]*cacheEntry),
		sweepAt: 1024,
	}
	d.log.Store(cfg.Logger)
	return d, nil
}

// SetLogger sends the delegator's log lines to l from now on (a delegator
// shared across config reloads follows the newest config's logging).
func (d *Delegator) SetLogger(l *slog.Logger) {
	if l != nil {
		d.log.Store(l)
	}
}

// Negotiate returns an `Authorization: Negotiate …` value that
// authenticates user (a UPN, or a bare name in the realm) to Exchange.
// Each call builds a fresh authenticator; the ticket behind it comes from
// the cache, or from one S4U2Self + S4U2Proxy exchange shared by all
// concurrent callers for the same user.
func (d *Delegator) Negotiate(ctx context.Context, user string) (string, error) {
	return d.NegotiateSID(ctx, user, "")
}

// NegotiateSID is Negotiate for a user whose SID is known too (from the
// strong-mapping extension of AD certificates): unless sid is empty, the
// user's PAC must carry that SID, else the answer is ErrSIDMismatch.
func (d *Delegator) NegotiateSID(ctx context.Context, user, sid string) (string, error) {
	st, err := d.ticket(ctx, user)
	if err != nil {
		return "", err
	}
	if sid != "" && !strings.EqualFold(st.cred.sid, sid) {
		e := &Error{Step: StepIdentity, Kind: ErrSIDMismatch}
		if st.cred.sidErr != nil {
			e.Err = fmt.Errorf("cannot check it: %w", st.cred.sidErr)
		}
		countError(e)
		return "", e
	}
	return st.header(d.cfg.now())
}

// ticket returns user's delegated ticket from the cache or the KDC.
func (d *Delegator) ticket(ctx context.Context, user string) (*serviceTicket, error) {
	key := user + "\x00" + d.cfg.Realm + "\x00" + d.cfg.SPN
	now := d.cfg.now()
	d.mu.Lock()
	e := d.tickets[key]
	d.mu.Unlock()
	if e != nil && now.Before(e.refresh) {
		if e.ticket == nil {
			cacheLookups.WithLabelValues("negative").Inc()
			return nil, e.err
		}
		cacheLookups.WithLabelValues("hit").Inc()
		return e.ticket, nil
	}
	cacheLookups.WithLabelValues("miss").Inc()
	// The exchange runs on its own context so one impatient caller does
	// not fail the others waiting for it; transport timeouts bound it.
	ch := d.group.DoChan(key, func() (any, error) {
		return d.fetch(context.WithoutCancel(ctx), key, user)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			if stale := d.keepDuringOutage(key, e, res.Err); stale != nil {
				return stale, nil
			}
			return nil, res.Err
		}
		return res.Val.(*serviceTicket), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// keepDuringOutage returns the ticket of entry e, due for renewal, when the
// renewal failed because no KDC answered and the ticket is good for more
// than a minute still; the KDCs are asked again only after outageRetry, so
// that requests do not each wait out their timeouts.
func (d *Delegator) keepDuringOutage(key string, e *cacheEntry, err error) *serviceTicket {
	if e == nil || e.ticket == nil || !errors.Is(err, ErrKDCUnreachable) {
		return nil
	}
	now, last := d.cfg.now(), e.ticket.cred.end.Add(-time.Minute)
	if !now.Before(last) {
		return nil
	}
	retry := now.Add(outageRetry)
	if retry.After(last) {
		retry = last
	}
	d.mu.Lock()
	if d.tickets[key] == e {
		d.tickets[key] = &cacheEntry{ticket: e.ticket, refresh: retry}
	}
	d.mu.Unlock()
	return e.ticket
}

// fetch gets a delegated ticket for user and caches the outcome.
func (d *Delegator) fetch(ctx context.Context, key, user string) (st *serviceTicket, err error) {
	defer func() {
		// Parsing what the KDC sent must not take the gateway down: a
		// panic in singleflight's goroutine would escape Caddy's recovery.
		if p := recover(); p != nil {
			st, err = nil, &Error{Step: StepS4U2Self, Kind: ErrProtocol, Err: fmt.Errorf("panic: %v", p)}
		}
	}()
	st, err = d.delegate(ctx, user)
	now := d.cfg.now()
	if err != nil {
		var e *Error
		if !errors.As(err, &e) {
			e = &Error{Step: StepS4U2Self, Kind: ErrProtocol, Err: err}
		}
		countError(e)
		d.log.Load().Warn("kerberos delegation failed", "step", e.Step, "kdcErrorCode", e.Code, "kdc", e.KDC, "error", e.Error())
		if e.Kind == ErrUnknownPrincipal || e.Kind == ErrNotForwardable || e.Kind == ErrUserRefused {
			d.store(key, &cacheEntry{err: e, refresh: now.Add(d.cfg.NegativeTTL)}, now)
		}
		return nil, e
	}
	d.store(key, &cacheEntry{ticket: st, refresh: d.refreshTime(st.cred)}, now)
	return st, nil
}

// delegate runs S4U2Self and S4U2Proxy with the proxy's TGT.
func (d *Delegator) delegate(ctx context.Context, user string) (*serviceTicket, error) {
	for attempt := 0; ; attempt++ {
		tgt, err := d.loginTGT(ctx)
		if err != nil {
			return nil, err
		}
		self, err := d.x.s4u2Self(ctx, tgt, user)
		var cred *credential
		if err == nil {
			cred, err = d.x.s4u2Proxy(ctx, tgt, self, d.spn)
		}
		if err == nil {
			return &serviceTicket{cred: cred}, nil
		}
		// A TGT the KDC can no longer use, or a refusal that may be about
		// the proxy's own account rather than the user (the KDC checks
		// the account behind the TGT too): log in again, once; a proxy
		// that can no longer log in then fails as such (502).
		var e *Error
		if attempt == 0 && errors.As(err, &e) && (staleTGT(e.Code) || e.Kind == ErrUserRefused) {
			d.mu.Lock()
			if d.tgt == tgt {
				d.tgt = nil
			}
			d.mu.Unlock()
			continue
		}
		return nil, err
	}
}

// staleTGT reports KDC errors that a fresh TGT cures: the TGT expired,
// was revoked or is not valid yet, or the krbtgt key changed since it was
// issued (the KDC cannot read it).
func staleTGT(code int32) bool {
	switch code {
	case errorcode.KRB_AP_ERR_BAD_INTEGRITY, errorcode.KRB_AP_ERR_TKT_EXPIRED, errorcode.KRB_AP_ERR_TKT_NYV,
		errorcode.KRB_AP_ERR_MODIFIED, errorcode.KRB_AP_ERR_BADKEYVER, errorcode.KDC_ERR_TGT_REVOKED:
		return true
	}
	return false
}

// loginTGT returns the proxy's TGT, logging in when it is missing or in
// the last third of its life (so delegated tickets, which cannot outlive
// it, stay long enough). If the KDC cannot be reached, a TGT that has not
// yet expired is still used.
func (d *Delegator) loginTGT(ctx context.Context) (*credential, error) {
	now := d.cfg.now()
	d.mu.Lock()
	tgt, retry := d.tgt, d.tgtRetry
	d.mu.Unlock()
	if tgt != nil && now.Before(tgt.end.Add(-tgt.end.Sub(tgt.start)/3)) {
		return tgt, nil
	}
	if tgt != nil && now.Before(retry) && now.Before(tgt.end.Add(-d.cfg.RenewBefore)) {
		return tgt, nil
	}
	v, err, _ := d.group.Do("\x00tgt", func() (any, error) {
		fresh, err := d.login(ctx)
		if err != nil {
			return nil, err
		}
		d.mu.Lock()
		d.tgt = fresh
		d.mu.Unlock()
		return fresh, nil
	})
	if err != nil {
		if tgt != nil && now.Before(tgt.end.Add(-d.cfg.RenewBefore)) {
			d.log.Load().Warn("kerberos: renewing the proxy's TGT failed; using the current one until it expires", "error", err.Error())
			d.mu.Lock()
			d.tgtRetry = now.Add(outageRetry)
			d.mu.Unlock()
			return tgt, nil
		}
		return nil, err
	}
	return v.(*credential), nil
}

// refreshTime is when a service ticket is replaced: RenewBefore ahead of
// its end, or halfway through a lifetime shorter than twice that.
func (d *Delegator) refreshTime(c *credential) time.Time {
	life := c.end.Sub(c.start)
	if life < 2*d.cfg.RenewBefore {
		return c.start.Add(life / 2)
	}
	return c.end.Add(-d.cfg.RenewBefore)
}

// store caches an entry; when the cache reaches its next sweep size,
// stale entries go first, then arbitrary ones down to 90% of MaxEntries.
func (d *Delegator) store(key string, e *cacheEntry, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tickets[key] = e
	if len(d.tickets) < d.sweepAt && len(d.tickets) <= d.cfg.MaxEntries {
		return
	}
	for k, old := range d.tickets {
		if !now.Before(old.refresh) {
			delete(d.tickets, k)
		}
	}
	// Down to 90%, so that a full cache is swept once per tenth of its
	// size in new users, not on every one.
	for k := range d.tickets {
		if len(d.tickets) <= d.cfg.MaxEntries*9/10 {
			break
		}
		if k != key {
			delete(d.tickets, k)
		}
	}
	d.sweepAt = max(1024, min(2*len(d.tickets), d.cfg.MaxEntries+1))
}

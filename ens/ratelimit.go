package ens

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/ensgate/ensgate/store"
)

// Device API rate limits, on each node. Every request counts against its
// client address and its tenant's ceiling (tenantAPI), and once the handler
// knows the device id against the device at that address
// (limitDevice). So one device or one address over its rate is refused
// alone, and the rest of the tenant goes on; the ceiling only bounds a
// whole tenant's load.
type rateLimits struct {
	address *limiterSet[addressKey]
	device  *limiterSet[deviceKey]
	tenant  *limiterSet[int64]
	// callback is per subscription: a captured callback URL cannot be
	// flooded into GetItem calls (and Exchange's throttling of the user).
	callback *limiterSet[int64]
}

type addressKey struct {
	tenantID int64
	addr     string
}

type deviceKey struct {
	tenantID int64
	deviceID string
	addr     string
}

func newRateLimits(cfg Config) rateLimits {
	return rateLimits{
		address: newLimiterSet[addressKey](cfg.RateLimit),
		device:  newLimiterSet[deviceKey](cfg.DeviceRateLimit),
		tenant:  newLimiterSet[int64](cfg.TenantRateLimit),

		callback: newLimiterSet[int64](cfg.CallbackRateLimit),
	}
}

// limitRequest applies the client address's and the tenant's limits.
func (s *Service) limitRequest(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	return admit(w,
		scopedLimiter{s.limits.address.get(addressKey{t.ID, s.clientAddress(r)}), "from this address"},
		scopedLimiter{s.limits.tenant.get(t.ID), "for this tenant"})
}

// limitDevice applies the device's own limit. Handlers call it as soon
// as they have checked the device id, before any other work, and so before
// the device's secret is checked: anyone with the tenant's token may send
// any device id. Keyed by the device id alone, one address at the device's
// rate would keep the device itself at 429 for as long as it liked (no
// status, re-registration or unregistration). So the limit is per device
// and client address: the device's own requests come from its address, an
// attacker's from another, whose requests the address limit bounds as
// well. The device limit keeps its purpose, one looping app behind a
// shared address (NAT) leaving the address's other devices half its rate.
func (s *Service) limitDevice(w http.ResponseWriter, r *http.Request, t store.Tenant, deviceID string) error {
	key := deviceKey{t.ID, deviceID, s.clientAddress(r)}
	return admit(w, scopedLimiter{s.limits.device.get(key), "for this device"})
}

// clientAddress is the key of the request's client: its address, or for
// IPv6 its /56. One client usually holds a /64 whole, but ISPs hand a home
// or small site a /56, so an attacker holding one has 256 /64s: grouping by
// /64 would give it 256 times a client's limits (and key pairs). The cost:
// unrelated clients in one /56 (some mobile carriers) share a budget.
func (s *Service) clientAddress(r *http.Request) string {
	addr := s.cfg.ClientIP(r)
	if addr == "" {
		addr = remoteHost(r)
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		return addr
	}
	if ip = ip.Unmap(); ip.Is6() {
		p, _ := ip.Prefix(ipv6ClientPrefix)
		return p.String()
	}
	return ip.String()
}

// ipv6ClientPrefix is the IPv6 prefix length taken as one client.
const ipv6ClientPrefix = 56

// remoteHost is the host of r.RemoteAddr, the default Config.ClientIP.
func remoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

type scopedLimiter struct {
	*rate.Limiter
	scope string // says whose rate was exceeded
}

// admit takes a token from every limiter, or from none: if any of them is
// over its rate, the request is answered 429 with the longest wait.
func admit(w http.ResponseWriter, limiters ...scopedLimiter) error {
	var wait time.Duration
	var scope string
	reservations := make([]*rate.Reservation, len(limiters))
	for i, l := range limiters {
		reservations[i] = l.Reserve()
		if d := reservations[i].Delay(); d > wait {
			wait, scope = d, l.scope
		}
	}
	if wait == 0 {
		return nil
	}
	for _, res := range reservations {
		res.Cancel()
	}
	w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
	return &apiError{http.StatusTooManyRequests, "rate_limited", "too many requests " + scope + "; retry later"}
}

// Memory bounds of a limiterSet.
const (
	minLimiterSweep = 1024    // entries before the first sweep
	maxLimiters     = 1 << 17 // entries at most; more new keys share one limiter
)

// limiterSet is one token bucket per key (bursts of twice the rate), made
// on first use. A bucket that has refilled is the same as a new one, so
// such entries are dropped: memory follows the keys seen in the last
// seconds, not every key ever seen. Past maxLimiters live entries, new
// keys share an overflow bucket, so a flood of addresses cannot grow it.
type limiterSet[K comparable] struct {
	limit rate.Limit
	burst int

	mu       sync.Mutex
	entries  map[K]*rate.Limiter
	sweepAt  int       // len(entries) at which to sweep next
	swept    time.Time // last sweep
	overflow *rate.Limiter
}

func newLimiterSet[K comparable](perSecond float64) *limiterSet[K] {
	burst := int(2*perSecond) + 1
	return &limiterSet[K]{limit: rate.Limit(perSecond), burst: burst, entries: map[K]*rate.Limiter{},
		sweepAt: minLimiterSweep, overflow: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

func (s *limiterSet[K]) get(key K) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.entries[key]; ok {
		return l
	}
	if now := time.Now(); len(s.entries) >= s.sweepAt && now.Sub(s.swept) >= time.Second {
		s.sweep(now)
	}
	if len(s.entries) >= maxLimiters {
		return s.overflow
	}
	l := rate.NewLimiter(s.limit, s.burst)
	s.entries[key] = l
	return l
}

// sweep drops the refilled buckets. Sweeping again only when the set has
// doubled (or is full, and then at most once a second) keeps its cost
// constant per entry added.
func (s *limiterSet[K]) sweep(now time.Time) {
	for k, l := range s.entries {
		if l.TokensAt(now) >= float64(s.burst) {
			delete(s.entries, k)
		}
	}
	s.swept = now
	s.sweepAt = min(max(minLimiterSweep, 2*len(s.entries)), maxLimiters)
}

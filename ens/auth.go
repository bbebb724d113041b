package ens

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ensgate/ensgate/store"
)

// How long a token lookup is remembered: long enough to spare the database
// on every request, short enough that a revoked token stops working soon.
const (
	tenantCacheTTL  = 30 * time.Second
	unknownTokenTTL = 5 * time.Second
	tenantCacheMax  = 10000
)

type cachedTenant struct {
	hash    [sha256.Size]byte
	tenant  store.Tenant
	found   bool
	expires time.Time
}

type tenantCache struct {
	mu      sync.Mutex
	entries map[[sha256.Size]byte]cachedTenant
}

var errUnauthorized = errors.New("missing or unknown API token")

// bearerToken returns the token of an `Authorization: Bearer` header. The
// scheme is case-insensitive (RFC 7235), and one or more spaces follow it.
func bearerToken(r *http.Request) (string, bool) {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimLeft(token, " ")
	return token, strings.EqualFold(scheme, "Bearer") && token != ""
}

// authenticate returns the tenant whose API token the request carries.
func (s *Service) authenticate(ctx context.Context, r *http.Request) (store.Tenant, error) {
	token, ok := bearerToken(r)
	if !ok {
		return store.Tenant{}, errUnauthorized
	}
	hash := sha256.Sum256([]byte(token))
	now := time.Now()

	s.tenants.mu.Lock()
	e, hit := s.tenants.entries[hash]
	s.tenants.mu.Unlock()
	// The map lookup already matched the hash; comparing it again in
	// constant time keeps any timing difference away from the token bytes.
	if hit && now.Before(e.expires) && subtle.ConstantTimeCompare(e.hash[:], hash[:]) == 1 {
		if !e.found {
			return store.Tenant{}, errUnauthorized
		}
		return e.tenant, nil
	}

	t, err := s.store.TenantByToken(ctx, token)
	found := err == nil
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Tenant{}, err
	}
	ttl := tenantCacheTTL
	if !found {
		ttl = unknownTokenTTL
	}
	s.tenants.mu.Lock()
	if len(s.tenants.entries) >= tenantCacheMax {
		clear(s.tenants.entries) // simple bound; a refill costs one query per tenant
	}
	s.tenants.entries[hash] = cachedTenant{hash: hash, tenant: t, found: found, expires: now.Add(ttl)}
	s.tenants.mu.Unlock()
	if !found {
		return store.Tenant{}, errUnauthorized
	}
	return t, nil
}

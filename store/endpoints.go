package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Endpoint is an EWS URL a tenant's devices may use, optionally pinned to a
// server certificate fingerprint (canonical "sha256:<hex>" or
// "spki-sha256:<hex>").
type Endpoint struct {
	ID          int64
	TenantID    int64
	URL         string
	Fingerprint string
	CreatedAt   time.Time
}

// NormalizeEWSURL returns the form in which EWS URLs are stored and compared:
// scheme and host lower-cased and the scheme's default port dropped; the path
// is kept exactly, so scheme, host, port and path all count.
func NormalizeEWSURL(raw string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return "", fmt.Errorf("EWS URL: %w", err)
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "https" && scheme != "http" {
		return "", fmt.Errorf("EWS URL %q: must start with https:// (or http:// for a test server)", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return "", fmt.Errorf("EWS URL %q: must not carry user info, a query or a fragment", raw)
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return "", fmt.Errorf("EWS URL %q: has no host", raw)
	}
	port := u.Port()
	if (scheme == "https" && port == "443") || (scheme == "http" && port == "80") {
		port = ""
	}
	hostport := host
	if port != "" {
		hostport = net.JoinHostPort(host, port)
	} else if strings.Contains(host, ":") {
		hostport = "[" + host + "]"
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	return scheme + "://" + hostport + path, nil
}

// AddEndpoint allows rawURL for the tenant. fingerprint is empty (no pin) or
// canonical.
func (s *Store) AddEndpoint(ctx context.Context, tenantID int64, rawURL, fingerprint string) (Endpoint, error) {
	u, err := NormalizeEWSURL(rawURL)
	if err != nil {
		return Endpoint{}, err
	}
	e := Endpoint{TenantID: tenantID, URL: u, Fingerprint: fingerprint}
	err = s.pool.QueryRow(ctx, `
		INSERT INTO ews_endpoints (tenant_id, url, fingerprint) VALUES ($1, $2, NULLIF($3, ''))
		RETURNING id, created_at`, tenantID, u, fingerprint).Scan(&e.ID, &e.CreatedAt)
	if isUniqueViolation(err) {
		return Endpoint{}, fmt.Errorf("endpoint %s: %w for this tenant", u, ErrExists)
	}
	if err != nil {
		return Endpoint{}, s.queryError("add endpoint", err)
	}
	return e, nil
}

// EndpointFor returns the tenant's entry matching rawURL after normalisation.
func (s *Store) EndpointFor(ctx context.Context, tenantID int64, rawURL string) (Endpoint, error) {
	u, err := NormalizeEWSURL(rawURL)
	if err != nil {
		return Endpoint{}, err
	}
	e := Endpoint{TenantID: tenantID, URL: u}
	err = s.pool.QueryRow(ctx, `
		SELECT id, coalesce(fingerprint, ''), created_at FROM ews_endpoints
		WHERE tenant_id = $1 AND url = $2`, tenantID, u).Scan(&e.ID, &e.Fingerprint, &e.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, fmt.Errorf("endpoint %s: %w", u, ErrNotFound)
	}
	if err != nil {
		return Endpoint{}, s.queryError("find endpoint", err)
	}
	return e, nil
}

// Endpoints lists the tenant's allowed endpoints in the order they were added.
func (s *Store) Endpoints(ctx context.Context, tenantID int64) ([]Endpoint, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id, tenant_id, url, coalesce(fingerprint, ''), created_at FROM ews_endpoints
		WHERE tenant_id = $1 ORDER BY id`, tenantID)
	if err != nil {
		return nil, s.queryError("list endpoints", err)
	}
	endpoints, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Endpoint])
	if err != nil {
		return nil, s.queryError("list endpoints", err)
	}
	return endpoints, nil
}

// EndpointByID finds an endpoint by its id.
func (s *Store) EndpointByID(ctx context.Context, id int64) (Endpoint, error) {
	e := Endpoint{ID: id}
	err := s.pool.QueryRow(ctx, `SELECT tenant_id, url, coalesce(fingerprint, ''), created_at FROM ews_endpoints WHERE id = $1`, id).
		Scan(&e.TenantID, &e.URL, &e.Fingerprint, &e.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, fmt.Errorf("endpoint %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Endpoint{}, s.queryError("find endpoint", err)
	}
	return e, nil
}

package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
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
	Kind        string // KindEWS (URL is an EWS URL) or KindGraph (URL is a Graph root)
	URL         string
	Fingerprint string
	OAuth       OAuth // how refresh tokens are redeemed; required for Graph
	CreatedAt   time.Time
	// ReadAt is when the query that read the row began: a node's cache may
	// keep the row only if no change to it was announced since.
	ReadAt time.Time `db:"-"`
}

// Endpoint kinds.
const (
	KindEWS   = "ews"
	KindGraph = "graph"
)

// OAuth is how a device's refresh token is redeemed for an endpoint: the
// mail app's public client id (no secret: the refresh tokens are bound to
// it), its authority, whose token endpoint is Authority +
// "/oauth2/v2.0/token", and the scope asked for. Zero: no refresh tokens.
type OAuth struct {
	ClientID, Authority, Scope string
}

// TokenURL is the authority's token endpoint.
func (o OAuth) TokenURL() string { return strings.TrimSuffix(o.Authority, "/") + "/oauth2/v2.0/token" }

// EndpointChannel is the PostgreSQL NOTIFY channel that announces a
// changed, removed or re-added endpoint; the payload is its id.
const EndpointChannel = "ensgate_endpoints"

// ReasonEndpointRemoved is recorded on the subscriptions that ended because
// an admin removed their endpoint.
const ReasonEndpointRemoved = "endpoint_removed"

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

// AddEndpoint allows the EWS URL rawURL for the tenant. fingerprint is
// empty (no pin) or canonical.
func (s *Store) AddEndpoint(ctx context.Context, tenantID int64, rawURL, fingerprint string) (Endpoint, error) {
	return s.Allow(ctx, Endpoint{TenantID: tenantID, Kind: KindEWS, URL: rawURL, Fingerprint: fingerprint})
}

// Allow adds e (an EWS URL or a Graph root, with its pin and OAuth client)
// to its tenant's list. A removed endpoint is added again under its old id;
// its ended subscriptions stay ended.
func (s *Store) Allow(ctx context.Context, e Endpoint) (Endpoint, error) {
	u, err := NormalizeEWSURL(e.URL)
	if err != nil {
		return Endpoint{}, err
	}
	e.URL, e.Kind = u, cmp.Or(e.Kind, KindEWS)
	if e.Kind == KindGraph && e.OAuth.ClientID == "" {
		return Endpoint{}, errors.New("a Graph endpoint needs the mail app's OAuth client id")
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			INSERT INTO ews_endpoints (tenant_id, url, fingerprint, kind, oauth_client_id, oauth_authority, oauth_scope)
			VALUES ($1, $2, NULLIF($3, ''), $4, NULLIF($5, ''), NULLIF($6, ''), NULLIF($7, ''))
			ON CONFLICT (tenant_id, url) DO UPDATE
				SET fingerprint = excluded.fingerprint, kind = excluded.kind, oauth_client_id = excluded.oauth_client_id,
					oauth_authority = excluded.oauth_authority, oauth_scope = excluded.oauth_scope,
					removed_at = NULL, created_at = now()
				WHERE ews_endpoints.removed_at IS NOT NULL
			RETURNING id, created_at`, e.TenantID, u, e.Fingerprint, e.Kind, e.OAuth.ClientID, e.OAuth.Authority, e.OAuth.Scope).
			Scan(&e.ID, &e.CreatedAt)
		if err != nil {
			return err
		}
		return notifyEndpoint(ctx, tx, e.ID)
	})
	if errors.Is(err, pgx.ErrNoRows) { // the conflict's WHERE kept a live entry
		return Endpoint{}, fmt.Errorf("endpoint %s: %w for this tenant", u, ErrExists)
	}
	if err != nil {
		return Endpoint{}, s.queryError("add endpoint", err)
	}
	return e, nil
}

// SetEndpointPin replaces the pin of the tenant's entry for rawURL
// (fingerprint empty: no pin). Every node uses the new pin within seconds.
func (s *Store) SetEndpointPin(ctx context.Context, tenantID int64, rawURL, fingerprint string) (Endpoint, error) {
	u, err := NormalizeEWSURL(rawURL)
	if err != nil {
		return Endpoint{}, err
	}
	e := Endpoint{TenantID: tenantID, URL: u, Fingerprint: fingerprint}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			UPDATE ews_endpoints SET fingerprint = NULLIF($3, '')
			WHERE tenant_id = $1 AND url = $2 AND removed_at IS NULL
			RETURNING id, created_at`, tenantID, u, fingerprint).Scan(&e.ID, &e.CreatedAt)
		if err != nil {
			return err
		}
		return notifyEndpoint(ctx, tx, e.ID)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return Endpoint{}, fmt.Errorf("endpoint %s: %w for this tenant", u, ErrNotFound)
	}
	if err != nil {
		return Endpoint{}, s.queryError("pin endpoint", err)
	}
	return e, nil
}

// RemoveEndpoint takes rawURL off the tenant's list. Its live subscriptions
// end with ReasonEndpointRemoved, so that Exchange's next callback for each
// is answered Unsubscribe (their rows stay for that); new registrations for
// the URL are refused. It returns how many subscriptions ended.
func (s *Store) RemoveEndpoint(ctx context.Context, tenantID int64, rawURL string) (ended int64, err error) {
	u, err := NormalizeEWSURL(rawURL)
	if err != nil {
		return 0, err
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var id int64
		err := tx.QueryRow(ctx, `SELECT id FROM ews_endpoints WHERE tenant_id = $1 AND url = $2 AND removed_at IS NULL`,
			tenantID, u).Scan(&id)
		if err != nil {
			return err
		}
		// Locks in the order registrations take them: their mailboxes, then
		// the endpoint row, which a registration holds in share mode from
		// its insert until it commits (trigger subscriptions_endpoint_live).
		// So the update of subscriptions below sees every registration that
		// got in first, and every later one sees the removal.
		var mailboxes [][]byte
		rows, err := tx.Query(ctx, `SELECT DISTINCT mailbox_hash FROM subscriptions WHERE endpoint_id = $1 AND state = 'active'`, id)
		if err != nil {
			return err
		}
		if mailboxes, err = pgx.CollectRows(rows, pgx.RowTo[[]byte]); err != nil {
			return err
		}
		if err := lockMailboxes(ctx, tx, tenantID, mailboxes); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE ews_endpoints SET removed_at = now() WHERE id = $1`, id); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
			UPDATE subscriptions SET state = 'ended', state_reason = $2, ended_at = now()
			WHERE endpoint_id = $1 AND state = 'active'`, id, ReasonEndpointRemoved)
		if err != nil {
			return err
		}
		ended = tag.RowsAffected()
		return notifyEndpoint(ctx, tx, id)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("endpoint %s: %w for this tenant", u, ErrNotFound)
	}
	if err != nil {
		return 0, s.queryError("remove endpoint", err)
	}
	return ended, nil
}

// notifyEndpoint tells every node, when tx commits, that endpoint id changed.
func notifyEndpoint(ctx context.Context, tx pgx.Tx, id int64) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, EndpointChannel, strconv.FormatInt(id, 10))
	return err
}

const endpointColumns = `id, tenant_id, kind, url, coalesce(fingerprint, ''), coalesce(oauth_client_id, ''),
	coalesce(oauth_authority, ''), coalesce(oauth_scope, ''), created_at`

func scanEndpoints(rows pgx.Rows, readAt time.Time) ([]Endpoint, error) {
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Endpoint, error) {
		e := Endpoint{ReadAt: readAt}
		err := row.Scan(&e.ID, &e.TenantID, &e.Kind, &e.URL, &e.Fingerprint, &e.OAuth.ClientID, &e.OAuth.Authority,
			&e.OAuth.Scope, &e.CreatedAt)
		return e, err
	})
}

// endpoints lists the live endpoints that meet condition, in the order
// they were added.
func (s *Store) endpoints(ctx context.Context, condition string, args ...any) ([]Endpoint, error) {
	return s.endpointsWhere(ctx, `removed_at IS NULL AND `+condition, args...)
}

func (s *Store) endpointsWhere(ctx context.Context, condition string, args ...any) ([]Endpoint, error) {
	readAt := time.Now()
	rows, err := s.pool.Query(ctx, `SELECT `+endpointColumns+` FROM ews_endpoints
		WHERE `+condition+` ORDER BY id`, args...)
	if err != nil {
		return nil, s.queryError("find endpoints", err)
	}
	endpoints, err := scanEndpoints(rows, readAt)
	if err != nil {
		return nil, s.queryError("find endpoints", err)
	}
	return endpoints, nil
}

// EndpointFor returns the tenant's entry matching rawURL after normalisation.
func (s *Store) EndpointFor(ctx context.Context, tenantID int64, rawURL string) (Endpoint, error) {
	u, err := NormalizeEWSURL(rawURL)
	if err != nil {
		return Endpoint{}, err
	}
	found, err := s.endpoints(ctx, `tenant_id = $1 AND url = $2`, tenantID, u)
	if err != nil {
		return Endpoint{}, err
	}
	if len(found) == 0 {
		return Endpoint{}, fmt.Errorf("endpoint %s: %w", u, ErrNotFound)
	}
	return found[0], nil
}

// Endpoints lists the tenant's allowed endpoints in the order they were added.
func (s *Store) Endpoints(ctx context.Context, tenantID int64) ([]Endpoint, error) {
	return s.endpoints(ctx, `tenant_id = $1`, tenantID)
}

// EndpointByID finds an endpoint that is not removed by its id.
func (s *Store) EndpointByID(ctx context.Context, id int64) (Endpoint, error) {
	return s.endpointByID(ctx, id, `removed_at IS NULL`)
}

// RemovedEndpointByID finds an endpoint by its id, removed or not: what the
// subscriptions it ended need to be ended at their source.
func (s *Store) RemovedEndpointByID(ctx context.Context, id int64) (Endpoint, error) {
	return s.endpointByID(ctx, id, `true`)
}

func (s *Store) endpointByID(ctx context.Context, id int64, condition string) (Endpoint, error) {
	found, err := s.endpointsWhere(ctx, condition+` AND id = $1`, id)
	if err != nil {
		return Endpoint{}, err
	}
	if len(found) == 0 {
		return Endpoint{}, fmt.Errorf("endpoint %d: %w", id, ErrNotFound)
	}
	return found[0], nil
}

// ListenEndpoints calls changed with the id of each endpoint whose entry
// changes (pin, removal, addition), and reset after each (re)connection,
// when changes may have been missed, until ctx ends. It holds one
// connection of its own; when that is lost it reports the error to failed
// and starts over a second later.
func (s *Store) ListenEndpoints(ctx context.Context, reset func(), changed func(id int64), failed func(error)) {
	s.listen(ctx, EndpointChannel, reset, func(payload string) error {
		if id, err := strconv.ParseInt(payload, 10, 64); err == nil {
			changed(id)
		}
		return nil
	}, failed)
}

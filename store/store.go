// Package store keeps ENSGate's state in PostgreSQL (pgx v5): tenants and
// their API tokens, allowed EWS endpoints, key pairs, devices, subscriptions
// and device compliance. Every node of a deployment shares one database.
package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Errors that callers map to user-facing messages.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
)

// Store is a handle on the database; it is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

// New wraps an existing pool (for example one shared across Caddy reloads).
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// DefaultConnectTimeout applies unless the URL sets connect_timeout.
const DefaultConnectTimeout = 10 * time.Second

// Open creates a connection pool for databaseURL. It does not connect yet:
// a database that is down at start-up is reported by the first query.
func Open(ctx context.Context, databaseURL string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		// pgx's message may quote the URL, password included.
		return nil, errors.New("invalid database URL: expected postgres://user:pass@host:port/db or key=value pairs")
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		// Without one, a database host that drops packets holds every
		// query for the operating system's TCP timeout (minutes).
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database pool: %w", err)
	}
	return &Store{pool: pool}, nil
}

// Pool exposes the pool for packages that run their own queries (LISTEN).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close releases every connection.
func (s *Store) Close() { s.pool.Close() }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return s.unreachable(err)
	}
	return nil
}

func (s *Store) unreachable(err error) error {
	return fmt.Errorf("database unreachable at %s: %w (%w)", Redact(s.pool.Config().ConnConfig.ConnString()), ErrUnavailable, err)
}

// ErrUnavailable is in every error that comes from not reaching the
// database (down, restarting, failing over), as opposed to a query it
// refused: callers answer "try again later", not "internal error".
var ErrUnavailable = errors.New("database unavailable")

// lostDatabase reports errors of a database that is away: no connection,
// a connection lost, or a server shutting down or starting up.
func lostDatabase(err error) bool {
	var connectErr *pgconn.ConnectError
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &connectErr), pgconn.SafeToRetry(err), pgconn.Timeout(err):
		return true
	case errors.As(err, &pgErr):
		// Class 08: connection exception; 57P01-03: admin shutdown, crash
		// shutdown, cannot connect now (starting or in recovery).
		return strings.HasPrefix(pgErr.Code, "08") || pgErr.Code == "57P01" || pgErr.Code == "57P02" || pgErr.Code == "57P03"
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

// Redact returns a database URL without its password, for messages.
func Redact(databaseURL string) string {
	u, err := url.Parse(databaseURL)
	if err != nil || u.Scheme == "" {
		return "(database)"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// execer is what a pool and a transaction have in common.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

const (
	uniqueViolation     = "23505"
	foreignKeyViolation = "23503"
)

func isUniqueViolation(err error) bool { return hasCode(err, uniqueViolation) }

func hasCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// queryError names the operation and, for connection failures, the
// database (without its password), so an admin sees where it went wrong.
func (s *Store) queryError(op string, err error) error {
	if lostDatabase(err) {
		err = s.unreachable(err)
	}
	return fmt.Errorf("%s: %w", op, err)
}

package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ensgate/ensgate/privacy"
)

// Tenant is an organisation using ENSGate; its API token selects it.
type Tenant struct {
	ID                int64
	Name              string
	NotificationLevel privacy.Level // the ceiling for its devices
	CreatedAt         time.Time
}

var tenantName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidateTenantName explains what a tenant name may contain.
func ValidateTenantName(name string) error {
	if !tenantName.MatchString(name) {
		return fmt.Errorf("tenant name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// apiTokenPrefix marks ENSGate tokens so secret scanners can find leaked ones.
const apiTokenPrefix = "ens_"

// NewAPIToken returns a random 256-bit token and the hash that is stored.
func NewAPIToken() (token string, hash []byte) {
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	token = apiTokenPrefix + base64.RawURLEncoding.EncodeToString(raw[:])
	return token, HashAPIToken(token)
}

// HashAPIToken is the stored form of a token. Tokens carry 256 random bits,
// so a plain SHA-256 cannot be brute-forced and keeps lookups one index probe.
func HashAPIToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// CreateTenant adds a tenant with a first API token and returns the token,
// which is not kept anywhere and cannot be shown again.
func (s *Store) CreateTenant(ctx context.Context, name string, level privacy.Level) (Tenant, string, error) {
	if err := ValidateTenantName(name); err != nil {
		return Tenant{}, "", err
	}
	if err := level.Check(); err != nil {
		return Tenant{}, "", err
	}
	token, hash := NewAPIToken()
	t := Tenant{Name: name, NotificationLevel: level}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx,
			`INSERT INTO tenants (name, notification_level) VALUES ($1, $2) RETURNING id, created_at`,
			name, level).Scan(&t.ID, &t.CreatedAt)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO api_tokens (tenant_id, token_hash) VALUES ($1, $2)`, t.ID, hash)
		return err
	})
	switch {
	case isUniqueViolation(err):
		return Tenant{}, "", fmt.Errorf("tenant %q: %w", name, ErrExists)
	case err != nil:
		return Tenant{}, "", s.queryError("create tenant", err)
	}
	return t, token, nil
}

// TenantByName finds a tenant by its (case-sensitive) name.
func (s *Store) TenantByName(ctx context.Context, name string) (Tenant, error) {
	t := Tenant{Name: name}
	err := s.pool.QueryRow(ctx,
		`SELECT id, notification_level, created_at FROM tenants WHERE name = $1`, name).
		Scan(&t.ID, &t.NotificationLevel, &t.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, fmt.Errorf("tenant %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Tenant{}, s.queryError("find tenant", err)
	}
	return t, nil
}

// TenantByToken finds the tenant owning an unrevoked API token.
func (s *Store) TenantByToken(ctx context.Context, token string) (Tenant, error) {
	var t Tenant
	if !strings.HasPrefix(token, apiTokenPrefix) {
		return Tenant{}, ErrNotFound
	}
	err := s.pool.QueryRow(ctx, `
		SELECT t.id, t.name, t.notification_level, t.created_at
		FROM api_tokens k JOIN tenants t ON t.id = k.tenant_id
		WHERE k.token_hash = $1 AND k.revoked_at IS NULL`, HashAPIToken(token)).
		Scan(&t.ID, &t.Name, &t.NotificationLevel, &t.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, ErrNotFound
	}
	if err != nil {
		return Tenant{}, s.queryError("find tenant by token", err)
	}
	return t, nil
}

// Tenants lists every tenant by name.
func (s *Store) Tenants(ctx context.Context) ([]Tenant, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, name, notification_level, created_at FROM tenants ORDER BY name`)
	if err != nil {
		return nil, s.queryError("list tenants", err)
	}
	tenants, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Tenant])
	if err != nil {
		return nil, s.queryError("list tenants", err)
	}
	return tenants, nil
}

// TenantByID finds a tenant by its id.
func (s *Store) TenantByID(ctx context.Context, id int64) (Tenant, error) {
	t := Tenant{ID: id}
	err := s.pool.QueryRow(ctx, `SELECT name, notification_level, created_at FROM tenants WHERE id = $1`, id).
		Scan(&t.Name, &t.NotificationLevel, &t.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, fmt.Errorf("tenant %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Tenant{}, s.queryError("find tenant", err)
	}
	return t, nil
}

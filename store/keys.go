package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// KeyPair is a device key pair: the public key in DER (PKIX) and the private
// key sealed under the master key named by MasterKeyID.
type KeyPair struct {
	ID               int64
	KeyID            string
	PublicKey        []byte
	SealedPrivateKey []byte
	MasterKeyID      string
}

const keyPairColumns = `id, key_id, public_key, sealed_private_key, master_key_id`

func scanKeyPair(row pgx.Row) (KeyPair, error) {
	var kp KeyPair
	err := row.Scan(&kp.ID, &kp.KeyID, &kp.PublicKey, &kp.SealedPrivateKey, &kp.MasterKeyID)
	return kp, err
}

// ErrPoolEmpty means no pre-generated key pair is free for the caller.
var ErrPoolEmpty = errors.New("key pool is empty")

// keyPoolLock serialises adding pairs to the pool across nodes, so that
// the pool does not overshoot its size.
const keyPoolLock = int64(0x656e73_6b657973) // "ens" "keys"

const freeKeyPairs = `SELECT count(*) FROM key_pairs WHERE assigned_at IS NULL AND master_key_id = ANY($1)`

// FreeKeyPairs counts the pool of key pairs sealed under one of
// masterKeyIDs (the keys a node can open; pairs under others are not
// handed out).
func (s *Store) FreeKeyPairs(ctx context.Context, masterKeyIDs []string) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, freeKeyPairs, masterKeyIDs).Scan(&n)
	if err != nil {
		return 0, s.queryError("count key pool", err)
	}
	return n, nil
}

// AddKeyPairs adds pairs to the pool while fewer than target are free
// under masterKeyIDs, and reports how many it added. Nodes generate pairs
// in parallel; adding them is serialised, so the pool never overshoots.
func (s *Store) AddKeyPairs(ctx context.Context, target int, masterKeyIDs []string, pairs []KeyPair) (added int, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, keyPoolLock); err != nil {
			return err
		}
		var free int
		if err := tx.QueryRow(ctx, freeKeyPairs, masterKeyIDs).Scan(&free); err != nil {
			return err
		}
		for _, kp := range pairs[:max(0, min(len(pairs), target-free))] {
			if _, err := tx.Exec(ctx, `
				INSERT INTO key_pairs (key_id, public_key, sealed_private_key, master_key_id)
				VALUES ($1, $2, $3, $4)`, kp.KeyID, kp.PublicKey, kp.SealedPrivateKey, kp.MasterKeyID); err != nil {
				return err
			}
			added++
		}
		return nil
	})
	if err != nil {
		return 0, s.queryError("add key pairs", err)
	}
	return added, nil
}

// KeyPairLimits bound one tenant's share of the key pool. A pair handed
// out and not yet used by a registration is "outstanding" until MaxAge has
// passed since it was first handed out; then it has expired.
type KeyPairLimits struct {
	MaxAge time.Duration
	// PerTenant is how many outstanding pairs a tenant may hold.
	PerTenant int
	// PerAddress is how many of them one client address may hold, so that
	// one app or host cannot take the tenant's whole share and refuse
	// every other device of the tenant.
	PerAddress int
	// ClientAddress is the client asking: the pair records it, and
	// PerAddress bounds the pairs it holds.
	ClientAddress string
	// Reserve free pairs are kept for tenants holding fewer than Reserve
	// outstanding pairs, so that one tenant's run on the pool, even below
	// its cap, cannot leave the others without keys.
	Reserve int
}

// ErrKeyPairExpired means a device's key pair was handed out longer ago
// than KeyPairLimits.MaxAge and was never used.
var ErrKeyPairExpired = errors.New("key pair expired unused")

// KeyPairCapError means the tenant already holds KeyPairLimits.PerTenant
// outstanding key pairs, or the client address PerAddress; the oldest of
// them expires after RetryAfter.
type KeyPairCapError struct {
	RetryAfter time.Duration
	// ByAddress says the client address's cap was reached, not the
	// tenant's.
	ByAddress bool
}

func (e *KeyPairCapError) Error() string {
	holder := "tenant"
	if e.ByAddress {
		holder = "client address"
	}
	return fmt.Sprintf("the %s holds its limit of unused key pairs; the next expires in %s", holder, e.RetryAfter)
}

// keyPairTenantLock is the class of the per-tenant transaction advisory
// lock (the two-integer key space, apart from the single-bigint locks)
// that serialises a tenant's key requests on every node, so that its
// count of outstanding pairs holds.
const keyPairTenantLock = int32(0x6b657973) // "keys"

// AssignKeyPair hands a key pair sealed under one of masterKeyIDs to a
// device: the device's own outstanding pair if it has one, otherwise a free
// pair from the pool, within lim. Asking again does not extend a pair's
// life: else a client asking every few minutes would hold its pairs, and
// its share of the caps, for ever. It returns a *KeyPairCapError when the
// tenant is at lim.PerTenant or the client address at lim.PerAddress, and
// ErrPoolEmpty when no free pair is left for it. Concurrent callers, on any
// node, never get the same free pair nor take a tenant or an address past
// its limit.
func (s *Store) AssignKeyPair(ctx context.Context, tenantID int64, deviceID string, masterKeyIDs []string, lim KeyPairLimits) (KeyPair, error) {
	var kp KeyPair
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The tenant's lock also serialises its addresses' counts.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashint8($2))`, keyPairTenantLock, tenantID); err != nil {
			return err
		}
		var err error
		kp, err = scanKeyPair(tx.QueryRow(ctx, `
			SELECT `+keyPairColumns+` FROM key_pairs WHERE tenant_id = $1 AND device_id = $2
				AND assigned_at > now() - $3::interval AND master_key_id = ANY($4)
			ORDER BY assigned_at DESC LIMIT 1`, tenantID, deviceID, lim.MaxAge, masterKeyIDs))
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		var held, heldByAddress int
		var oldestLeft, oldestByAddressLeft float64
		// statement_timestamp, not now(): this transaction began before it
		// waited for the lock, and pairs assigned meanwhile are not in its
		// future.
		if err := tx.QueryRow(ctx, `
			SELECT count(*), count(*) FILTER (WHERE client_address = $3),
				coalesce(extract(epoch FROM min(assigned_at) + $2::interval - statement_timestamp()), 0),
				coalesce(extract(epoch FROM min(assigned_at) FILTER (WHERE client_address = $3) + $2::interval - statement_timestamp()), 0)
			FROM key_pairs WHERE tenant_id = $1 AND assigned_at > now() - $2::interval`,
			tenantID, lim.MaxAge, lim.ClientAddress).Scan(&held, &heldByAddress, &oldestLeft, &oldestByAddressLeft); err != nil {
			return err
		}
		if heldByAddress >= lim.PerAddress {
			return &KeyPairCapError{RetryAfter: time.Duration(oldestByAddressLeft * float64(time.Second)), ByAddress: true}
		}
		if held >= lim.PerTenant {
			return &KeyPairCapError{RetryAfter: time.Duration(oldestLeft * float64(time.Second))}
		}
		if held >= lim.Reserve {
			var free int
			if err := tx.QueryRow(ctx, freeKeyPairs, masterKeyIDs).Scan(&free); err != nil {
				return err
			}
			if free <= lim.Reserve {
				return ErrPoolEmpty
			}
		}
		kp, err = scanKeyPair(tx.QueryRow(ctx, `
			UPDATE key_pairs SET tenant_id = $1, device_id = $2, client_address = $4, assigned_at = now()
			WHERE id = (SELECT id FROM key_pairs WHERE assigned_at IS NULL AND master_key_id = ANY($3)
				ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
			RETURNING `+keyPairColumns, tenantID, deviceID, masterKeyIDs, lim.ClientAddress))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrPoolEmpty
		}
		return err
	})
	var capErr *KeyPairCapError
	switch {
	case errors.Is(err, ErrPoolEmpty) || errors.As(err, &capErr):
		return KeyPair{}, err
	case err != nil:
		return KeyPair{}, s.queryError("assign key pair", err)
	}
	return kp, nil
}

// DeviceKeyPair returns the key pair keyID if it was assigned to this
// tenant's device, or ErrKeyPairExpired if it was handed out longer ago
// than maxAge.
func (s *Store) DeviceKeyPair(ctx context.Context, tenantID int64, deviceID, keyID string, maxAge time.Duration) (KeyPair, error) {
	var kp KeyPair
	var fresh bool
	err := s.pool.QueryRow(ctx, `SELECT `+keyPairColumns+`, assigned_at > now() - $4::interval FROM key_pairs
		WHERE key_id = $1 AND tenant_id = $2 AND device_id = $3`, keyID, tenantID, deviceID, maxAge).
		Scan(&kp.ID, &kp.KeyID, &kp.PublicKey, &kp.SealedPrivateKey, &kp.MasterKeyID, &fresh)
	if errors.Is(err, pgx.ErrNoRows) {
		return KeyPair{}, fmt.Errorf("key %q for this device: %w", keyID, ErrNotFound)
	}
	if err != nil {
		return KeyPair{}, s.queryError("find key pair", err)
	}
	if !fresh {
		return KeyPair{}, fmt.Errorf("key %q for this device: %w", keyID, ErrKeyPairExpired)
	}
	return kp, nil
}

// KeyPairsSealedUnder returns up to limit key pairs, free or assigned,
// sealed under one of masterKeyIDs.
func (s *Store) KeyPairsSealedUnder(ctx context.Context, masterKeyIDs []string, limit int) ([]KeyPair, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+keyPairColumns+` FROM key_pairs
		WHERE master_key_id = ANY($1) ORDER BY id LIMIT $2`, masterKeyIDs, limit)
	if err != nil {
		return nil, s.queryError("find key pairs to re-seal", err)
	}
	pairs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (KeyPair, error) { return scanKeyPair(row) })
	if err != nil {
		return nil, s.queryError("find key pairs to re-seal", err)
	}
	return pairs, nil
}

// ResealKeyPair replaces the sealed private key of kp (as read) with sealed,
// made under masterKeyID. It reports false, changing nothing, if the row
// changed or went away meanwhile (another node re-sealed or used it).
func (s *Store) ResealKeyPair(ctx context.Context, kp KeyPair, sealed []byte, masterKeyID string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `
		UPDATE key_pairs SET sealed_private_key = $3, master_key_id = $4
		WHERE id = $1 AND master_key_id = $2`, kp.ID, kp.MasterKeyID, sealed, masterKeyID)
	if err != nil {
		return false, s.queryError("re-seal key pair", err)
	}
	return tag.RowsAffected() == 1, nil
}

// DeleteKeyPair removes one key pair.
func (s *Store) DeleteKeyPair(ctx context.Context, id int64) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM key_pairs WHERE id = $1`, id); err != nil {
		return s.queryError("delete key pair", err)
	}
	return nil
}

// DeleteStaleKeyPairs removes key pairs handed out longer ago than maxAge
// and never used for a registration (a registration deletes its pair).
func (s *Store) DeleteStaleKeyPairs(ctx context.Context, maxAge time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM key_pairs WHERE assigned_at < now() - $1::interval`, maxAge)
	if err != nil {
		return 0, s.queryError("delete stale key pairs", err)
	}
	return tag.RowsAffected(), nil
}

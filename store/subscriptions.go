package store

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// Subscription is a mailbox's EWS push subscription.
type Subscription struct {
	ID                int64
	PublicID          string // ENSGate's opaque id: the callback's `id`, the API's subscriptionId
	TenantID          int64
	MailboxHash       []byte
	EndpointID        int64
	AuthType          string    // basic, oauth, cert
	SealedCredentials []byte    // opened only with the key in Exchange's callback URL
	Source            string    // ews or graph
	RemoteID          string    // the subscription's id at Exchange (EWS) or Graph
	ExpiresAt         time.Time // Graph's expiry, unless renewed; zero for EWS
	Watermark         string
	StatusFrequency   int    // minutes between Exchange's status pings
	State             string // active, failed, ended
	StateReason       string
	LastSeenAt        time.Time
	CreatedAt         time.Time
}

// Mail sources: EWS push subscriptions or Microsoft Graph change
// notifications.
const (
	SourceEWS   = "ews"
	SourceGraph = "graph"
)

// nullTime is NULL for the zero time.
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// Subscription states.
const (
	SubscriptionActive = "active"
	SubscriptionFailed = "failed"
	SubscriptionEnded  = "ended"
)

// Reasons recorded when a subscription stops.
const (
	ReasonSuperseded   = "superseded"
	ReasonNoDevices    = "no_devices"
	ReasonSilent       = "silent"       // Exchange stopped calling back
	ReasonExpired      = "expired"      // a Graph subscription was not renewed in time
	ReasonUnauthorized = "unauthorized" // Exchange refused the credentials
	// ReasonReverify: made before mailbox binding, so never checked to
	// belong to its mailbox; its devices are asked to register again.
	ReasonReverify = "reverify"
)

const subscriptionColumns = `id, public_id, tenant_id, mailbox_hash, endpoint_id, auth_type,
	sealed_credentials, source, remote_id, expires_at, coalesce(watermark, ''), status_frequency, state,
	coalesce(state_reason, ''), last_seen_at, created_at`

func scanSubscription(row pgx.Row) (Subscription, error) {
	var s Subscription
	var expires *time.Time
	err := row.Scan(&s.ID, &s.PublicID, &s.TenantID, &s.MailboxHash, &s.EndpointID, &s.AuthType,
		&s.SealedCredentials, &s.Source, &s.RemoteID, &expires, &s.Watermark, &s.StatusFrequency, &s.State,
		&s.StateReason, &s.LastSeenAt, &s.CreatedAt)
	if expires != nil {
		s.ExpiresAt = *expires
	}
	return s, err
}

// Registration is what a successful registerdevicev2 stores at once.
type Registration struct {
	Subscription Subscription // the new subscription (ID, state and times are set by Register)
	Device       Device       // the device (ID, state and times are set by Register)
	Owner        DeviceOwner  // the secret and mailbox presented: checked against the device row under lock
	KeyPairID    int64        // the key pair used; deleted, as RSA is used once

	// FormerMailboxHashes are the mailbox's hashes under master keys that
	// are being rotated out: its rows found under them move to the new
	// hash, so the mailbox keeps one subscription for all its devices.
	FormerMailboxHashes [][]byte
}

// Register stores a new subscription for the device's mailbox, superseding
// the mailbox's live one, and creates or updates the device. A device that
// moves to another mailbox leaves it, ending that mailbox's subscription if
// no device is left there.
func (s *Store) Register(ctx context.Context, reg Registration) (Subscription, error) {
	sub, dev := reg.Subscription, reg.Device
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Locks are taken mailboxes first, then device rows, then subscription
		// rows (the order SetDeviceState uses for rows), so that no two
		// transactions wait on each other in a circle.
		previousMailbox := func(lock string) ([]byte, error) {
			var hash []byte
			err := tx.QueryRow(ctx, `SELECT mailbox_hash FROM devices WHERE tenant_id = $1 AND device_id = $2 AND state = 'active' `+lock,
				dev.TenantID, dev.DeviceID).Scan(&hash)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil, nil
			}
			return hash, err
		}
		previous, err := previousMailbox("")
		if err != nil {
			return err
		}
		mailboxes := append([][]byte{sub.MailboxHash}, reg.FormerMailboxHashes...)
		if err := lockMailboxes(ctx, tx, sub.TenantID, append(slices.Clip(mailboxes), previous)); err != nil {
			return err
		}
		if previous, err = previousMailbox("FOR UPDATE"); err != nil { // it may have moved before the lock
			return err
		}
		owner := reg.Owner // for the device registered, whatever the caller filled in
		owner.TenantID, owner.DeviceID = dev.TenantID, dev.DeviceID
		// A new id has no row to lock: two registrations that both found it
		// free queue here, and the second sees the first's row.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('ensgate device'), hashtext($1::bigint || ':' || $2))`,
			dev.TenantID, dev.DeviceID); err != nil {
			return err
		}
		if _, err := checkOwner(ctx, tx, owner, "FOR UPDATE"); err != nil {
			return err
		}
		// Checked again here: an admin may block or remove the device while
		// its registration waits for Exchange.
		var refused bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM device_compliance
			WHERE tenant_id = $1 AND device_id = $2 AND state <> 'compliant')`, dev.TenantID, dev.DeviceID).Scan(&refused); err != nil {
			return err
		}
		if refused {
			return ErrDeviceRefused
		}
		if len(reg.FormerMailboxHashes) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE devices SET mailbox_hash = $2 WHERE tenant_id = $1 AND mailbox_hash = ANY($3) AND state = 'active'`,
				sub.TenantID, sub.MailboxHash, reg.FormerMailboxHashes); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `
			UPDATE subscriptions SET state = 'ended', state_reason = $3, ended_at = now()
			WHERE tenant_id = $1 AND mailbox_hash = ANY($2) AND state = 'active'`,
			sub.TenantID, mailboxes, ReasonSuperseded); err != nil {
			return err
		}
		if len(reg.FormerMailboxHashes) > 0 {
			// After the superseding above, so no second live row appears under the new hash.
			if _, err := tx.Exec(ctx, `UPDATE subscriptions SET mailbox_hash = $2 WHERE tenant_id = $1 AND mailbox_hash = ANY($3)`,
				sub.TenantID, sub.MailboxHash, reg.FormerMailboxHashes); err != nil {
				return err
			}
		}
		sub, err = scanSubscription(tx.QueryRow(ctx, `
			INSERT INTO subscriptions (public_id, tenant_id, mailbox_hash, endpoint_id, auth_type,
				sealed_credentials, source, remote_id, expires_at, watermark, status_frequency)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULLIF($10, ''), $11)
			RETURNING `+subscriptionColumns,
			sub.PublicID, sub.TenantID, sub.MailboxHash, sub.EndpointID, sub.AuthType,
			sub.SealedCredentials, cmp.Or(sub.Source, SourceEWS), sub.RemoteID, nullTime(sub.ExpiresAt), sub.Watermark, sub.StatusFrequency))
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO devices (tenant_id, device_id, mailbox_hash, platform, push_token, topic, notification_level, secret_hash)
			VALUES ($1, $2, $3, $4, $5, NULLIF($6, ''), $7, $8)
			ON CONFLICT (tenant_id, device_id) DO UPDATE SET
				mailbox_hash = excluded.mailbox_hash, platform = excluded.platform,
				push_token = excluded.push_token, topic = excluded.topic,
				notification_level = excluded.notification_level, secret_hash = excluded.secret_hash,
				state = 'active', state_reason = NULL, registered_at = now(), state_changed_at = now()`,
			dev.TenantID, dev.DeviceID, dev.MailboxHash, dev.Platform, dev.PushToken, dev.Topic, dev.NotificationLevel, dev.SecretHash); err != nil {
			return err
		}
		if previous != nil && string(previous) != string(dev.MailboxHash) {
			if _, err := endIfNoDevices(ctx, tx, dev.TenantID, previous); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `DELETE FROM key_pairs WHERE id = $1`, reg.KeyPairID)
		return err
	})
	if errors.Is(err, ErrNotOwner) || errors.Is(err, ErrDeviceRefused) {
		return Subscription{}, err
	}
	if hasCode(err, foreignKeyViolation) {
		// The endpoint was removed while Exchange was being called
		// (the subscriptions_endpoint_live trigger).
		return Subscription{}, ErrEndpointRemoved
	}
	if err != nil {
		return Subscription{}, s.queryError("register device", err)
	}
	return sub, nil
}

// ErrDeviceRefused means the device is blocked, wiped or not compliant.
var ErrDeviceRefused = errors.New("the device is blocked, wiped or not compliant")

// ErrEndpointRemoved means a registration lost the race with the removal
// of its EWS endpoint.
var ErrEndpointRemoved = errors.New("the EWS endpoint was removed")

// lockMailboxes serialises the registrations that touch any of the mailboxes
// (nil hashes are skipped) until the transaction ends, so that two at once
// cannot both supersede the same subscription and insert a live one each.
// The locks are taken in a fixed order: two registrations never wait on
// each other in a circle.
func lockMailboxes(ctx context.Context, tx pgx.Tx, tenantID int64, hashes [][]byte) error {
	var keys []int64
	for _, h := range hashes {
		if h == nil {
			continue
		}
		var b [8]byte
		copy(b[:], h) // a keyed hash: its first bytes are as good as random
		keys = append(keys, int64(binary.BigEndian.Uint64(b[:]))^tenantID)
	}
	slices.Sort(keys)
	for _, k := range slices.Compact(keys) {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, k); err != nil {
			return err
		}
	}
	return nil
}

// endIfNoDevices ends the mailbox's live subscription if it has no active
// device left; Exchange learns it at its next callback.
func endIfNoDevices(ctx context.Context, q execer, tenantID int64, mailboxHash []byte) (bool, error) {
	tag, err := q.Exec(ctx, `
		UPDATE subscriptions SET state = 'ended', state_reason = $3, ended_at = now()
		WHERE tenant_id = $1 AND mailbox_hash = $2 AND state = 'active'
		AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.tenant_id = $1 AND d.mailbox_hash = $2 AND d.state = 'active')`,
		tenantID, mailboxHash, ReasonNoDevices)
	return tag.RowsAffected() > 0, err
}

// SubscriptionByPublicID finds a subscription in any state.
func (s *Store) SubscriptionByPublicID(ctx context.Context, publicID string) (Subscription, error) {
	return s.subscription(ctx, `WHERE public_id = $1`, publicID)
}

// SubscriptionByID finds a subscription in any state by its row id.
func (s *Store) SubscriptionByID(ctx context.Context, id int64) (Subscription, error) {
	return s.subscription(ctx, `WHERE id = $1`, id)
}

// LatestSubscription returns the mailbox's newest subscription in any state.
func (s *Store) LatestSubscription(ctx context.Context, tenantID int64, mailboxHash []byte) (Subscription, error) {
	return s.subscription(ctx, `WHERE tenant_id = $1 AND mailbox_hash = $2 ORDER BY id DESC LIMIT 1`, tenantID, mailboxHash)
}

// subscription finds the first subscription the query's tail selects.
func (s *Store) subscription(ctx context.Context, tail string, args ...any) (Subscription, error) {
	sub, err := scanSubscription(s.pool.QueryRow(ctx, `SELECT `+subscriptionColumns+` FROM subscriptions `+tail, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return Subscription{}, ErrNotFound
	}
	if err != nil {
		return Subscription{}, s.queryError("find subscription", err)
	}
	return sub, nil
}

// MarkSeen records that Exchange called back for an active subscription,
// and the newest watermark it sent.
func (s *Store) MarkSeen(ctx context.Context, id int64, watermark string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE subscriptions SET last_seen_at = now(), watermark = coalesce(NULLIF($2, ''), watermark)
		WHERE id = $1 AND state = 'active'`, id, watermark)
	if err != nil {
		return s.queryError("mark subscription seen", err)
	}
	return nil
}

// StopSubscription moves an active subscription to state (failed or ended)
// with a reason. It reports whether this call made the change, so that of
// several nodes exactly one acts on it.
//
// then, if not nil, runs in the same transaction when this call changed
// the state.
func (s *Store) StopSubscription(ctx context.Context, id int64, state, reason string, then Then) (changed bool, err error) {
	if state != SubscriptionFailed && state != SubscriptionEnded {
		return false, fmt.Errorf("stop subscription: bad state %q", state)
	}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			UPDATE subscriptions SET state = $2, state_reason = $3, ended_at = now()
			WHERE id = $1 AND state = 'active'`, id, state, reason)
		if err != nil {
			return err
		}
		changed = tag.RowsAffected() > 0
		if changed && then != nil {
			return then(ctx, tx)
		}
		return nil
	})
	if err != nil {
		return false, s.queryError("stop subscription", err)
	}
	return changed, nil
}

// FailSilentSubscriptions fails active subscriptions that Exchange (or
// Graph) has not called back for in twice their status frequency, and Graph
// subscriptions past their expiry, and returns them; each
// is returned to one caller only. then, if not nil, runs in the same
// transaction with what failed.
func (s *Store) FailSilentSubscriptions(ctx context.Context, limit int, then func(context.Context, pgx.Tx, []Subscription) error) (subs []Subscription, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			UPDATE subscriptions SET state = 'failed', ended_at = now(),
				state_reason = CASE WHEN expires_at < now() THEN $3 ELSE $2 END
			WHERE id IN (
				SELECT id FROM subscriptions
				WHERE state = 'active' AND (last_seen_at < now() - make_interval(mins => 2 * status_frequency)
					OR expires_at < now())
				ORDER BY last_seen_at LIMIT $1 FOR UPDATE SKIP LOCKED)
			AND state = 'active'
			RETURNING `+subscriptionColumns, limit, ReasonSilent, ReasonExpired)
		if err != nil {
			return err
		}
		subs, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Subscription, error) { return scanSubscription(row) })
		if err != nil || len(subs) == 0 || then == nil {
			return err
		}
		return then(ctx, tx, subs)
	})
	if err != nil {
		return nil, s.queryError("fail silent subscriptions", err)
	}
	return subs, nil
}

// credentialsLock serialises credential updates per subscription.
const credentialsLock = int32(0x63726564) // "cred"

// UpdateCredentials replaces a live subscription's sealed credentials with
// what change makes of the current ones, one caller at a time per
// subscription: a refresh token that rotates is redeemed once, and the next
// caller sees its result. change returns nil to leave them. It returns the
// credentials stored after the call, and ErrNotFound if the subscription
// is not live.
func (s *Store) UpdateCredentials(ctx context.Context, id int64, change func(current []byte) ([]byte, error)) ([]byte, error) {
	var stored []byte
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// An advisory lock, not the row's: change may wait on a token
		// endpoint, and the row's other writers (a callback marking it seen)
		// must not wait with it.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashint8($2))`, credentialsLock, id); err != nil {
			return err
		}
		if err := tx.QueryRow(ctx, `SELECT sealed_credentials FROM subscriptions WHERE id = $1 AND state = 'active'`,
			id).Scan(&stored); err != nil {
			return err
		}
		next, err := change(stored)
		if err != nil || next == nil {
			return err
		}
		stored = next
		_, err = tx.Exec(ctx, `UPDATE subscriptions SET sealed_credentials = $2 WHERE id = $1`, id, next)
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, s.queryError("update credentials", err)
	}
	return stored, nil
}

// SetRemoteSubscription records a live subscription's id at its source and
// its expiry, after a renewal or after Graph's subscription was made anew.
func (s *Store) SetRemoteSubscription(ctx context.Context, id int64, remoteID string, expiresAt time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE subscriptions SET remote_id = $2, expires_at = $3 WHERE id = $1 AND state = 'active'`,
		id, remoteID, nullTime(expiresAt))
	if err != nil {
		return s.queryError("record the subscription's renewal", err)
	}
	return nil
}

package store

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// ClaimPushes claims the (item, device) pushes not yet done or in progress
// elsewhere and returns the devices this caller now owns, and whether some
// of the others are still in progress elsewhere (not done, and not handed
// to a push job, which sees them through). A claim lasts for lease; one
// whose owner died without finishing can be claimed again after.
// Concurrent callers (Exchange's retries on other nodes) never own the
// same push.
func (s *Store) ClaimPushes(ctx context.Context, subscriptionID int64, itemHash []byte, deviceIDs []int64, lease time.Duration) (claimed []int64, othersPending bool, err error) {
	rows, err := s.pool.Query(ctx, `
		INSERT INTO push_claims (subscription_id, item_hash, device_id, claimed_until)
		SELECT $1, $2, d, now() + $4::interval FROM unnest($3::bigint[]) AS d
		ON CONFLICT (subscription_id, item_hash, device_id) DO UPDATE SET claimed_until = excluded.claimed_until
			WHERE push_claims.done_at IS NULL AND push_claims.claimed_until < now()
		RETURNING device_id`, subscriptionID, itemHash, deviceIDs, lease)
	if err != nil {
		return nil, false, s.queryError("claim pushes", err)
	}
	if claimed, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		return nil, false, s.queryError("claim pushes", err)
	}
	if len(claimed) == len(deviceIDs) {
		return claimed, false, nil
	}
	err = s.pool.QueryRow(ctx, `
		SELECT EXISTS (SELECT 1 FROM push_claims
			WHERE subscription_id = $1 AND item_hash = $2 AND device_id = ANY($3)
			AND NOT device_id = ANY($4) AND done_at IS NULL AND claimed_until <> 'infinity')`,
		subscriptionID, itemHash, deviceIDs, claimed).Scan(&othersPending)
	if err != nil {
		return nil, false, s.queryError("claim pushes", err)
	}
	return claimed, othersPending, nil
}

// PushOutcome is what became of a push (migrations/003_jobs.sql).
type PushOutcome string

// Push outcomes.
const (
	PushDelivered    PushOutcome = "delivered"
	PushRejected     PushOutcome = "rejected"
	PushTokenDead    PushOutcome = "token_dead"
	PushNotAnnounced PushOutcome = "not_announced"
	PushExpired      PushOutcome = "expired"
)

// FinishPushes marks claimed pushes done with their outcome. A push done
// already keeps its first outcome: the record holds at most one delivery.
func (s *Store) FinishPushes(ctx context.Context, subscriptionID int64, itemHash []byte, deviceIDs []int64, outcome PushOutcome) error {
	if len(deviceIDs) == 0 {
		return nil
	}
	_, err := s.pool.Exec(ctx, `UPDATE push_claims SET done_at = now(), outcome = $4
		WHERE subscription_id = $1 AND item_hash = $2 AND device_id = ANY($3) AND done_at IS NULL`,
		subscriptionID, itemHash, deviceIDs, outcome)
	if err != nil {
		return s.queryError("finish pushes", err)
	}
	return nil
}

// QueuePushes hands claimed pushes to a durable job: then inserts it for
// those not done and not another job's already, in the same transaction
// that makes their claims the job's until it finishes them, so no node
// claims them meanwhile and none is lost if this one dies. (A claim whose
// lease ran out is still queued: another node may be pushing it too, and
// the collapse id makes the device replace one with the other, while
// leaving it would lose it.)
func (s *Store) QueuePushes(ctx context.Context, subscriptionID int64, itemHash []byte, deviceIDs []int64,
	then func(ctx context.Context, tx pgx.Tx, owned []int64) error) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE push_claims SET claimed_until = 'infinity'
			WHERE subscription_id = $1 AND item_hash = $2 AND device_id = ANY($3) AND done_at IS NULL
				AND claimed_until <> 'infinity'
			RETURNING device_id`, subscriptionID, itemHash, deviceIDs)
		if err != nil {
			return err
		}
		owned, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(owned) == 0 {
			return err
		}
		return then(ctx, tx, owned)
	})
	if err != nil {
		return s.queryError("queue pushes", err)
	}
	return nil
}

// ReleasePushes drops unfinished claims so that Exchange's next retry can
// try those pushes again.
func (s *Store) ReleasePushes(ctx context.Context, subscriptionID int64, itemHash []byte, deviceIDs []int64) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM push_claims
		WHERE subscription_id = $1 AND item_hash = $2 AND device_id = ANY($3) AND done_at IS NULL`,
		subscriptionID, itemHash, deviceIDs)
	if err != nil {
		return s.queryError("release pushes", err)
	}
	return nil
}

// DeleteOldClaims forgets claims older than maxAge; Exchange never retries
// a notification that long.
func (s *Store) DeleteOldClaims(ctx context.Context, maxAge time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM push_claims WHERE created_at < now() - $1::interval`, maxAge)
	if err != nil {
		return 0, s.queryError("delete old claims", err)
	}
	return tag.RowsAffected(), nil
}

// HurryJobs makes the retrying jobs of kind due now: APNs or FCM is back,
// and the pushes waiting for it need not wait out their back-off.
func (s *Store) HurryJobs(ctx context.Context, kind string) (int64, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE river_job SET scheduled_at = now()
		WHERE kind = $1 AND state = 'retryable' AND scheduled_at > now()`, kind)
	if err != nil {
		return 0, s.queryError("hurry jobs", err)
	}
	return tag.RowsAffected(), nil
}

package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// ENSGate's durable jobs (pushes waiting for APNs or FCM, "register again"
// pushes, key generation, the health check and the clean-up) are River jobs
// in this database: every node works them, each job once, and the jobs of a
// node that died are taken over (package ens, jobs.go).

// jobsMigrationLock serialises River's migrations between nodes migrating
// at once (River's own migrator does not).
const jobsMigrationLock = 0x656e_7306 // "ens" 6

// migrateJobs brings River's tables (river_*) up to the version of the
// River this binary links.
func (s *Store) migrateJobs(ctx context.Context) error {
	migrator, err := rivermigrate.New(riverpgxv5.New(s.pool), nil)
	if err != nil {
		return fmt.Errorf("job migrations: %w", err)
	}
	// River's migrations each run in a transaction of their own (one adds
	// an enum value that the next uses), so the lock is a session's.
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return s.unreachable(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, jobsMigrationLock); err != nil {
		return s.queryError("job migrations", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, jobsMigrationLock)
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return s.queryError("job migrations", err)
	}
	return nil
}

// Then runs inside a store transaction, after its change and before its
// commit: work that must happen if and only if the change does (a job
// inserted with River's InsertTx) goes there.
type Then func(ctx context.Context, tx pgx.Tx) error

// JobCount is how many jobs of a kind are in a state (available, running,
// retryable, scheduled, pending).
type JobCount struct {
	Kind, State string
	Count       int
}

// JobCounts counts the jobs not finished, by kind and state.
func (s *Store) JobCounts(ctx context.Context) ([]JobCount, error) {
	rows, err := s.pool.Query(ctx, `SELECT kind, state::text, count(*) FROM river_job
		WHERE state NOT IN ('completed', 'cancelled', 'discarded') GROUP BY 1, 2`)
	if err != nil {
		return nil, s.queryError("count jobs", err)
	}
	counts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[JobCount])
	if err != nil {
		return nil, s.queryError("count jobs", err)
	}
	return counts, nil
}

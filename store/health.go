package store

import (
	"context"
	"time"
)

// SubscriptionHealth summarises a tenant's subscriptions for an operator.
// It holds counts and times only: nothing names or identifies a mailbox,
// not even its hash, so it may be shown and logged freely.
type SubscriptionHealth struct {
	AsOf                  time.Time // the database's clock, which the times below are measured against
	Active, Failed, Ended int
	// Overdue counts the active subscriptions that Exchange has not called
	// back for in longer than their status frequency: at twice it, the
	// liveness check fails them as silent.
	Overdue int
	// OldestHeard and NewestHeard are the earliest and latest times Exchange
	// was last heard from across the active subscriptions; zero without any.
	OldestHeard, NewestHeard time.Time
	Groups                   []SubscriptionGroup // active first, then failed, then ended; by reason within a state
}

// SubscriptionGroup counts a tenant's subscriptions in one state with one
// reason (empty for active ones).
type SubscriptionGroup struct {
	State, Reason string
	Count         int
}

// SubscriptionHealth summarises the tenant's subscriptions in one statement,
// so that the counts and times are of one moment.
func (s *Store) SubscriptionHealth(ctx context.Context, tenantID int64) (SubscriptionHealth, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT now(), state, coalesce(state_reason, ''), count(*), min(last_seen_at), max(last_seen_at),
			count(*) FILTER (WHERE last_seen_at < now() - make_interval(mins => status_frequency))
		FROM subscriptions WHERE tenant_id = $1
		GROUP BY state, coalesce(state_reason, '')
		ORDER BY array_position(ARRAY['active', 'failed', 'ended'], state), 3`, tenantID)
	if err != nil {
		return SubscriptionHealth{}, s.queryError("summarise subscriptions", err)
	}
	defer rows.Close()
	var h SubscriptionHealth
	for rows.Next() {
		var g SubscriptionGroup
		var oldest, newest time.Time
		var overdue int
		if err := rows.Scan(&h.AsOf, &g.State, &g.Reason, &g.Count, &oldest, &newest, &overdue); err != nil {
			return SubscriptionHealth{}, s.queryError("summarise subscriptions", err)
		}
		h.Groups = append(h.Groups, g)
		switch g.State {
		case SubscriptionActive:
			h.Active += g.Count
			h.Overdue += overdue
			if h.OldestHeard.IsZero() || oldest.Before(h.OldestHeard) {
				h.OldestHeard = oldest
			}
			if newest.After(h.NewestHeard) {
				h.NewestHeard = newest
			}
		case SubscriptionFailed:
			h.Failed += g.Count
		case SubscriptionEnded:
			h.Ended += g.Count
		}
	}
	if err := rows.Err(); err != nil {
		return SubscriptionHealth{}, s.queryError("summarise subscriptions", err)
	}
	if h.AsOf.IsZero() { // no rows: still say when
		if err := s.pool.QueryRow(ctx, `SELECT now()`).Scan(&h.AsOf); err != nil {
			return SubscriptionHealth{}, s.queryError("summarise subscriptions", err)
		}
	}
	return h, nil
}

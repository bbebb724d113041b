package store

import "context"

// SubscriptionCounts counts all subscriptions by state, for metrics.
func (s *Store) SubscriptionCounts(ctx context.Context) (map[string]int, error) {
	counts := map[string]int{SubscriptionActive: 0, SubscriptionFailed: 0, SubscriptionEnded: 0}
	rows, err := s.pool.Query(ctx, `SELECT state, count(*) FROM subscriptions GROUP BY state`)
	if err != nil {
		return nil, s.queryError("count subscriptions", err)
	}
	defer rows.Close()
	for rows.Next() {
		var state string
		var n int
		if err := rows.Scan(&state, &n); err != nil {
			return nil, s.queryError("count subscriptions", err)
		}
		counts[state] = n
	}
	if err := rows.Err(); err != nil {
		return nil, s.queryError("count subscriptions", err)
	}
	return counts, nil
}

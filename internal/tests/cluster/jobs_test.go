package cluster

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ensgate/ensgate/ens"
	"github.com/jackc/pgx/v5"
)

// What the database says happened: River's jobs (river_job) and the push
// records (push_claims), read through the nodes' own DATABASE_URL, so
// that after a failover the test reads the new primary.

// query runs fn on a connection of its own, trying again for up to a
// minute while the database is away (restarted, failing over).
func (c *cluster) query(what string, fn func(ctx context.Context, conn *pgx.Conn) error) {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		err := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := pgx.Connect(ctx, c.dbURL)
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			return fn(ctx, conn)
		}()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("reading %s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// mailboxHashes are the mailboxes' hashes, from their devices' rows.
func (c *cluster) mailboxHashes() map[string][]byte {
	out := map[string][]byte{}
	c.query("the devices", func(ctx context.Context, conn *pgx.Conn) error {
		for _, mb := range c.mailboxes {
			var h []byte
			if err := conn.QueryRow(ctx, `SELECT mailbox_hash FROM devices WHERE device_id = $1`, "ios-"+mb).Scan(&h); err != nil {
				return fmt.Errorf("%s: %w", mb, err)
			}
			out[mb] = h
		}
		return nil
	})
	return out
}

// pushJob is one ensgate_push job as river_job holds it.
type pushJob struct {
	id          int64
	state       string
	attempt     int
	attemptedBy []string // River client ids, one per attempt (a node's process each)
	finalizedAt time.Time
}

// lastBy is the client that ran the job's latest attempt.
func (j pushJob) lastBy() string {
	if len(j.attemptedBy) == 0 {
		return ""
	}
	return j.attemptedBy[len(j.attemptedBy)-1]
}

func (c *cluster) pushJobs() []pushJob {
	var jobs []pushJob
	c.query("river_job", func(ctx context.Context, conn *pgx.Conn) error {
		jobs = jobs[:0]
		rows, err := conn.Query(ctx, `SELECT id, state, attempt, coalesce(attempted_by, '{}'), coalesce(finalized_at, 'epoch')
			FROM river_job WHERE kind = 'ensgate_push' ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var j pushJob
			if err := rows.Scan(&j.id, &j.state, &j.attempt, &j.attemptedBy, &j.finalizedAt); err != nil {
				return err
			}
			jobs = append(jobs, j)
		}
		return rows.Err()
	})
	return jobs
}

// clientIDs are the job clients that have run any job (every node runs
// the periodic ones), oldest first: River names a client by its host and
// start time, and node A was started first.
func (c *cluster) clientIDs() []string {
	var ids []string
	c.query("river_job", func(ctx context.Context, conn *pgx.Conn) error {
		ids = ids[:0]
		rows, err := conn.Query(ctx, `SELECT DISTINCT unnest(attempted_by) FROM river_job`)
		if err != nil {
			return err
		}
		ids, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	slices.Sort(ids)
	return ids
}

// jobFigures sums up the ensgate_push jobs.
type jobFigures struct {
	total, completed int
	notDone          map[string]int // state → jobs not completed
	maxAttempt       int
	byBoth           int // jobs attempted by more than one node
}

func (f jobFigures) String() string {
	s := fmt.Sprintf("push jobs %d (completed %d", f.total, f.completed)
	if len(f.notDone) > 0 {
		s += fmt.Sprintf(", not completed %v", f.notDone)
	}
	return s + fmt.Sprintf(", most attempts %d, attempted on both nodes %d)", f.maxAttempt, f.byBoth)
}

func figuresOf(jobs []pushJob) jobFigures {
	f := jobFigures{total: len(jobs), notDone: map[string]int{}}
	for _, j := range jobs {
		if j.state == "completed" {
			f.completed++
		} else {
			f.notDone[j.state]++
		}
		f.maxAttempt = max(f.maxAttempt, j.attempt)
		by := slices.Clone(j.attemptedBy)
		slices.Sort(by)
		if len(slices.Compact(by)) > 1 {
			f.byBoth++
		}
	}
	return f
}

// waitJobsDone waits until every ensgate_push job is completed (a job
// whose node died after its push was taken is finished by another only
// once rescued) and sums them up; a job not completed within fails the
// test.
func (c *cluster) waitJobsDone(within time.Duration) jobFigures {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		f := figuresOf(c.pushJobs())
		if f.completed == f.total {
			return f
		}
		if time.Now().After(deadline) {
			c.t.Errorf("after %v: %s", within, f)
			return f
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// claimFigures is what push_claims records of the pushes.
type claimFigures struct {
	records    int // (device, item) pairs with a record
	delivered  int // (device, item) pairs recorded delivered
	twice      int // pairs recorded delivered more than once
	unrecorded int // (device, item) pairs a device was shown, not recorded delivered
}

func (f claimFigures) String() string {
	return fmt.Sprintf("push records: %d (device, item) pairs, %d delivered, %d delivered twice, %d shown but not recorded delivered",
		f.records, f.delivered, f.twice, f.unrecorded)
}

// claims checks push_claims against what the devices were shown: at most
// one delivered push recorded per (device, item), and exactly one for
// every item a device was shown. A push just taken by APNs is recorded a
// moment later: the check is repeated for a while.
func (c *cluster) claims(within time.Duration) claimFigures {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		f := c.claimsOnce()
		if f.twice == 0 && f.unrecorded == 0 || time.Now().After(deadline) {
			return f
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (c *cluster) claimsOnce() claimFigures {
	// (device id, collapse id) → delivered records
	recorded := map[[2]string]int{}
	c.query("push_claims", func(ctx context.Context, conn *pgx.Conn) error {
		clear(recorded)
		rows, err := conn.Query(ctx, `SELECT d.device_id, d.mailbox_hash, c.item_hash, count(*) FILTER (WHERE c.outcome = 'delivered')
			FROM push_claims c JOIN devices d ON d.id = c.device_id GROUP BY 1, 2, 3`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var device string
			var mailbox, item []byte
			var n int
			if err := rows.Scan(&device, &mailbox, &item, &n); err != nil {
				return err
			}
			recorded[[2]string{device, ens.CollapseID(mailbox, item)}] = n
		}
		return rows.Err()
	})
	var f claimFigures
	for _, n := range recorded {
		f.records++
		if n > 0 {
			f.delivered++
		}
		if n > 1 {
			f.twice++
		}
	}
	// The devices, by push token.
	devices := map[string]string{}
	for _, mb := range c.mailboxes {
		for _, platform := range []string{"ios", "android"} {
			devices[pushToken(platform+"-"+mb, platform)] = platform + "-" + mb
		}
		for _, n := range c.nodes {
			id := "late-" + n.name + "-" + mb
			devices[pushToken(id, "ios")] = id
		}
	}
	seen := map[[2]string]bool{}
	for _, p := range c.delivered() {
		k := [2]string{devices[p.token], p.collapseID}
		if seen[k] {
			continue
		}
		seen[k] = true
		if recorded[k] != 1 {
			f.unrecorded++
		}
	}
	return f
}

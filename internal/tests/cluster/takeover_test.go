package cluster

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// downAfterKill is how long APNs and FCM stay down once node A is dead:
// the survivor takes A's jobs over while they still fail, then delivers.
const downAfterKill = 10 * time.Second

// APNs and FCM go down during a burst, so the pushes are queued as
// ensgate_push jobs, which both nodes retry; node A is killed (SIGKILL)
// while it runs some of them and others wait for their next attempt.
// Once APNs and FCM are back every item reaches every device, none twice,
// and every job A had attempted is completed by B: those waiting once
// due, those A was running once River rescues them (ens.rescueAfter).
func TestNodeKilledWhilePushesQueued(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{mailboxes: mailboxes})
	var (
		idA, idB        string
		held, running   map[int64]bool // A's unfinished jobs at the kill; those it was running
		queued          int
		deliveredBefore int
		queuedIn        time.Duration // from the outage's start
		down, killed    time.Time
		recoveredByKill time.Duration
	)
	r := c.scenario("node A killed (SIGKILL) holding push jobs while APNs and FCM are down", "takeover", func() time.Time {
		c.apns.SetOutage(true)
		c.fcm.SetOutage(true)
		down = time.Now()
		queued = c.waitQueued(2*burstMails, 2*time.Minute, 15*time.Second)
		queuedIn = time.Since(down)
		deliveredBefore = len(c.delivered())
		ids := c.waitClientIDs(2, time.Minute)
		idA, idB = ids[0], ids[1]
		c.waitRunningOn(idA, 2*time.Minute)
		c.kill(c.nodes[0])
		killed = time.Now()
		// What A held is frozen in river_job now: a job it was running
		// stays "running" until rescued.
		held, running = map[int64]bool{}, map[int64]bool{}
		for _, j := range c.pushJobs() {
			if j.state != "completed" && slices.Contains(j.attemptedBy, idA) {
				held[j.id] = true
				if j.state == "running" && j.lastBy() == idA {
					running[j.id] = true
				}
			}
		}
		time.Sleep(downAfterKill)
		c.apns.SetOutage(false)
		c.fcm.SetOutage(false)
		return time.Now()
	}, func() string {
		takenOver, rescued := 0, 0
		var last, lastRescued time.Time
		for _, j := range c.pushJobs() {
			if j.lastBy() == idA && j.finalizedAt.After(killed) {
				t.Errorf("job %d finished after node A was killed by client %s, taken for A's: the client ids are not in start order", j.id, idA)
			}
			if !held[j.id] {
				continue
			}
			if j.state != "completed" || j.lastBy() != idB {
				t.Errorf("job %d, held by node A at the kill: %s, attempted by %v", j.id, j.state, j.attemptedBy)
				continue
			}
			takenOver++
			last = maxTime(last, j.finalizedAt)
			if running[j.id] {
				rescued++
				lastRescued = maxTime(lastRescued, j.finalizedAt)
			}
		}
		if len(held) == 0 || len(running) == 0 {
			t.Errorf("node A held %d unfinished push jobs at the kill, running %d: nothing to take over", len(held), len(running))
		}
		recoveredByKill = last.Sub(killed)
		return fmt.Sprintf("push jobs queued %d within %v of the outage (with the %d pushes delivered before it, of %d (device, item) pairs); "+
			"node A killed %v into the outage holding %d unfinished jobs (%d running, %d waiting to retry); "+
			"taken over and completed by B %d (the last %v after the kill), of which rescued from A's running %d (the last %v after the kill); "+
			"APNs and FCM back %v after the kill",
			queued, queuedIn.Round(time.Second), deliveredBefore, 2*burstMails, killed.Sub(down).Round(time.Second), len(held), len(running), len(held)-len(running),
			takenOver, recoveredByKill.Round(time.Second), rescued, lastRescued.Sub(killed).Round(time.Second), downAfterKill)
	})
	c.checkOutage(r)
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// waitQueued waits until each of the burst's n (device, item) pairs has
// been pushed or handed to an ensgate_push job, or until no more are for
// a while (stable), and returns the jobs.
func (c *cluster) waitQueued(n int, within, stable time.Duration) (jobs int) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	last, since := -1, time.Now()
	for {
		var delivered int
		c.query("river_job", func(ctx context.Context, conn *pgx.Conn) error {
			return conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job WHERE kind = 'ensgate_push'),
				(SELECT count(*) FROM push_claims WHERE outcome = 'delivered')`).Scan(&jobs, &delivered)
		})
		if jobs+delivered >= n {
			return jobs
		}
		if jobs+delivered != last {
			last, since = jobs+delivered, time.Now()
		} else if time.Since(since) > stable {
			return jobs
		}
		if time.Now().After(deadline) {
			var claims map[string]int
			c.query("push_claims", func(ctx context.Context, conn *pgx.Conn) error {
				claims = map[string]int{}
				rows, err := conn.Query(ctx, `SELECT coalesce(outcome, 'claimed until ' || CASE WHEN claimed_until > now() THEN 'later' ELSE 'past' END), count(*)
					FROM push_claims GROUP BY 1`)
				if err != nil {
					return err
				}
				defer rows.Close()
				for rows.Next() {
					var k string
					var v int
					if err := rows.Scan(&k, &v); err != nil {
						return err
					}
					claims[k] = v
				}
				return rows.Err()
			})
			sim := c.sim.Counters()
			c.t.Fatalf("after %v only %d push jobs and %d pushes delivered, of %d; push_claims %v; Exchange's events sent %d, failed callbacks %d, %s",
				within, jobs, delivered, n, claims, sim.EventsSent, sim.NotificationFailures, figuresOf(c.pushJobs()))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitClientIDs waits until n job clients have run jobs and returns their
// ids, oldest first.
func (c *cluster) waitClientIDs(n int, within time.Duration) []string {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ids := c.clientIDs()
		if len(ids) == n {
			return ids
		}
		if len(ids) > n || time.Now().After(deadline) {
			c.t.Fatalf("job clients %v, want %d", ids, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitRunningOn waits until client id is running an ensgate_push job.
func (c *cluster) waitRunningOn(id string, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		var n int
		c.query("river_job", func(ctx context.Context, conn *pgx.Conn) error {
			return conn.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'ensgate_push' AND state = 'running'
				AND attempted_by[cardinality(attempted_by)] = $1`, id).Scan(&n)
		})
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("client %s ran no push job within %v", id, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package cluster

import (
	"os"
	"testing"
	"time"
)

// A burst: mails over the mailboxes (each with an iOS and an Android
// device), one every burstGap; the trouble starts once disruptAfter
// pushes went out.
const (
	mailboxes    = 6
	burstMails   = 300
	burstGap     = 10 * time.Millisecond
	disruptAfter = 150
	// allShownWithin bounds the wait for every item on every device
	// after the trouble ends.
	allShownWithin = 3 * time.Minute
	// settleFor waits for late pushes (a second push of an item) after
	// every item was shown once.
	settleFor = 5 * time.Second
	// jobsDoneWithin bounds the wait for every ensgate_push job to be
	// completed once every item was shown: a job whose node died after
	// its push was taken is finished by another only once rescued
	// (ens.rescueAfter, 45 s, plus River's rescuer interval, 30 s).
	jobsDoneWithin = 2 * time.Minute
)

// outageClockScale is the Exchange minute of the push outage scenarios:
// 5 s, so that Exchange's window (below) is about a minute long and an
// outage well past it takes two.
const outageClockScale = 5 * time.Second

// pushOutage is how long APNs and FCM are down in
// TestPushServicesDownDuringBurst: ENSGATE_CLUSTER_PUSH_OUTAGE (a Go
// duration), else 2 minutes. Exchange retries a failed callback after
// 30 s, then doubling, and drops the subscription once its failures last
// longer than StatusFrequency (15 minutes): at outageClockScale, with each
// callback held up to ens.PushTimeBudget (20 s) before its 503, after
// about 68 s (at the 10 s clockScale, about two minutes). Without durable
// push retries a longer outage lost mail: at 10 s a minute, 90 s passed
// and 150 s lost 446 of the burst's 600 (item, device) pairs, every
// subscription dropped. With ensgate_push jobs Exchange is answered once
// the pushes are queued, so 2 minutes, about twice its window, must lose
// nothing and drop no subscription.
func pushOutage(t *testing.T) time.Duration {
	v := os.Getenv("ENSGATE_CLUSTER_PUSH_OUTAGE")
	if v == "" {
		return 2 * time.Minute
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("ENSGATE_CLUSTER_PUSH_OUTAGE: %v", err)
	}
	return d
}

// result is what a scenario came to.
type result struct {
	tally
	jobs   jobFigures
	claims claimFigures
}

// scenario runs a burst, calls trouble once pushes flow, and checks that
// every item reaches every device, none twice, that every push job
// completed and the push records agree with the devices, that the
// running nodes are ready again and that a device registered then is
// notified. trouble returns when the trouble ended; the recovery is
// counted from then. more, if not nil, gives the scenario's own figures
// for its summary once its jobs are done.
func (c *cluster) scenario(name, tag string, trouble func() (ended time.Time), more func() string) result {
	c.t.Helper()
	done := c.burst(tag, burstMails, burstGap)
	c.waitDelivered(disruptAfter)
	ended := trouble()
	<-done
	c.waitReady(time.Minute)
	c.waitAllShown(allShownWithin)
	recovery := time.Since(ended)
	c.settle(settleFor)
	r := result{jobs: c.waitJobsDone(jobsDoneWithin)}
	r.tally = c.tally()
	r.claims = c.claims(30 * time.Second)
	extra := ""
	if more != nil {
		extra = more()
	}
	c.report(name, r.tally, r.jobs, r.claims, recovery, extra)
	c.registerLate()
	return r
}

// One node is killed (SIGKILL) while a burst is pushed: the survivor
// takes over its work; every item reaches every device, none is shown
// twice (a second push of an item carries the same collapse id).
func TestNodeKilledDuringBurst(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{mailboxes: mailboxes})
	c.scenario("node A killed (SIGKILL) during the burst", "kill", func() time.Time {
		c.kill(c.nodes[0])
		return time.Now()
	}, nil)
}

// APNs and FCM are down for a while during a burst: nothing is lost once
// they are back, and the nodes' memory stays bounded.
func TestPushServicesDownDuringBurst(t *testing.T) {
	t.Parallel()
	outage := pushOutage(t)
	c := newCluster(t, options{mailboxes: mailboxes, clockScale: outageClockScale})
	r := c.scenario("APNs and FCM down for "+outage.String()+" during the burst", "outage", func() time.Time {
		c.apns.SetOutage(true)
		c.fcm.SetOutage(true)
		time.Sleep(outage)
		c.apns.SetOutage(false)
		c.fcm.SetOutage(false)
		return time.Now()
	}, nil)
	c.checkOutage(r)
}

// checkOutage checks what an APNs and FCM outage must come to: the pushes
// were queued as jobs, which were all completed (waitJobsDone), and
// Exchange dropped no subscription.
func (c *cluster) checkOutage(r result) {
	c.t.Helper()
	if r.jobs.total == 0 {
		c.t.Errorf("APNs and FCM were down, yet no ensgate_push job was queued")
	}
	if r.generic == 0 {
		c.t.Errorf("APNs and FCM were down, yet no push was sent from a job (\"New message\")")
	}
	if d := c.sim.Counters().Dropped; d != 0 {
		c.t.Errorf("Exchange dropped %d subscriptions", d)
	}
}

// PostgreSQL is restarted during a burst: nothing is lost, both nodes
// are ready again and a new registration works.
func TestPostgreSQLRestartDuringBurst(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{mailboxes: mailboxes})
	c.scenario("PostgreSQL restarted (3 s down) during the burst", "restart", func() time.Time {
		c.db.Stop(t)
		time.Sleep(3 * time.Second)
		c.db.Start(t)
		return time.Now()
	}, nil)
}

// The primary dies during a burst and its streaming standby is promoted:
// the nodes, on a multi-host DATABASE_URL, move to it; nothing is lost,
// both nodes are ready again and a new registration works.
func TestFailoverDuringBurst(t *testing.T) {
	t.Parallel()
	c := newCluster(t, options{mailboxes: mailboxes, standby: true})
	// Replication is asynchronous: the registrations must be on the
	// standby before the crash (what this test is about is the burst).
	c.db.WaitReplayed(t, c.standby)
	c.scenario("primary killed, standby promoted after 2 s, during the burst", "failover", func() time.Time {
		c.db.Kill(t)
		time.Sleep(2 * time.Second)
		c.standby.Promote(t)
		return time.Now()
	}, nil)
}

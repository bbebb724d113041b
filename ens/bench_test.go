package ens_test

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/apnsfake"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/sim/graphsim"
)

// pushBench is ENS end to end on this machine: mail delivered into a
// simulated mail source (Exchange over EWS, or Exchange Online over
// Graph), its notification to ENS, ENS's calls back to the source for the
// message and the unread count, and the push through apns2 to the local
// APNs fake, which notes when each push ("bench N") arrived.
type pushBench struct {
	*env
	src     benchSource
	users   []string // the mailboxes' addresses
	mu      sync.Mutex
	arrived map[int]time.Time
}

// benchSource is the simulated mail source of a pushBench.
type benchSource interface {
	deliver(address, from, fromName, subject, body string) error
	// calls is the requests ENS made to the source (its token endpoint
	// included) since reset.
	calls() int64
	// redemptions is the refresh tokens ENS redeemed since reset.
	redemptions() int64
	// throttled is the source's answers holding ENS back (EWS's
	// ErrorServerBusy, Graph's 429); resent is its notification POSTs that
	// ENS did not accept (and the source retried).
	throttled() int64
	resent() int64
	reset()
	counters() any // for failure messages
}

type ewsBenchSource struct{ sim *ewssim.TestServer }

func (s ewsBenchSource) deliver(address, from, fromName, subject, body string) error {
	_, err := s.sim.Deliver(address, ewssim.Mail{From: from, FromName: fromName, Subject: subject, Body: body})
	return err
}

func (s ewsBenchSource) calls() int64 {
	var n int64
	for _, c := range s.sim.Counters().Requests {
		n += c
	}
	return n
}

func (s ewsBenchSource) redemptions() int64 { return 0 } // basic authentication
func (s ewsBenchSource) throttled() int64 {
	return s.sim.Counters().Responses["ErrorServerBusy"]
}
func (s ewsBenchSource) resent() int64 { return s.sim.Counters().NotificationFailures }
func (s ewsBenchSource) reset()        { s.sim.ResetCounters() }
func (s ewsBenchSource) counters() any { return s.sim.Counters() }

type graphBenchSource struct{ sim *graphsim.TestServer }

func (s graphBenchSource) deliver(address, from, fromName, subject, body string) error {
	_, err := s.sim.Deliver(address, graphsim.Mail{From: from, FromName: fromName, Subject: subject, Body: body})
	return err
}

func (s graphBenchSource) calls() int64 {
	c := s.sim.Counters()
	n := c.TokenRequests
	for _, r := range c.Requests {
		n += r
	}
	return n
}

func (s graphBenchSource) redemptions() int64 { return s.sim.Counters().TokenRequests }
func (s graphBenchSource) throttled() int64 {
	var n int64
	for _, t := range s.sim.Counters().Throttled {
		n += t
	}
	return n
}
func (s graphBenchSource) resent() int64 { return s.sim.Counters().NotificationsRetried }
func (s graphBenchSource) reset()        { s.sim.ResetCounters() }
func (s graphBenchSource) counters() any { return s.sim.Counters() }

// benchOptions are ENS's options in the benchmarks, pushing to the APNs
// fake through apns2.
func (pb *pushBench) benchOptions(b *testing.B, mailboxes int) envOptions {
	key, err := apnsfake.NewKey(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	fake, err := apnsfake.New(apnsfake.Config{Keys: []*apnsfake.Key{key}, Discard: true, OnPush: pb.onPush})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(fake.Close)
	apns, err := push.NewAPNs(push.APNsConfig{URL: fake.URL, KeyFile: key.Path, KeyID: key.ID, TeamID: key.TeamID,
		Topic: "com.example.mail", Client: push.ClientConfig{ExtraRoots: []*x509.Certificate{fake.Certificate()}}})
	if err != nil {
		b.Fatal(err)
	}
	return envOptions{rateLimit: 10000, keyPool: mailboxes, push: &push.Router{APNs: apns}}
}

// apnsToken is mailbox i's device token (APNs checks the length).
func apnsToken(i int) string { return fmt.Sprintf("%064x", i+1) }

// newPushBench is the bench on the EWS simulator, a device at level 0 on
// each of the mailboxes (basic authentication); of opts, only callbackRate
// is taken.
func newPushBench(b *testing.B, mailboxes int, opts envOptions) *pushBench {
	pb := &pushBench{arrived: map[int]time.Time{}}
	var users []ewssim.User
	for i := range mailboxes {
		users = append(users, ewssim.User{Address: fmt.Sprintf("user%d@contoso.test", i), Password: "pw"})
		pb.users = append(pb.users, users[i].Address)
	}
	o := pb.benchOptions(b, mailboxes)
	o.callbackRate = opts.callbackRate
	o.simConfig = ewssim.Config{Users: users, ClockScale: time.Minute}
	pb.env = newEnv(b, o)
	pb.src = ewsBenchSource{pb.sim}
	for i, u := range users {
		d := pb.basicDevice(fmt.Sprintf("phone-%d", i), u.Address, "pw", 0)
		d.PushToken = apnsToken(i)
		pb.register(d)
	}
	return pb
}

// newGraphPushBench is the bench on the Graph simulator (its clock in real
// time), a device at level 0 on each of the mailboxes, registered with a
// refresh token; of opts, only callbackRate is taken.
func newGraphPushBench(b *testing.B, mailboxes int, opts envOptions) (*pushBench, *graphEnv) {
	pb := &pushBench{arrived: map[int]time.Time{}}
	o := pb.benchOptions(b, mailboxes)
	o.callbackRate = opts.callbackRate
	g := newGraphEnv(b, o, graphsim.Config{})
	pb.env, pb.src = g.env, graphBenchSource{g.graph}
	for i := range mailboxes {
		address := fmt.Sprintf("user%d@fabrikam.test", i)
		if _, err := g.graph.AddUser(graphsim.User{Address: address}); err != nil {
			b.Fatal(err)
		}
		pb.users = append(pb.users, address)
		d := g.graphDevice(fmt.Sprintf("phone-%d", i), address, 0)
		d.PushToken = apnsToken(i)
		pb.register(d)
	}
	return pb, g
}

func (pb *pushBench) onPush(p apnsfake.Push) {
	var payload struct {
		APS struct {
			Alert struct{ Body string } `json:"alert"`
		} `json:"aps"`
	}
	json.Unmarshal(p.Payload, &payload)
	subject, _, _ := strings.Cut(payload.APS.Alert.Body, "\n")
	if n, err := strconv.Atoi(strings.TrimPrefix(subject, "bench ")); err == nil && p.Status == http.StatusOK {
		pb.mu.Lock()
		pb.arrived[n] = time.Now()
		pb.mu.Unlock()
	}
}

// send delivers mail number n to one of the mailboxes.
func (pb *pushBench) send(b *testing.B, n int) time.Time {
	at := time.Now()
	if err := pb.src.deliver(pb.users[n%len(pb.users)], "carol@fabrikam.test", "Carol", fmt.Sprintf("bench %d", n), "benchmark body"); err != nil {
		b.Fatal(err)
	}
	return at
}

// await waits until n pushes have arrived.
func (pb *pushBench) await(b *testing.B, n int) {
	deadline := time.Now().Add(time.Minute)
	for {
		pb.mu.Lock()
		got := len(pb.arrived)
		pb.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d pushes arrived within a minute; simulator %+v", got, n, pb.src.counters())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

// throughput delivers b.N mails at once and reports how many notifications
// per second become pushes, the calls ENS made to the mail source per
// notification, the refresh tokens it redeemed meanwhile, and how often
// the source held ENS back or had to resend a notification.
func (pb *pushBench) throughput(b *testing.B) {
	pb.src.reset()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		pb.send(b, i)
	}
	pb.await(b, b.N)
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "notifications/s")
	b.ReportMetric(float64(pb.src.calls())/float64(b.N), "calls/notification")
	b.ReportMetric(float64(pb.src.redemptions()), "token-redemptions")
	b.ReportMetric(float64(pb.src.throttled()), "throttled")
	b.ReportMetric(float64(pb.src.resent()), "resent")
	b.ReportMetric(0, "ns/op")
}

func percentile(d []time.Duration, p int) float64 {
	slices.Sort(d)
	return float64(d[len(d)*p/100].Microseconds()) / 1000
}

// BenchmarkWebhookToPushThroughput delivers b.N mails at once to 32
// mailboxes on the EWS simulator and reports how many notifications per
// second become pushes.
func BenchmarkWebhookToPushThroughput(b *testing.B) {
	newPushBench(b, 32, envOptions{}).throughput(b)
}

// BenchmarkGraphWebhookToPushThroughput is BenchmarkWebhookToPushThroughput
// through Microsoft Graph: b.N mails at once to 32 Exchange Online
// mailboxes; Graph's change notifications, the message and the Inbox's
// unread count read from Graph, the same pushes.
func BenchmarkGraphWebhookToPushThroughput(b *testing.B) {
	pb, _ := newGraphPushBench(b, 32, envOptions{})
	pb.throughput(b)
}

// BenchmarkWebhookToPushLatency delivers one mail at a time and reports the
// time from delivery to the push's arrival, p50 and p99, without queueing.
// Each of the 4 mailboxes gets hundreds of notifications a second here:
// the callback rate limit (10 a second per subscription by default) is
// raised, or its 503s, which Exchange resends 30 s later, would be the p99.
func BenchmarkWebhookToPushLatency(b *testing.B) {
	pb := newPushBench(b, 4, envOptions{callbackRate: 10000})
	latencies := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		sent := pb.send(b, i)
		pb.await(b, i+1)
		pb.mu.Lock()
		latencies = append(latencies, pb.arrived[i].Sub(sent))
		pb.mu.Unlock()
	}
	b.ReportMetric(percentile(latencies, 50), "p50-ms")
	b.ReportMetric(percentile(latencies, 99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkGraphReauthorization keeps 32 Graph subscriptions alive: each
// op is one reauthorizationRequired lifecycle event, which ENS answers
// with a refresh token redemption (re-sealed) and a reauthorization at
// Graph. The events go out in waves, one per subscription at a time (Graph
// sends about one an hour each). It reports renewals per second and the
// calls each took. The callback rate limit is raised: a subscription gets
// far more events here than Graph would send.
func BenchmarkGraphReauthorization(b *testing.B) {
	const mailboxes = 32
	pb, g := newGraphPushBench(b, mailboxes, envOptions{callbackRate: 10000})
	subs := g.graph.Subscriptions()
	if len(subs) != mailboxes {
		b.Fatalf("%d Graph subscriptions, want %d", len(subs), mailboxes)
	}
	pb.src.reset()
	b.ResetTimer()
	start := time.Now()
	for done := 0; done < b.N; {
		wave := min(mailboxes, b.N-done)
		for _, sub := range subs[:wave] {
			if err := g.graph.Lifecycle(sub.ID, graphsim.ReauthorizationRequired); err != nil {
				b.Fatal(err)
			}
		}
		done += wave
		deadline := time.Now().Add(time.Minute)
		for g.graph.Counters().SubscriptionsReauthorized < int64(done) {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d reauthorizations within a minute; Graph %+v", g.graph.Counters().SubscriptionsReauthorized, done, g.graph.Counters())
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	c := g.graph.Counters()
	if c.TokenErrors["invalid_grant"] != 0 || c.SubscriptionsCreated != 0 {
		b.Fatalf("Graph %+v: want no refused refresh token and no new subscription", c)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "renewals/s")
	b.ReportMetric(float64(pb.src.calls())/float64(b.N), "calls/renewal")
	b.ReportMetric(float64(c.TokenRequests)/float64(b.N), "redemptions/renewal")
	b.ReportMetric(0, "ns/op")
}

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
)

// pushBench is ENS end to end on this machine: mail delivered into the
// simulator, Exchange's SendNotification to the webhook, GetItem and
// GetFolder against the simulator, and the push through apns2 to the local
// APNs fake, which notes when each push ("bench N") arrived.
type pushBench struct {
	*env
	users   []ewssim.User
	mu      sync.Mutex
	arrived map[int]time.Time
}

func newPushBench(b *testing.B, mailboxes int) *pushBench {
	pb := &pushBench{arrived: map[int]time.Time{}}
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
	for i := range mailboxes {
		pb.users = append(pb.users, ewssim.User{Address: fmt.Sprintf("user%d@contoso.test", i), Password: "pw"})
	}
	pb.env = newEnv(b, envOptions{rateLimit: 10000, keyPool: mailboxes, push: &push.Router{APNs: apns},
		simConfig: ewssim.Config{Users: pb.users, ClockScale: time.Minute}})
	for i, u := range pb.users {
		d := pb.basicDevice(fmt.Sprintf("phone-%d", i), u.Address, "pw", 0)
		d.PushToken = fmt.Sprintf("%064x", i+1) // APNs checks the token's length
		pb.register(d)
	}
	return pb
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
	if _, err := pb.sim.Deliver(pb.users[n%len(pb.users)].Address, ewssim.Mail{From: "carol@fabrikam.test",
		FromName: "Carol", Subject: fmt.Sprintf("bench %d", n), Body: "benchmark body"}); err != nil {
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
			b.Fatalf("%d of %d pushes arrived within a minute; simulator %+v", got, n, pb.sim.Counters())
		}
		time.Sleep(200 * time.Microsecond)
	}
}

func percentile(d []time.Duration, p int) float64 {
	slices.Sort(d)
	return float64(d[len(d)*p/100].Microseconds()) / 1000
}

// BenchmarkWebhookToPushThroughput delivers b.N mails at once to 32
// mailboxes and reports how many notifications per second become pushes.
func BenchmarkWebhookToPushThroughput(b *testing.B) {
	pb := newPushBench(b, 32)
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		pb.send(b, i)
	}
	pb.await(b, b.N)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "notifications/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkWebhookToPushLatency delivers one mail at a time and reports the
// time from delivery to the push's arrival, p50 and p99, without queueing.
func BenchmarkWebhookToPushLatency(b *testing.B) {
	pb := newPushBench(b, 4)
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

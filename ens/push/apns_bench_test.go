package push_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/apnsfake"
)

// BenchmarkAPNsPushes sends level-0 pushes through apns2 (token auth,
// HTTP/2, one connection) to the local fake over loopback, from many
// goroutines at once, and reports pushes per second. Both ends share the
// machine, so the figure is a floor for the sender's own cost.
func BenchmarkAPNsPushes(b *testing.B) {
	key, err := apnsfake.NewKey(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	fake, err := apnsfake.New(apnsfake.Config{Keys: []*apnsfake.Key{key}, Discard: true})
	if err != nil {
		b.Fatal(err)
	}
	defer fake.Close()
	sender, err := push.NewAPNs(push.APNsConfig{
		URL: fake.URL, KeyFile: key.Path, KeyID: key.ID, TeamID: key.TeamID, Topic: topic,
		Client: push.ClientConfig{ExtraRoots: []*x509.Certificate{fake.Certificate()}},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sender.Close()
	m := push.Message{
		Platform: push.IOS, Title: "Alice Example", Subject: "Quarterly report",
		Preview: "Please find attached the figures for the third quarter.", Badge: 3, ThreadID: "mbx-1",
	}

	b.SetParallelism(32) // 32 senders per CPU, like a busy notification pipeline
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		m := m
		m.Token = apnsToken()
		for pb.Next() {
			if res := sender.Send(context.Background(), m); res.Outcome != push.Delivered {
				b.Errorf("push: %v %s %v", res.Outcome, res.Reason, res.Err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "pushes/s")
}

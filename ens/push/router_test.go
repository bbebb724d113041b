package push_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/apnsfake"
	"github.com/ensgate/ensgate/internal/sim/fcmfake"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestRouterPlatforms(t *testing.T) {
	apns := newAPNs(t, nil)
	fcm := newFCM(t, nil)
	r := &push.Router{APNs: apns.sender, FCM: fcm.sender}
	ctx := context.Background()
	checkResult(t, r.Send(ctx, push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"}), push.Delivered, "", 1)
	checkResult(t, r.Send(ctx, push.Message{Platform: push.Android, Token: fcmToken(), Title: "T"}), push.Delivered, "", 1)
	if len(apns.fake.Delivered()) != 1 || len(fcm.fake.Delivered()) != 1 {
		t.Errorf("want one push at each service")
	}
	checkResult(t, r.Send(ctx, push.Message{Platform: "windows", Token: "x"}), push.Rejected, push.ReasonUnknownPlatform, 0)

	none := &push.Router{}
	checkResult(t, none.Send(ctx, push.Message{Platform: push.IOS, Token: apnsToken()}), push.Rejected, "platform not configured", 0)
	checkResult(t, none.Send(ctx, push.Message{Platform: push.Android, Token: fcmToken()}), push.Rejected, "platform not configured", 0)
}

// TestMetrics counts pushes by outcome, retries, dead tokens and latency
// through a registry, as Caddy would expose them.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 { // a reload registers again
		if err := push.Register(reg); err != nil {
			t.Fatal(err)
		}
	}
	if err := push.Register(prometheus.NewRegistry()); err != nil {
		t.Fatalf("a new registry: %v", err)
	}
	apns := newAPNs(t, nil)
	fcm := newFCM(t, nil)
	r := &push.Router{APNs: apns.sender, FCM: fcm.sender}

	before := gather(t, reg)
	ctx := context.Background()
	dead := apnsToken()
	apns.fake.Script(dead, apnsfake.BadDeviceToken)
	r.Send(ctx, push.Message{Platform: push.IOS, Token: dead, Title: "T"})
	flaky := apnsToken()
	apns.fake.Script(flaky, apnsfake.ServiceUnavailable, apnsfake.ServiceUnavailable)
	r.Send(ctx, push.Message{Platform: push.IOS, Token: flaky, Title: "T"})
	r.Send(ctx, push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"})
	gone := fcmToken()
	fcm.fake.Script(gone, fcmfake.Unregistered)
	r.Send(ctx, push.Message{Platform: push.Android, Token: gone, Title: "T"})
	after := gather(t, reg)

	// A push under way shows in the gauge.
	apns.fake.SetLatency(300 * time.Millisecond)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Send(ctx, push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"})
	}()
	inFlight := map[string]string{"platform": "ios"}
	for deadline := time.Now().Add(time.Second); value(gather(t, reg), "ensgate_push_in_flight", inFlight) != value(before, "ensgate_push_in_flight", inFlight)+1; {
		if time.Now().After(deadline) {
			t.Fatal("ensgate_push_in_flight never rose during a send")
		}
		time.Sleep(5 * time.Millisecond)
	}
	<-done

	tests := []struct {
		metric string
		labels map[string]string
		delta  float64
	}{
		{"ensgate_pushes_total", map[string]string{"platform": "ios", "outcome": "delivered", "reason": ""}, 2},
		{"ensgate_pushes_total", map[string]string{"platform": "ios", "outcome": "token_dead", "reason": "BadDeviceToken"}, 1},
		{"ensgate_pushes_total", map[string]string{"platform": "android", "outcome": "token_dead", "reason": "UNREGISTERED"}, 1},
		{"ensgate_push_retries_total", map[string]string{"platform": "ios"}, 2},
		{"ensgate_push_tokens_deactivated_total", map[string]string{"platform": "ios"}, 1},
		{"ensgate_push_tokens_deactivated_total", map[string]string{"platform": "android"}, 1},
		{"ensgate_push_duration_seconds", map[string]string{"platform": "ios"}, 3}, // sample count
		{"ensgate_push_in_flight", map[string]string{"platform": "ios"}, 0},
	}
	for _, tt := range tests {
		if got := value(after, tt.metric, tt.labels) - value(before, tt.metric, tt.labels); got != tt.delta {
			t.Errorf("%s%v grew by %v, want %v", tt.metric, tt.labels, got, tt.delta)
		}
	}
}

// TestRouterLogsNoSecrets: the log line names the device by a hash only,
// and carries no notification text.
func TestRouterLogsNoSecrets(t *testing.T) {
	apns := newAPNs(t, nil)
	var buf bytes.Buffer
	r := &push.Router{APNs: apns.sender, Logger: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	tok := apnsToken()
	apns.fake.Script(tok, apnsfake.Unregistered(time.Now()))
	m := push.Message{Platform: push.IOS, Token: tok, Title: "Secret Sender", Subject: "Secret Subject", Preview: "Secret Preview", ThreadID: "mbx-secret"}
	r.Send(context.Background(), m)
	r.Send(context.Background(), push.Message{Platform: push.IOS, Token: "zz" + tok, Title: "Secret Sender"})
	logs := buf.String()
	for _, secret := range []string{tok, "Secret", "mbx-secret"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q:\n%s", secret, logs)
		}
	}
	if !strings.Contains(logs, push.TokenHash(tok)) || !strings.Contains(logs, "token_dead") {
		t.Errorf("log lacks the token hash or the outcome:\n%s", logs)
	}
}

func gather(t *testing.T, reg *prometheus.Registry) []*dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// value finds a sample by name and labels: a counter's or gauge's value, a
// histogram's count.
func value(mfs []*dto.MetricFamily, name string, labels map[string]string) float64 {
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; !ok || want != l.GetValue() {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

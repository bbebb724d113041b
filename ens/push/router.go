package push

import (
	"cmp"
	"context"
	"log/slog"
	"time"
)

// Router is the Sender ENS uses: it picks the platform's sender, and records
// metrics and a log line (with no token or text) for every push.
type Router struct {
	APNs   Sender       // nil: iOS pushes are Rejected
	FCM    Sender       // nil: Android pushes are Rejected
	Logger *slog.Logger // nil: no logs
}

// Send sends m through the sender for m.Platform.
func (r *Router) Send(ctx context.Context, m Message) Result {
	var s Sender
	platform := string(m.Platform)
	switch m.Platform {
	case IOS:
		s = r.APNs
	case Android:
		s = r.FCM
	default:
		platform = "unknown" // keep the label set bounded
	}
	pushInFlight.WithLabelValues(platform).Inc()
	start := time.Now()
	var res Result
	switch {
	case platform == "unknown":
		res = Result{Outcome: Rejected, Reason: ReasonUnknownPlatform}
	case s == nil:
		res = Result{Outcome: Rejected, Reason: ReasonNotConfigured}
	default:
		res = s.Send(ctx, m)
	}
	elapsed := time.Since(start)
	pushInFlight.WithLabelValues(platform).Dec()
	r.record(platform, m, res, elapsed)
	return res
}

func (r *Router) record(platform string, m Message, res Result, elapsed time.Duration) {
	pushesTotal.WithLabelValues(platform, res.Outcome.String(), res.Reason).Inc()
	pushDuration.WithLabelValues(platform).Observe(elapsed.Seconds())
	if res.Attempts > 1 {
		pushRetries.WithLabelValues(platform).Add(float64(res.Attempts - 1))
	}
	if res.Outcome == TokenDead {
		tokensDeactivated.WithLabelValues(platform).Inc()
	}

	level := slog.LevelDebug
	switch res.Outcome {
	case TokenDead:
		level = slog.LevelInfo
	case Failed, Rejected:
		level = slog.LevelWarn
	}
	log := cmp.Or(r.Logger, slog.New(slog.DiscardHandler))
	attrs := []slog.Attr{
		slog.String("platform", platform),
		slog.String("device", TokenHash(m.Token)),
		slog.String("outcome", res.Outcome.String()),
		slog.String("reason", res.Reason),
		slog.Int("attempts", res.Attempts),
		slog.Duration("elapsed", elapsed),
	}
	if res.Err != nil {
		attrs = append(attrs, slog.String("error", res.Err.Error()))
	}
	log.LogAttrs(context.Background(), level, "push", attrs...)
}

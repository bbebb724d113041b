package push

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ensgate/ensgate/internal/promreg"
)

// The collectors are created once, for the process: Caddy hands out a new
// registry on each config reload, and Register adds these same collectors
// to it, so counts survive reloads.
var (
	pushesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ensgate_pushes_total",
		Help: "Pushes by platform, final outcome and APNs reason / FCM error code.",
	}, []string{"platform", "outcome", "reason"})
	pushDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "ensgate_push_duration_seconds",
		Help:    "Time to a final push outcome, retries included.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"platform"})
	pushInFlight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ensgate_push_in_flight",
		Help: "Pushes being sent (retries and backoff included).",
	}, []string{"platform"})
	pushRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ensgate_push_retries_total",
		Help: "Requests beyond the first for one push.",
	}, []string{"platform"})
	tokensDeactivated = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ensgate_push_tokens_deactivated_total",
		Help: "Device tokens the push service declared dead.",
	}, []string{"platform"})
)

// Register adds the push metrics to reg. Registering them again (the same
// registry after a reload) is not an error.
func Register(reg prometheus.Registerer) error {
	return promreg.Register(reg, pushesTotal, pushDuration, pushInFlight, pushRetries, tokensDeactivated)
}

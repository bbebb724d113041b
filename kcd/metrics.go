package kcd

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ensgate/ensgate/internal/promreg"
)

var (
	cacheLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ensgate", Subsystem: "kcd", Name: "cache_total",
		Help: "Service ticket cache lookups by result: hit, miss (a KDC exchange), negative (a recent failure for the user answered from the cache).",
	}, []string{"result"})
	kdcRequests = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "ensgate", Subsystem: "kcd", Name: "kdc_request_seconds",
		Help:    "KDC exchanges by step (as, s4u2self, s4u2proxy), including failover to other KDCs.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"step"})
	kdcErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ensgate", Subsystem: "kcd", Name: "kdc_errors_total",
		Help: "Failed delegation steps by step and Kerberos error code, or unreachable, not_forwardable, sid_mismatch, protocol.",
	}, []string{"step", "code"})
)

// Register adds the delegation metrics to reg; registering twice (a config
// reload) is fine.
func Register(reg prometheus.Registerer) error {
	return promreg.Register(reg, cacheLookups, kdcRequests, kdcErrors)
}

// observeKDC records how long one KDC exchange took.
func observeKDC(step string, started time.Time) {
	kdcRequests.WithLabelValues(step).Observe(time.Since(started).Seconds())
}

// countError records a failed step: by the KDC's error code, else by what
// went wrong (unreachable, not_forwardable, protocol).
func countError(e *Error) {
	code := strconv.Itoa(int(e.Code))
	switch {
	case e.Code != 0:
	case e.Kind == ErrKDCUnreachable:
		code = "unreachable"
	case e.Kind == ErrNotForwardable:
		code = "not_forwardable"
	case e.Kind == ErrSIDMismatch:
		code = "sid_mismatch"
	default:
		code = "protocol"
	}
	kdcErrors.WithLabelValues(e.Step, code).Inc()
}

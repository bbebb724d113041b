package ens

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ensgate/ensgate/internal/promreg"
)

// Metrics carry outcomes only: never an address, a token or content.
var (
	notifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "notifications_total",
		Help: "SendNotification callbacks from Exchange by result (ok, unsubscribe, retry, throttled, overloaded, forged, malformed).",
	}, []string{"result"})
	registrations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "registrations_total",
		Help: "registerdevicev2 calls by result (active, or the error code answered).",
	}, []string{"result"})
	keyPoolFree = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "key_pool_free",
		Help: "Pre-generated key pairs ready for publickey, as last counted by this node.",
	})
	itemsIgnored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "items_ignored_total",
		Help: "Items named in notifications that were not announced, by reason (stale: older than the subscription or a day; over_cap: beyond the newest per notification; not_inbox: not in the subscribed Inbox).",
	}, []string{"reason"})
	notificationsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "notifications_in_flight",
		Help: "Exchange callbacks this node is working on.",
	})
	webhookToPush = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "webhook_to_push_seconds",
		Help:    "From Exchange's callback arriving to a push accepted by APNs or FCM.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	})
	subscriptionsByState = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "subscriptions",
		Help: "Subscriptions by state (active, failed, ended), as last counted by this node.",
	}, []string{"state"})
	jobsWaiting = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "jobs",
		Help: "Durable jobs not finished, by kind (ensgate_push, ensgate_reregister, ...) and state (available, running, retryable, scheduled), as last counted by this node.",
	}, []string{"kind", "state"})
	graphThrottled = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "graph_throttled_total",
		Help: "Graph calls answered 429 (or 503 with Retry-After): the mailbox's calls wait as long as Graph says.",
	})
	graphRenewals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "graph_subscription_renewals_total",
		Help: "Graph subscriptions kept alive, by how (reauthorized, renewed, recreated).",
	}, []string{"how"})
	keyPairsResealed = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "ensgate", Subsystem: "ens", Name: "key_pairs_resealed_total",
		Help: "Key pairs this node moved from an accepted (rotated-out) master key to the current one.",
	})
)

// Register adds ENS's metrics to reg; registering twice (a config reload)
// is fine.
func Register(reg prometheus.Registerer) error {
	return promreg.Register(reg, notifications, registrations, itemsIgnored, keyPoolFree, keyPairsResealed, notificationsInFlight, webhookToPush, subscriptionsByState, jobsWaiting, graphThrottled, graphRenewals)
}

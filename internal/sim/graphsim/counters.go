package graphsim

import (
	"maps"
	"sync"
)

// Counters is a snapshot of what the simulator has seen and done.
type Counters struct {
	// Requests counts authenticated Graph requests per mailbox address
	// (429s included).
	Requests map[string]int64 `json:"requests"`
	// Operations counts Graph requests by operation: me, mailFolder,
	// messages, message, delta, subscriptionCreate, subscriptionGet,
	// subscriptionList, subscriptionUpdate, subscriptionDelete,
	// subscriptionReauthorize.
	Operations map[string]int64 `json:"operations"`
	// Auth counts Graph authentication outcomes: ok, missing, invalid,
	// expired.
	Auth map[string]int64 `json:"auth"`
	// Throttled counts 429 answers by reason: MailboxConcurrency,
	// RequestRate, injected.
	Throttled map[string]int64 `json:"throttled"`
	// TokenErrors counts token endpoint errors by error code
	// (invalid_grant, unauthorized_client, ...).
	TokenErrors map[string]int64 `json:"tokenErrors"`
	// Lifecycle counts lifecycle notifications accepted by the listener,
	// by lifecycleEvent.
	Lifecycle map[string]int64 `json:"lifecycle"`

	TokenRequests int64 `json:"tokenRequests"`
	TokensIssued  int64 `json:"tokensIssued"`
	Delivered     int64 `json:"delivered"` // mails delivered

	ValidationsSent   int64 `json:"validationsSent"`
	ValidationsFailed int64 `json:"validationsFailed"`

	NotificationsSent    int64 `json:"notificationsSent"`    // change notifications in accepted POSTs
	NotificationPosts    int64 `json:"notificationPosts"`    // accepted POSTs (change and lifecycle)
	NotificationsRetried int64 `json:"notificationsRetried"` // failed POSTs (each is retried or dropped)
	NotificationsDropped int64 `json:"notificationsDropped"` // notifications given up (4 hours, slow endpoint)
	NotificationsPaused  int64 `json:"notificationsPaused"`  // changes not sent: subscription awaiting reauthorization
	SlowResponses        int64 `json:"slowResponses"`

	SubscriptionsCreated      int64 `json:"subscriptionsCreated"`
	SubscriptionsRenewed      int64 `json:"subscriptionsRenewed"`
	SubscriptionsReauthorized int64 `json:"subscriptionsReauthorized"`
	SubscriptionsDeleted      int64 `json:"subscriptionsDeleted"`
	SubscriptionsExpired      int64 `json:"subscriptionsExpired"`
	SubscriptionsRemoved      int64 `json:"subscriptionsRemoved"` // by subscriptionRemoved
}

type counters struct {
	mu sync.Mutex
	c  Counters
}

func newCounters() Counters {
	return Counters{
		Requests: map[string]int64{}, Operations: map[string]int64{}, Auth: map[string]int64{},
		Throttled: map[string]int64{}, TokenErrors: map[string]int64{}, Lifecycle: map[string]int64{},
	}
}

func (s *counters) bump(pick func(*Counters) map[string]int64, key string) {
	s.mu.Lock()
	pick(&s.c)[key]++
	s.mu.Unlock()
}

func (s *counters) request(user string) {
	s.bump(func(c *Counters) map[string]int64 { return c.Requests }, user)
}
func (s *counters) op(name string) {
	s.bump(func(c *Counters) map[string]int64 { return c.Operations }, name)
}
func (s *counters) auth(outcome string) {
	s.bump(func(c *Counters) map[string]int64 { return c.Auth }, outcome)
}
func (s *counters) throttled(reason string) {
	s.bump(func(c *Counters) map[string]int64 { return c.Throttled }, reason)
}
func (s *counters) tokenError(code string) {
	s.bump(func(c *Counters) map[string]int64 { return c.TokenErrors }, code)
}
func (s *counters) lifecycle(event string) {
	s.bump(func(c *Counters) map[string]int64 { return c.Lifecycle }, event)
}

func (s *counters) add(field *int64, n int64) {
	s.mu.Lock()
	*field += n
	s.mu.Unlock()
}

func (s *counters) snapshot() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.c
	c.Requests = maps.Clone(s.c.Requests)
	c.Operations = maps.Clone(s.c.Operations)
	c.Auth = maps.Clone(s.c.Auth)
	c.Throttled = maps.Clone(s.c.Throttled)
	c.TokenErrors = maps.Clone(s.c.TokenErrors)
	c.Lifecycle = maps.Clone(s.c.Lifecycle)
	return c
}

// Counters returns a snapshot of the counters.
func (s *Server) Counters() Counters { return s.stats.snapshot() }

// ResetCounters zeroes the counters.
func (s *Server) ResetCounters() {
	s.stats.mu.Lock()
	s.stats.c = newCounters()
	s.stats.mu.Unlock()
}

package ewssim

import (
	"maps"
	"sync"
)

// Counters is a snapshot of what the simulator has seen and done, so tests
// can assert on behaviour (for example that no GetItem was made).
type Counters struct {
	// Requests counts authenticated EWS requests by operation (the SOAP
	// body element's local name; "" when the body was unreadable).
	Requests map[string]int64 `json:"requests"`
	// Responses counts EWS response codes sent (NoError, ErrorItemNotFound,
	// ErrorServerBusy, ...), one per response message or fault.
	Responses map[string]int64 `json:"responses"`
	// Auth counts authentication outcomes: basic_ok, basic_failed,
	// bearer_ok, bearer_failed, certificate_ok, certificate_failed,
	// negotiate_ok, negotiate_failed,
	// ntlm_refused, missing (no or unknown Authorization scheme).
	Auth map[string]int64 `json:"auth"`
	// Faults counts injected faults applied, by kind.
	Faults map[string]int64 `json:"faults"`

	Delivered            int64 `json:"delivered"`            // mails delivered
	NotificationsSent    int64 `json:"notificationsSent"`    // SendNotification POSTs the listener accepted
	NotificationFailures int64 `json:"notificationFailures"` // POSTs that failed (each retry counts)
	EventsSent           int64 `json:"eventsSent"`           // events in accepted notifications (not StatusEvent)
	StatusEventsSent     int64 `json:"statusEventsSent"`     // accepted StatusEvent pings
	SubscriptionsCreated int64 `json:"subscriptionsCreated"`
	Unsubscribed         int64 `json:"unsubscribed"` // ended by the listener answering Unsubscribe
	Dropped              int64 `json:"dropped"`      // ended after failing past StatusFrequency
}

// counters is the live, locked form of Counters.
type counters struct {
	mu sync.Mutex
	c  Counters
}

func newCounters() Counters {
	return Counters{
		Requests:  map[string]int64{},
		Responses: map[string]int64{},
		Auth:      map[string]int64{},
		Faults:    map[string]int64{},
	}
}

// bump increments key in one of the maps of s.c, chosen by pick.
func (s *counters) bump(pick func(*Counters) map[string]int64, key string) {
	s.mu.Lock()
	pick(&s.c)[key]++
	s.mu.Unlock()
}

func (s *counters) request(op string) {
	s.bump(func(c *Counters) map[string]int64 { return c.Requests }, op)
}

func (s *counters) response(code string) {
	s.bump(func(c *Counters) map[string]int64 { return c.Responses }, code)
}

func (s *counters) auth(outcome string) {
	s.bump(func(c *Counters) map[string]int64 { return c.Auth }, outcome)
}

func (s *counters) fault(kind FaultKind) {
	s.bump(func(c *Counters) map[string]int64 { return c.Faults }, string(kind))
}

// add increments one of the scalar counters, given as a field of s.c.
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
	c.Responses = maps.Clone(s.c.Responses)
	c.Auth = maps.Clone(s.c.Auth)
	c.Faults = maps.Clone(s.c.Faults)
	return c
}

func (s *counters) reset() {
	s.mu.Lock()
	s.c = newCounters()
	s.mu.Unlock()
}

// Counters returns a snapshot of the counters.
func (s *Server) Counters() Counters { return s.stats.snapshot() }

// ResetCounters zeroes the counters.
func (s *Server) ResetCounters() { s.stats.reset() }

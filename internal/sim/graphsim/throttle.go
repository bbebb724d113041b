package graphsim

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Outlook's limits (concepts/throttling-limits.md, "Outlook service
// limits"): per app ID and mailbox, 4 concurrent requests and 10,000
// requests in a 10-minute period. Beyond them Graph answers 429 Too Many
// Requests with Retry-After (seconds) and
// {"error":{"code":"ApplicationThrottled","message":"Application is over
// its MailboxConcurrency limit."}}. (The docs name the limits, not the
// message texts: the MailboxConcurrency text is what Graph is widely
// reported to send; the request-rate text is the simulator's.)

type limitKey struct{ client, user string }

type limiter struct {
	inFlight int
	window   []time.Time // sim times of requests in the last RateWindow
}

// admit counts a request against its app and mailbox; when it is over a
// limit it answers 429 and returns false. release must be called after an
// admitted request.
func (s *Server) admit(w http.ResponseWriter, client string, m *mailbox) (release func(), ok bool) {
	now := s.clock.Now()
	key := limitKey{client, m.id}
	s.mu.Lock()
	if f, hit := s.takeFaultLocked(m.address); hit {
		s.mu.Unlock()
		s.stats.throttled("injected")
		writeThrottle(w, f.Status, f.RetryAfter, f.Code, f.Message)
		return nil, false
	}
	l := s.limits[key]
	if l == nil {
		l = &limiter{}
		s.limits[key] = l
	}
	cut := 0
	for cut < len(l.window) && !l.window[cut].After(now.Add(-s.cfg.RateWindow)) {
		cut++
	}
	l.window = l.window[cut:]
	if len(l.window) >= s.cfg.RateLimit {
		wait := l.window[0].Add(s.cfg.RateWindow).Sub(now)
		s.mu.Unlock()
		s.stats.throttled("RequestRate")
		writeThrottle(w, http.StatusTooManyRequests, wait, "ApplicationThrottled", "Application is over its RequestRate limit.")
		return nil, false
	}
	if l.inFlight >= s.cfg.MailboxConcurrency {
		s.mu.Unlock()
		s.stats.throttled("MailboxConcurrency")
		writeThrottle(w, http.StatusTooManyRequests, time.Second, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.")
		return nil, false
	}
	l.window = append(l.window, now)
	l.inFlight++
	s.mu.Unlock()
	return func() {
		s.mu.Lock()
		l.inFlight--
		s.mu.Unlock()
	}, true
}

func writeThrottle(w http.ResponseWriter, status int, retryAfter time.Duration, code, msg string) {
	secs := int(math.Ceil(retryAfter.Seconds()))
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	graphError(w, status, code, msg)
}

// Fault is an injected failure of Graph API requests (not of the token
// endpoint). A request consumes at most one fault: the oldest that matches.
type Fault struct {
	ID         string        `json:"id,omitempty"` // set by InjectFault
	User       string        `json:"user,omitempty"`
	Count      int           `json:"count,omitempty"` // requests left; 0: until removed
	Status     int           `json:"status,omitempty"`
	RetryAfter time.Duration `json:"retryAfter,omitempty"`
	Code       string        `json:"code,omitempty"`
	Message    string        `json:"message,omitempty"`
}

// Throttle makes the next count Graph requests for the user (every user if
// empty; count 0: until removed) get 429 ApplicationThrottled with
// Retry-After; it returns the fault's id.
func (s *Server) Throttle(user string, count int, retryAfter time.Duration) (string, error) {
	return s.InjectFault(Fault{User: user, Count: count, Status: http.StatusTooManyRequests, RetryAfter: retryAfter})
}

// InjectFault adds a fault: Status (default 429) with Retry-After (default
// 10 s; 503 ServiceUnavailable also carries one) and the Graph error Code
// and Message (defaults: ApplicationThrottled, "Application is over its
// MailboxConcurrency limit.").
func (s *Server) InjectFault(f Fault) (string, error) {
	if f.Count < 0 {
		return "", fmt.Errorf("graphsim: negative fault count")
	}
	if f.Status == 0 {
		f.Status = http.StatusTooManyRequests
	}
	if f.Status < 400 || f.Status > 599 {
		return "", fmt.Errorf("graphsim: a fault's status must be 4xx or 5xx")
	}
	if f.RetryAfter <= 0 {
		f.RetryAfter = 10 * time.Second
	}
	if f.Code == "" {
		if f.Status == http.StatusTooManyRequests {
			f.Code, f.Message = "ApplicationThrottled", "Application is over its MailboxConcurrency limit."
		} else {
			f.Code, f.Message = "ServiceUnavailable", "Service unavailable."
		}
	}
	f.User = normAddr(f.User)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faultSeq++
	f.ID = "f" + strconv.Itoa(s.faultSeq)
	s.faults = append(s.faults, &f)
	return f.ID, nil
}

// RemoveFault removes one fault; it reports whether it existed.
func (s *Server) RemoveFault(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.ID == id {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
			return true
		}
	}
	return false
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

func (s *Server) takeFaultLocked(user string) (Fault, bool) {
	for i, f := range s.faults {
		if f.User != "" && !strings.EqualFold(f.User, user) {
			continue
		}
		taken := *f
		if f.Count > 0 {
			f.Count--
			if f.Count == 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
		}
		return taken, true
	}
	return Fault{}, false
}

// Package scripted is what the push fakes share: queues of scripted replies
// per key (a device token, or "" for any), an added latency and an outage
// switch.
package scripted

import (
	"net/http"
	"sync"
	"time"
)

// Script is safe for concurrent use; its zero value is ready.
type Script[R any] struct {
	mu      sync.Mutex
	queues  map[string][]R
	latency time.Duration
	outage  bool
}

// Add queues replies for key ("" for any key).
func (s *Script[R]) Add(key string, replies ...R) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queues == nil {
		s.queues = map[string][]R{}
	}
	s.queues[key] = append(s.queues[key], replies...)
}

// SetLatency delays every answer by d (0: none).
func (s *Script[R]) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetOutage turns the outage on or off.
func (s *Script[R]) SetOutage(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outage = on
}

// Outage reports whether the outage is on.
func (s *Script[R]) Outage() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outage
}

// Next takes key's next reply, else the next one for any key; ok is false
// when neither is queued. latency is the added delay either way.
func (s *Script[R]) Next(key string) (reply R, latency time.Duration, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range []string{key, ""} {
		if q := s.queues[k]; len(q) > 0 {
			s.queues[k] = q[1:]
			return q[0], s.latency, true
		}
	}
	return reply, s.latency, false
}

// Sleep waits d before an answer unless the client gives up first; it
// reports whether to answer.
func Sleep(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

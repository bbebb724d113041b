package apnsfake

import (
	"net/http"
	"time"
)

// Reply is a scripted answer to one push.
type Reply struct {
	Status    int           // HTTP status; 0 with a Reason means 400
	Reason    string        // Apple's reason, e.g. "BadDeviceToken"
	Timestamp time.Time     // for 410: when the token became invalid
	Delay     time.Duration // wait this long before answering
	Drop      bool          // close every client connection instead of answering
}

// Common replies.
var (
	BadDeviceToken       = Reply{Status: http.StatusBadRequest, Reason: "BadDeviceToken"}
	BadTopic             = Reply{Status: http.StatusBadRequest, Reason: "BadTopic"}
	ExpiredProviderToken = Reply{Status: http.StatusForbidden, Reason: "ExpiredProviderToken"}
	InvalidProviderToken = Reply{Status: http.StatusForbidden, Reason: "InvalidProviderToken"}
	PayloadTooLarge      = Reply{Status: http.StatusRequestEntityTooLarge, Reason: "PayloadTooLarge"}
	TooManyRequests      = Reply{Status: http.StatusTooManyRequests, Reason: "TooManyRequests"}
	InternalServerError  = Reply{Status: http.StatusInternalServerError, Reason: "InternalServerError"}
	ServiceUnavailable   = Reply{Status: http.StatusServiceUnavailable, Reason: "ServiceUnavailable"}
	Outage               = Reply{Drop: true}
)

// Unregistered is APNs' 410 for a token that became invalid at t.
func Unregistered(t time.Time) Reply {
	return Reply{Status: http.StatusGone, Reason: "Unregistered", Timestamp: t}
}

// Script queues replies for pushes to token ("" for any token). Pushes
// that pass Apple's checks take the token's queue first, then the global
// one, then succeed.
func (s *Server) Script(token string, replies ...Reply) { s.script.Add(token, replies...) }

// SetLatency delays every answer by d (0: none).
func (s *Server) SetLatency(d time.Duration) { s.script.SetLatency(d) }

// SetOutage makes every request close all connections (true) or not.
func (s *Server) SetOutage(on bool) { s.script.SetOutage(on) }

// ExpireProviderTokens makes every provider token seen so far answer 403
// ExpiredProviderToken from now on, as if an hour had passed.
func (s *Server) ExpireProviderTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for b, t := range s.bearers {
		t.expired = true
		s.bearers[b] = t
	}
}

// ProviderTokens is the number of distinct provider tokens seen.
func (s *Server) ProviderTokens() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bearers)
}

// Pushes returns every push received so far, answered or not by success.
func (s *Server) Pushes() []Push {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Push(nil), s.pushes...)
}

// Delivered returns the pushes answered 200.
func (s *Server) Delivered() []Push {
	var ok []Push
	for _, p := range s.Pushes() {
		if p.Status == http.StatusOK {
			ok = append(ok, p)
		}
	}
	return ok
}

// MaxConcurrent is the highest number of requests handled at once.
func (s *Server) MaxConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxActive
}

package fcmfake

import (
	"net/http"
	"time"
)

// Reply is a scripted answer to one send, in Google's error format.
type Reply struct {
	Status     int           // HTTP status
	Code       string        // google.rpc status, e.g. "UNAVAILABLE"
	ErrorCode  string        // FcmError errorCode in details, e.g. "UNREGISTERED"
	Field      string        // a BadRequest field violation, e.g. "message.token"
	RetryAfter time.Duration // Retry-After header (whole seconds)
	Delay      time.Duration // wait this long before answering
	Drop       bool          // close every client connection instead of answering
}

// Common replies, as FCM HTTP v1 gives them.
var (
	Unregistered     = Reply{Status: http.StatusNotFound, Code: "NOT_FOUND", ErrorCode: "UNREGISTERED"}
	InvalidToken     = Reply{Status: http.StatusBadRequest, Code: "INVALID_ARGUMENT", ErrorCode: "INVALID_ARGUMENT", Field: "message.token"}
	InvalidArgument  = Reply{Status: http.StatusBadRequest, Code: "INVALID_ARGUMENT", ErrorCode: "INVALID_ARGUMENT", Field: "message.android.ttl"}
	SenderIDMismatch = Reply{Status: http.StatusForbidden, Code: "PERMISSION_DENIED", ErrorCode: "SENDER_ID_MISMATCH"}
	Unavailable      = Reply{Status: http.StatusServiceUnavailable, Code: "UNAVAILABLE", ErrorCode: "UNAVAILABLE"}
	Internal         = Reply{Status: http.StatusInternalServerError, Code: "INTERNAL", ErrorCode: "INTERNAL"}
	Outage           = Reply{Drop: true}
)

// QuotaExceeded is FCM's 429 with a Retry-After.
func QuotaExceeded(retryAfter time.Duration) Reply {
	return Reply{Status: http.StatusTooManyRequests, Code: "RESOURCE_EXHAUSTED", ErrorCode: "QUOTA_EXCEEDED", RetryAfter: retryAfter}
}

// Script queues replies for sends to token ("" for any token). Valid sends
// take the token's queue first, then the global one, then succeed.
func (s *Server) Script(token string, replies ...Reply) { s.script.Add(token, replies...) }

// SetLatency delays every answer by d (0: none).
func (s *Server) SetLatency(d time.Duration) { s.script.SetLatency(d) }

// SetOutage makes every request close all connections (true) or not.
func (s *Server) SetOutage(on bool) { s.script.SetOutage(on) }

// Messages returns every send received so far, however it was answered.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Delivered returns the sends answered 200.
func (s *Server) Delivered() []Message {
	var ok []Message
	for _, m := range s.Messages() {
		if m.Status == http.StatusOK {
			ok = append(ok, m)
		}
	}
	return ok
}

// TokenRequests is the number of access tokens issued.
func (s *Server) TokenRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tokens)
}

// MaxConcurrent is the highest number of sends handled at once.
func (s *Server) MaxConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxActive
}

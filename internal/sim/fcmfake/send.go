package fcmfake

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/ensgate/ensgate/internal/sim/scripted"
)

// MaxData is FCM's limit on a data payload (keys and values).
const MaxData = 4096

var (
	tokenSyntax = regexp.MustCompile(`^[A-Za-z0-9_:.-]+$`)
	ttlSyntax   = regexp.MustCompile(`^\d+(\.\d{1,9})?s$`)
)

// sendRequest is the subset of the v1 API this fake understands; unknown
// fields are refused, as Google does.
type sendRequest struct {
	ValidateOnly bool `json:"validate_only"`
	Message      struct {
		Token        string            `json:"token"`
		Data         map[string]string `json:"data"`
		Notification json.RawMessage   `json:"notification"`
		Android      *Android          `json:"android"`
		APNs         json.RawMessage   `json:"apns"`
		FCMOptions   json.RawMessage   `json:"fcm_options"`
	} `json:"message"`
}

// send is projects/{project}/messages:send.
func (s *Server) send(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	m := Message{Project: r.PathValue("project"), Raw: body, Received: time.Now()}
	reply, message := s.check(r, body, &m)
	if reply.Status == 0 {
		next, latency, ok := s.script.Next(m.Token)
		if !scripted.Sleep(r, latency+next.Delay) {
			return
		}
		if next.Drop {
			s.srv.CloseClientConnections()
			return
		}
		if ok && next.Status != http.StatusOK {
			reply, message = next, "scripted failure"
		}
	}
	m.Status = cmp.Or(reply.Status, http.StatusOK)
	m.Error = cmp.Or(reply.ErrorCode, reply.Code)
	s.mu.Lock()
	s.messages = append(s.messages, m)
	n := len(s.messages)
	s.mu.Unlock()

	if reply.Status != 0 {
		googleError(w, reply, message)
	} else {
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"name": fmt.Sprintf("projects/%s/messages/0:%d%%fake", m.Project, n),
		})
	}
	if s.cfg.OnMessage != nil {
		s.cfg.OnMessage(m)
	}
}

// check validates a send as FCM would, filling m; a zero Reply means it
// passes.
func (s *Server) check(r *http.Request, body []byte, m *Message) (Reply, string) {
	if !s.authorized(r) {
		return Reply{Status: http.StatusUnauthorized, Code: "UNAUTHENTICATED"},
			"Request had invalid authentication credentials. Expected OAuth 2 access token."
	}
	if m.Project != s.project {
		return Reply{Status: http.StatusForbidden, Code: "PERMISSION_DENIED"},
			"Permission 'cloudmessaging.messages.create' denied on resource"
	}
	var req sendRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return invalid(""), "Invalid JSON payload received. " + err.Error()
	}
	msg := req.Message
	m.Token, m.Data = msg.Token, msg.Data
	if msg.Android != nil {
		m.Android = *msg.Android
	}
	if !tokenSyntax.MatchString(msg.Token) {
		return invalid("message.token"), "The registration token is not a valid FCM registration token"
	}
	size := 0
	for k, v := range msg.Data {
		size += len(k) + len(v)
		if k == "from" || k == "notification" || k == "message_type" ||
			strings.HasPrefix(k, "google") || strings.HasPrefix(k, "gcm") {
			return invalid("message.data"), "Invalid data payload key: " + k
		}
	}
	if size > MaxData {
		return invalid("message"), "Android message is too big"
	}
	if a := msg.Android; a != nil {
		switch strings.ToLower(a.Priority) {
		case "", "normal", "high":
		default:
			return invalid("message.android.priority"), "Invalid value at 'message.android.priority'"
		}
		if a.TTL != "" && !ttlSyntax.MatchString(a.TTL) {
			return invalid("message.android.ttl"), "Invalid value at 'message.android.ttl'"
		}
	}
	return Reply{}, ""
}

func invalid(field string) Reply {
	return Reply{Status: http.StatusBadRequest, Code: "INVALID_ARGUMENT", ErrorCode: "INVALID_ARGUMENT", Field: field}
}

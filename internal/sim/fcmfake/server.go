// Package fcmfake is a local FCM HTTP v1 service for tests and the local
// demo: Google's OAuth 2 token endpoint for service accounts (JWT bearer
// grant) and projects/{p}/messages:send. It generates its own service
// account, checks requests as Google does, records every message and
// answers scripted failures in Google's JSON error format.
package fcmfake

import (
	"cmp"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"time"

	"github.com/ensgate/ensgate/internal/sim/scripted"
)

// Config configures a Server.
type Config struct {
	Addr      string           // listen address ("127.0.0.1:0")
	ProjectID string           // the Firebase project ("ensgate-test")
	TokenTTL  time.Duration    // lifetime of issued access tokens (1h)
	TLSCert   *tls.Certificate // server certificate; nil: net/http/httptest's
	OnMessage func(Message)    // called for each send, after it is answered
}

// Message is one send as received, and how it was answered.
type Message struct {
	Project  string
	Token    string
	Data     map[string]string
	Android  Android
	Raw      json.RawMessage // the request body
	Status   int
	Error    string // FcmError errorCode or status; "" when delivered
	Received time.Time
}

// Android is the message's android block.
type Android struct {
	Priority    string `json:"priority"`
	TTL         string `json:"ttl"`
	CollapseKey string `json:"collapse_key"`
}

// Server is a running fake.
type Server struct {
	URL string // https://host:port

	cfg     Config
	srv     *httptest.Server
	key     *rsa.PrivateKey
	keyID   string
	email   string
	project string

	mu        sync.Mutex
	tokens    map[string]time.Time // access token → expiry
	script    scripted.Script[Reply]
	messages  []Message
	active    int
	maxActive int
}

// New generates a service account and starts a server.
func New(cfg Config) (*Server, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cmp.Or(cfg.Addr, "127.0.0.1:0"))
	if err != nil {
		return nil, err
	}
	project := cmp.Or(cfg.ProjectID, "ensgate-test")
	s := &Server{
		cfg:     cfg,
		key:     key,
		keyID:   rand.Text(),
		email:   "ensgate-push@" + project + ".iam.gserviceaccount.com",
		project: project,
		tokens:  map[string]time.Time{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /token", s.token)
	mux.HandleFunc("POST /v1/projects/{project}/messages:send", s.send)
	s.srv = httptest.NewUnstartedServer(s.track(mux))
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // clients under test fail handshakes on purpose
	s.srv.EnableHTTP2 = true
	s.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if cfg.TLSCert != nil {
		s.srv.TLS.Certificates = []tls.Certificate{*cfg.TLSCert}
	}
	s.srv.StartTLS()
	s.URL = s.srv.URL
	return s, nil
}

// Certificate is the server's certificate, for clients to trust.
func (s *Server) Certificate() *x509.Certificate { return s.srv.Certificate() }

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// ProjectID is the project messages must be sent to.
func (s *Server) ProjectID() string { return s.project }

// track counts concurrent requests and plays an outage.
func (s *Server) track(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.active++
		s.maxActive = max(s.maxActive, s.active)
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			s.active--
			s.mu.Unlock()
		}()
		if s.script.Outage() {
			s.srv.CloseClientConnections()
			return
		}
		next.ServeHTTP(w, r)
	})
}

// googleError writes Google's JSON error body (google.rpc.Status).
func googleError(w http.ResponseWriter, r Reply, message string) {
	var details []map[string]any
	if r.ErrorCode != "" {
		details = append(details, map[string]any{
			"@type":     "type.googleapis.com/google.firebase.fcm.v1.FcmError",
			"errorCode": r.ErrorCode,
		})
	}
	if r.Field != "" {
		details = append(details, map[string]any{
			"@type":           "type.googleapis.com/google.rpc.BadRequest",
			"fieldViolations": []map[string]string{{"field": r.Field, "description": message}},
		})
	}
	if r.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(r.RetryAfter/time.Second)))
	}
	body := map[string]any{"error": map[string]any{
		"code": r.Status, "message": message, "status": r.Code, "details": details,
	}}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(r.Status)
	_ = json.NewEncoder(w).Encode(body)
}

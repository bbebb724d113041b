// Package apnsfake is a local APNs provider API (HTTP/2 over TLS) for tests
// and the local demo. It checks requests the way Apple does (provider token
// or client certificate, apns-topic, apns-push-type, apns-priority, the
// 4096-byte payload limit), records every push, and answers scripted
// failures with Apple's status codes and JSON reasons.
package apnsfake

import (
	"cmp"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ensgate/ensgate/internal/sim/scripted"
)

// MaxPayload is Apple's payload limit for non-VoIP pushes.
const MaxPayload = 4096

// Config configures a Server.
type Config struct {
	Addr      string           // listen address ("127.0.0.1:0")
	Keys      []*Key           // provider keys accepted for token auth
	Topics    []string         // accepted apns-topic values; empty: any
	ClientCAs *x509.CertPool   // client certificates signed by these authenticate (certificate auth)
	TLSCert   *tls.Certificate // server certificate; nil: net/http/httptest's
	OnPush    func(Push)       // called for each push, after it is answered
	Discard   bool             // keep no pushes (long runs, benchmarks)
}

// Push is one request as received, and how it was answered.
type Push struct {
	Token      string
	Topic      string
	PushType   string
	Priority   int // 10 when the header is absent, as Apple assumes
	Expiration string
	CollapseID string
	ApnsID     string
	Auth       string // "token" or "certificate"
	KeyID      string // the provider token's kid
	Bearer     string // the provider token itself
	Payload    json.RawMessage
	Status     int
	Reason     string
	Received   time.Time
}

// Server is a running fake.
type Server struct {
	URL string // https://host:port

	cfg  Config
	srv  *httptest.Server
	keys map[string]*Key

	mu        sync.Mutex
	script    scripted.Script[Reply]
	bearers   map[string]providerToken // verified provider tokens
	pushes    []Push
	active    int
	maxActive int
}

// New starts a server.
func New(cfg Config) (*Server, error) {
	ln, err := net.Listen("tcp", cmp.Or(cfg.Addr, "127.0.0.1:0"))
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:     cfg,
		keys:    map[string]*Key{},
		bearers: map[string]providerToken{},
	}
	for _, k := range cfg.Keys {
		s.keys[k.ID] = k
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.handle))
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // clients under test fail handshakes on purpose
	s.srv.EnableHTTP2 = true                           // and nothing else: APNs speaks only HTTP/2
	s.srv.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TLSCert != nil {
		s.srv.TLS.Certificates = []tls.Certificate{*cfg.TLSCert}
	}
	if cfg.ClientCAs != nil {
		s.srv.TLS.ClientAuth = tls.VerifyClientCertIfGiven
		s.srv.TLS.ClientCAs = cfg.ClientCAs
	}
	s.srv.StartTLS()
	s.URL = s.srv.URL
	return s, nil
}

// Certificate is the server's certificate, for clients to trust.
func (s *Server) Certificate() *x509.Certificate { return s.srv.Certificate() }

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	s.enter()
	defer s.leave()
	if s.script.Outage() {
		s.drop()
		return
	}
	p := Push{Received: time.Now(), ApnsID: r.Header.Get("apns-id")}
	status, reason := s.check(r, &p)
	if status == 0 {
		reply, latency, wasScripted := s.script.Next(p.Token)
		if !scripted.Sleep(r, latency+reply.Delay) {
			return
		}
		if reply.Drop {
			s.drop()
			return
		}
		if wasScripted {
			status, reason = cmp.Or(reply.Status, http.StatusBadRequest), reply.Reason
			if status == http.StatusOK {
				reason = ""
			}
		}
		s.respond(w, &p, cmp.Or(status, http.StatusOK), reason, reply.Timestamp)
		return
	}
	s.respond(w, &p, status, reason, time.Time{})
}

// check validates r as APNs would, filling p; status 0 means it passes.
func (s *Server) check(r *http.Request, p *Push) (status int, reason string) {
	if r.ProtoMajor != 2 {
		return http.StatusHTTPVersionNotSupported, "HTTP2Required"
	}
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, "MethodNotAllowed"
	}
	token, ok := strings.CutPrefix(r.URL.Path, "/3/device/")
	if !ok {
		return http.StatusNotFound, "BadPath"
	}
	p.Token = token
	p.Topic = r.Header.Get("apns-topic")
	p.PushType = r.Header.Get("apns-push-type")
	p.Expiration = r.Header.Get("apns-expiration")
	p.CollapseID = r.Header.Get("apns-collapse-id")
	p.Priority = 10
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxPayload+1))
	if err != nil {
		return http.StatusBadRequest, "PayloadEmpty"
	}
	p.Payload = body

	// Apple checks the credentials first.
	if status, reason := s.authenticate(r, p); status != 0 {
		return status, reason
	}
	if token == "" {
		return http.StatusBadRequest, "MissingDeviceToken"
	}
	if _, err := hex.DecodeString(token); err != nil || len(token) < 64 {
		return http.StatusBadRequest, "BadDeviceToken"
	}
	if p.Topic == "" {
		return http.StatusBadRequest, "MissingTopic"
	}
	if !s.topicAllowed(p.Topic) {
		return http.StatusBadRequest, "TopicDisallowed"
	}
	switch p.PushType {
	case "alert", "background", "voip", "complication", "fileprovider", "mdm", "location", "liveactivity", "pushtotalk", "widgets", "controls":
	default:
		return http.StatusBadRequest, "InvalidPushType"
	}
	if v := r.Header.Get("apns-priority"); v != "" {
		p.Priority, err = strconv.Atoi(v)
		if err != nil || (p.Priority != 1 && p.Priority != 5 && p.Priority != 10) {
			return http.StatusBadRequest, "BadPriority"
		}
	}
	if p.PushType == "background" && p.Priority != 5 {
		return http.StatusBadRequest, "BadPriority" // Apple requires 5 for background pushes
	}
	if v := p.Expiration; v != "" {
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			return http.StatusBadRequest, "BadExpirationDate"
		}
	}
	if len(p.CollapseID) > 64 {
		return http.StatusBadRequest, "BadCollapseId"
	}
	if len(body) > MaxPayload {
		return http.StatusRequestEntityTooLarge, "PayloadTooLarge"
	}
	if len(body) == 0 {
		return http.StatusBadRequest, "PayloadEmpty"
	}
	// Stricter than Apple, which would accept and drop it: a push that is
	// not a JSON object with "aps" is a bug in the sender under test.
	var payload struct {
		APS map[string]any `json:"aps"`
	}
	if err := json.Unmarshal(body, &payload); err != nil || payload.APS == nil {
		return http.StatusBadRequest, "BadPayload"
	}
	return 0, ""
}

func (s *Server) topicAllowed(topic string) bool {
	if len(s.cfg.Topics) == 0 {
		return true
	}
	for _, t := range s.cfg.Topics {
		if t == topic {
			return true
		}
	}
	return false
}

// respond records p and writes Apple's answer: apns-id always, a JSON
// reason on failure, with the timestamp (milliseconds) for 410.
func (s *Server) respond(w http.ResponseWriter, p *Push, status int, reason string, ts time.Time) {
	p.Status, p.Reason = status, reason
	if p.ApnsID == "" {
		p.ApnsID = uuid()
	}
	if !s.cfg.Discard {
		s.mu.Lock()
		s.pushes = append(s.pushes, *p)
		s.mu.Unlock()
	}

	w.Header().Set("apns-id", p.ApnsID)
	if status != http.StatusOK {
		body := map[string]any{"reason": reason}
		if status == http.StatusGone {
			body["timestamp"] = ts.UnixMilli()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	} else {
		w.WriteHeader(http.StatusOK)
	}
	if s.cfg.OnPush != nil {
		s.cfg.OnPush(*p)
	}
}

// drop closes every client connection, as an outage or a network cut.
func (s *Server) drop() {
	s.srv.CloseClientConnections()
}

func (s *Server) enter() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active++
	s.maxActive = max(s.maxActive, s.active)
}

func (s *Server) leave() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.active--
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%X-%X-%X-%X-%X", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

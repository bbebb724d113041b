package graphsim

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// The control API mirrors the Go methods as JSON over HTTP, for a
// standalone simulator (make run) and for tools:
//
//	GET    /_sim/health
//	GET    /_sim/users                          POST /_sim/users {User}
//	POST   /_sim/users/{address}/mail {Mail}    GET /_sim/users/{address}/messages
//	PUT    /_sim/users/{address}/messages/{id}/read {"read":bool}
//	DELETE /_sim/users/{address}/messages/{id}
//	POST   /_sim/users/{address}/refresh-tokens {"clientId","scopes"} → {"refreshToken"}
//	DELETE /_sim/users/{address}/refresh-tokens (revoke)
//	DELETE /_sim/users/{address}/access-tokens  (expire)
//	GET    /_sim/subscriptions
//	POST   /_sim/subscriptions/{id}/lifecycle {"event"}
//	POST   /_sim/clock/advance {"seconds"}      GET /_sim/clock
//	POST   /_sim/faults {Fault, retryAfterSeconds} DELETE /_sim/faults
//	GET    /_sim/counters                        DELETE /_sim/counters
//
// With Config.ControlToken set, every request needs X-Sim-Token.

func (s *Server) serveControl(w http.ResponseWriter, r *http.Request) {
	if s.cfg.ControlToken != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Sim-Token")), []byte(s.cfg.ControlToken)) != 1 {
		writeJSON(w, http.StatusForbidden, map[string]string{"error": "missing or wrong X-Sim-Token"})
		return
	}
	s.control.ServeHTTP(w, r)
}

func (s *Server) controlMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_sim/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /_sim/users", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Users())
	})
	mux.HandleFunc("POST /_sim/users", func(w http.ResponseWriter, r *http.Request) {
		var u User
		if readJSON(w, r, &u) {
			info, err := s.AddUser(u)
			writeResult(w, http.StatusCreated, info, err)
		}
	})
	mux.HandleFunc("POST /_sim/users/{address}/mail", func(w http.ResponseWriter, r *http.Request) {
		var m Mail
		if readJSON(w, r, &m) {
			msg, err := s.Deliver(r.PathValue("address"), m)
			writeResult(w, http.StatusCreated, msg, err)
		}
	})
	mux.HandleFunc("GET /_sim/users/{address}/messages", func(w http.ResponseWriter, r *http.Request) {
		msgs, err := s.Messages(r.PathValue("address"))
		writeResult(w, http.StatusOK, msgs, err)
	})
	mux.HandleFunc("PUT /_sim/users/{address}/messages/{id}/read", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Read bool `json:"read"`
		}
		if readJSON(w, r, &body) {
			writeResult(w, http.StatusNoContent, nil, s.MarkRead(r.PathValue("address"), r.PathValue("id"), body.Read))
		}
	})
	mux.HandleFunc("DELETE /_sim/users/{address}/messages/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeResult(w, http.StatusNoContent, nil, s.DeleteMessage(r.PathValue("address"), r.PathValue("id")))
	})
	mux.HandleFunc("POST /_sim/users/{address}/refresh-tokens", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ClientID string   `json:"clientId"`
			Scopes   []string `json:"scopes"`
		}
		if readJSON(w, r, &body) {
			if body.ClientID == "" {
				body.ClientID = DefaultClientID
			}
			tok, err := s.MintRefreshToken(r.PathValue("address"), body.ClientID, body.Scopes...)
			writeResult(w, http.StatusCreated, map[string]string{"refreshToken": tok}, err)
		}
	})
	mux.HandleFunc("DELETE /_sim/users/{address}/refresh-tokens", func(w http.ResponseWriter, r *http.Request) {
		writeResult(w, http.StatusNoContent, nil, s.RevokeRefreshTokens(r.PathValue("address")))
	})
	mux.HandleFunc("DELETE /_sim/users/{address}/access-tokens", func(w http.ResponseWriter, r *http.Request) {
		writeResult(w, http.StatusNoContent, nil, s.ExpireAccessTokens(r.PathValue("address")))
	})
	mux.HandleFunc("GET /_sim/subscriptions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Subscriptions())
	})
	mux.HandleFunc("POST /_sim/subscriptions/{id}/lifecycle", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Event string `json:"event"`
		}
		if readJSON(w, r, &body) {
			writeResult(w, http.StatusNoContent, nil, s.Lifecycle(r.PathValue("id"), body.Event))
		}
	})
	mux.HandleFunc("GET /_sim/clock", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"now": subTime(s.Now())})
	})
	mux.HandleFunc("POST /_sim/clock/advance", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Seconds float64 `json:"seconds"`
		}
		if readJSON(w, r, &body) {
			if body.Seconds < 0 {
				writeJSON(w, http.StatusBadRequest, map[string]string{"error": "seconds must not be negative"})
				return
			}
			s.Advance(time.Duration(body.Seconds * float64(time.Second)))
			writeJSON(w, http.StatusOK, map[string]string{"now": subTime(s.Now())})
		}
	})
	mux.HandleFunc("POST /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Fault
			RetryAfterSeconds int `json:"retryAfterSeconds"`
		}
		if readJSON(w, r, &body) {
			body.Fault.RetryAfter = time.Duration(body.RetryAfterSeconds) * time.Second
			id, err := s.InjectFault(body.Fault)
			writeResult(w, http.StatusCreated, map[string]string{"id": id}, err)
		}
	})
	mux.HandleFunc("DELETE /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_sim/counters", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Counters())
	})
	mux.HandleFunc("DELETE /_sim/counters", func(w http.ResponseWriter, r *http.Request) {
		s.ResetCounters()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/_sim/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such control endpoint"})
	})
	return mux
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "malformed JSON: " + err.Error()})
		return false
	}
	return true
}

func writeResult(w http.ResponseWriter, status int, v any, err error) {
	switch {
	case err == nil && v == nil:
		w.WriteHeader(status)
	case err == nil:
		writeJSON(w, status, v)
	default:
		code := http.StatusBadRequest
		switch {
		case errors.Is(err, ErrNoSuchUser), errors.Is(err, ErrNoSuchMessage), errors.Is(err, ErrNoSuchSubscription):
			code = http.StatusNotFound
		case errors.Is(err, ErrUserExists):
			code = http.StatusConflict
		}
		writeJSON(w, code, map[string]string{"error": err.Error()})
	}
}

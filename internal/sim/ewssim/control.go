package ewssim

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// maxControlBody bounds control API request bodies.
const maxControlBody = 1 << 20

// controlMux serves the control API: JSON over HTTP mirroring the Go
// methods. It lives under ControlPrefix so it can never be mistaken for
// EWS, and requires X-Sim-Token when Config.ControlToken is set.
func (s *Server) controlMux() *http.ServeMux {
	mux := http.NewServeMux()
	handle := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, s.guard(h)) }

	handle("GET /_sim/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	handle("GET /_sim/users", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Users())
	})
	handle("POST /_sim/users", func(w http.ResponseWriter, r *http.Request) {
		var u User
		if !readJSON(w, r, &u) {
			return
		}
		if err := s.AddUser(u); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"address": normAddr(u.Address)})
	})
	handle("PUT /_sim/users/{address}/password", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Password string `json:"password"`
		}
		if readJSON(w, r, &body) {
			writeResult(w, s.SetPassword(r.PathValue("address"), body.Password))
		}
	})
	handle("PUT /_sim/users/{address}/token", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Token string `json:"token"`
		}
		if readJSON(w, r, &body) {
			writeResult(w, s.SetToken(r.PathValue("address"), body.Token))
		}
	})
	handle("DELETE /_sim/users/{address}/token", func(w http.ResponseWriter, r *http.Request) {
		writeResult(w, s.SetToken(r.PathValue("address"), ""))
	})
	handle("PUT /_sim/users/{address}/delegates/{delegate}", func(w http.ResponseWriter, r *http.Request) {
		writeResult(w, s.GrantAccess(r.PathValue("address"), r.PathValue("delegate")))
	})
	handle("POST /_sim/users/{address}/mail", func(w http.ResponseWriter, r *http.Request) {
		var m Mail
		if !readJSON(w, r, &m) {
			return
		}
		it, err := s.Deliver(r.PathValue("address"), m)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, it)
	})
	handle("GET /_sim/users/{address}/items", func(w http.ResponseWriter, r *http.Request) {
		items, err := s.Items(r.PathValue("address"))
		if err != nil {
			writeErr(w, err)
			return
		}
		unread := 0
		for _, it := range items {
			if !it.Read {
				unread++
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"unreadCount": unread, "totalCount": len(items), "items": items})
	})
	handle("DELETE /_sim/users/{address}/items/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeResult(w, s.DeleteItem(r.PathValue("address"), r.PathValue("id")))
	})
	handle("PUT /_sim/users/{address}/items/{id}/read", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Read bool `json:"read"`
		}
		if readJSON(w, r, &body) {
			writeResult(w, s.MarkRead(r.PathValue("address"), r.PathValue("id"), body.Read))
		}
	})
	handle("GET /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		faults := s.Faults()
		out := make([]faultJSON, len(faults))
		for i, f := range faults {
			out[i] = toFaultJSON(f)
		}
		writeJSON(w, http.StatusOK, out)
	})
	handle("POST /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		var f faultJSON
		if !readJSON(w, r, &f) {
			return
		}
		id, err := s.InjectFault(f.fault())
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		writeJSON(w, http.StatusCreated, map[string]string{"id": id})
	})
	handle("DELETE /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	handle("DELETE /_sim/faults/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !s.RemoveFault(r.PathValue("id")) {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such fault"})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	handle("GET /_sim/subscriptions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Subscriptions())
	})
	handle("GET /_sim/counters", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Counters())
	})
	handle("DELETE /_sim/counters", func(w http.ResponseWriter, r *http.Request) {
		s.ResetCounters()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc(ControlPrefix, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such control endpoint"})
	})
	return mux
}

// guard enforces the control token, compared in constant time.
func (s *Server) guard(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.ctlToken != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("X-Sim-Token")), []byte(s.ctlToken)) != 1 {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "missing or wrong X-Sim-Token"})
			return
		}
		h(w, r)
	})
}

// faultJSON is Fault on the wire, with durations in milliseconds.
type faultJSON struct {
	ID        string    `json:"id,omitempty"`
	Kind      FaultKind `json:"kind"`
	User      string    `json:"user,omitempty"`
	Operation string    `json:"operation,omitempty"`
	Count     int       `json:"count,omitempty"`
	BackOffMs int64     `json:"backOffMs,omitempty"`
	DelayMs   int64     `json:"delayMs,omitempty"`
}

func toFaultJSON(f Fault) faultJSON {
	return faultJSON{ID: f.ID, Kind: f.Kind, User: f.User, Operation: f.Operation, Count: f.Count,
		BackOffMs: f.BackOff.Milliseconds(), DelayMs: f.Delay.Milliseconds()}
}

func (f faultJSON) fault() Fault {
	return Fault{Kind: f.Kind, User: f.User, Operation: f.Operation, Count: f.Count,
		BackOff: time.Duration(f.BackOffMs) * time.Millisecond, Delay: time.Duration(f.DelayMs) * time.Millisecond}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxControlBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "malformed JSON: " + err.Error()})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	status := http.StatusBadRequest
	switch {
	case errors.Is(err, ErrNoSuchUser), errors.Is(err, ErrNoSuchItem):
		status = http.StatusNotFound
	case errors.Is(err, ErrUserExists):
		status = http.StatusConflict
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

func writeResult(w http.ResponseWriter, err error) {
	if err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

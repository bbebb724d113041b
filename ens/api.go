package ens

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/ensgate/ensgate/store"
)

// BasePath is where the device API and the webhook live.
const BasePath = "/api/ens"

// maxRequestBody bounds device API bodies: a JWE with a client certificate
// and its key is a few kilobytes.
const maxRequestBody = 64 << 10

// Handler serves the device API and Exchange's webhook under BasePath.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+BasePath+"/alive", alive)
	mux.HandleFunc("GET "+BasePath+"/ready", s.ready)
	mux.Handle("POST "+BasePath+"/publickey", s.tenantAPI(s.publicKey))
	mux.Handle("POST "+BasePath+"/registerdevicev2", s.tenantAPI(s.register))
	mux.Handle("GET "+BasePath+"/status", s.tenantAPI(s.status))
	mux.Handle("POST "+BasePath+"/unregister", s.tenantAPI(s.unregister))
	mux.HandleFunc("POST "+BasePath+"/notify", s.notify)
	mux.HandleFunc("POST "+BasePath+"/graph/notify", s.graphNotify)
	mux.HandleFunc("POST "+BasePath+"/graph/lifecycle", s.graphLifecycle)
	s.adminAPI(mux)
	mux.HandleFunc(BasePath+"/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &apiError{http.StatusNotFound, "not_found", "no such ENS endpoint: " + r.Method + " " + r.URL.Path})
	})
	return mux
}

// alive needs no token and touches no database: load balancers call it often.
func alive(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": Version()})
}

// ready tells a load balancer whether this node can serve: the database
// answers, the compliance states are loaded and the workers run. No token;
// one database round trip. 503 names what is missing.
func (s *Service) ready(w http.ResponseWriter, r *http.Request) {
	var missing []string
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.store.Ping(ctx); err != nil {
		missing = append(missing, "database")
	}
	if s.cfg.Compliance != nil && !s.cfg.Compliance.Current() {
		missing = append(missing, "compliance")
	}
	if !s.running.Load() {
		missing = append(missing, "workers")
	}
	if len(missing) > 0 {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "missing": missing})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "version": Version()})
}

// tenantAPI authenticates the tenant, applies the rate limits of the
// client's address and the tenant (the handler applies the device's) and
// turns the handler's error into the API's error shape.
func (s *Service) tenantAPI(h func(w http.ResponseWriter, r *http.Request, t store.Tenant) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, err := s.authenticate(r.Context(), r)
		if err == nil {
			err = s.limitRequest(w, r, t)
		}
		if err == nil {
			err = h(w, r, t)
		}
		if err == nil {
			return
		}
		if errors.Is(err, errUnauthorized) {
			err = &apiError{http.StatusUnauthorized, "unauthorized", "missing or unknown API token (Authorization: Bearer <ENSAPIToken>)"}
		}
		if errors.Is(err, store.ErrUnavailable) {
			s.log.Warn("device API request: the database is unavailable", slog.String("path", r.URL.Path), slog.Any("error", err))
			w.Header().Set("Retry-After", "1")
			err = &apiError{http.StatusServiceUnavailable, "unavailable", "the gateway's database is unavailable; retry later"}
		}
		var ae *apiError
		if !errors.As(err, &ae) {
			s.log.Error("device API request failed", slog.String("path", r.URL.Path), slog.Any("error", err))
			ae = &apiError{http.StatusInternalServerError, "internal", "internal error; the gateway's log has details"}
		}
		writeError(w, ae)
	})
}

// decodeJSON reads a bounded JSON body into dst.
func decodeJSON(w http.ResponseWriter, r *http.Request, dst any) error {
	body := http.MaxBytesReader(w, r.Body, maxRequestBody)
	if err := json.NewDecoder(body).Decode(dst); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return &apiError{http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the body exceeds %d bytes", maxRequestBody)}
		}
		return badRequest("the body is not the expected JSON object: %v", jsonProblem(err))
	}
	return nil
}

// jsonProblem describes a decoding error without echoing the input.
func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return fmt.Sprintf("field %q must be a %s", typeErr.Field, typeErr.Type.Kind())
	}
	var syntaxErr *json.SyntaxError
	if errors.As(err, &syntaxErr) {
		return fmt.Sprintf("syntax error at byte %d", syntaxErr.Offset)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "the JSON ends early"
	}
	return "malformed JSON"
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, map[string]string{"error": e.code, "message": e.message})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

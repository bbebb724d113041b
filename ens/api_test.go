package ens

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestAliveAnswersJSONWithoutToken(t *testing.T) {
	rec := httptest.NewRecorder()
	(&Service{}).Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/api/ens/alive", nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var body map[string]string
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body["status"] != "ok" || body["version"] == "" {
		t.Fatalf("body = %v", body)
	}
}

func TestUnknownPathsAndMethodsGetJSONErrors(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/api/ens/nope", http.StatusNotFound, "not_found"},
		{"POST", "/api/ens/alive", http.StatusNotFound, "not_found"},
	} {
		rec := httptest.NewRecorder()
		(&Service{}).Handler().ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		var body struct{ Error, Message string }
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s %s: body %q is not JSON: %v", tc.method, tc.path, rec.Body, err)
		}
		if rec.Code != tc.status || body.Error != tc.code || body.Message == "" {
			t.Errorf("%s %s = %d %+v, want %d %s", tc.method, tc.path, rec.Code, body, tc.status, tc.code)
		}
	}
}

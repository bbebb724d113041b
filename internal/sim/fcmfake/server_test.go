package fcmfake

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v4"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
)

func start(t *testing.T) (*Server, *http.Client) {
	t.Helper()
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	pool := x509.NewCertPool()
	pool.AddCert(s.Certificate())
	return s, &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// accessToken gets a token the way a real client does: oauth2/google with
// the generated credentials.
func accessToken(t *testing.T, s *Server, c *http.Client) string {
	t.Helper()
	jc, err := google.JWTConfigFromJSON(s.Credentials(), Scope)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jc.TokenSource(context.WithValue(context.Background(), oauth2.HTTPClient, c)).Token()
	if err != nil {
		t.Fatal(err)
	}
	return tok.AccessToken
}

func TestTokenEndpoint(t *testing.T) {
	s, c := start(t)
	if tok := accessToken(t, s, c); !strings.HasPrefix(tok, "ya29.") {
		t.Errorf("access token %q", tok)
	}
	assertion := func(claims jwt.MapClaims, kid string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
		tok.Header["kid"] = kid
		str, err := tok.SignedString(s.key)
		if err != nil {
			t.Fatal(err)
		}
		return str
	}
	now := time.Now().Unix()
	good := jwt.MapClaims{"iss": s.email, "aud": s.URL + "/token", "scope": Scope, "iat": now, "exp": now + 3600}
	edit := func(k string, v any) jwt.MapClaims {
		m := jwt.MapClaims{}
		for key, val := range good {
			m[key] = val
		}
		m[k] = v
		return m
	}
	tests := map[string]string{
		"good":        assertion(good, s.keyID),
		"wrong kid":   assertion(good, "other"),
		"wrong iss":   assertion(edit("iss", "x@y"), s.keyID),
		"wrong aud":   assertion(edit("aud", "https://oauth2.googleapis.com/token"), s.keyID),
		"wrong scope": assertion(edit("scope", "https://www.googleapis.com/auth/cloud-platform"), s.keyID),
		"expired":     assertion(edit("exp", now-10), s.keyID),
		"too long":    assertion(edit("exp", now+7200), s.keyID),
	}
	for name, a := range tests {
		res, err := c.PostForm(s.URL+"/token", url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:jwt-bearer"}, "assertion": {a}})
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if want := map[bool]int{true: 200, false: 400}[name == "good"]; res.StatusCode != want {
			t.Errorf("%s: %d, want %d", name, res.StatusCode, want)
		}
	}
	if n := s.TokenRequests(); n != 2 {
		t.Errorf("issued %d tokens, want 2", n)
	}
}

func TestSendChecks(t *testing.T) {
	s, c := start(t)
	tok := accessToken(t, s, c)
	send := func(bearer, project, body string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, s.URL+"/v1/projects/"+project+"/messages:send", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+bearer)
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var b map[string]any
		_ = json.NewDecoder(res.Body).Decode(&b)
		return res.StatusCode, b
	}
	good := `{"message":{"token":"abc:def","data":{"type":"newmail"},"android":{"priority":"high","ttl":"60s"}}}`
	tests := []struct {
		name, bearer, project, body string
		status                      int
		code                        string
	}{
		{"good", tok, s.project, good, 200, ""},
		{"no token", "nope", s.project, good, 401, "UNAUTHENTICATED"},
		{"other project", tok, "other", good, 403, "PERMISSION_DENIED"},
		{"unknown field", tok, s.project, `{"message":{"token":"a","foo":1}}`, 400, "INVALID_ARGUMENT"},
		{"non-string data", tok, s.project, `{"message":{"token":"a","data":{"badge":3}}}`, 400, "INVALID_ARGUMENT"},
		{"bad ttl", tok, s.project, `{"message":{"token":"a","android":{"ttl":"60"}}}`, 400, "INVALID_ARGUMENT"},
		{"reserved key", tok, s.project, `{"message":{"token":"a","data":{"from":"x"}}}`, 400, "INVALID_ARGUMENT"},
		{"too big", tok, s.project, `{"message":{"token":"a","data":{"body":"` + strings.Repeat("x", MaxData) + `"}}}`, 400, "INVALID_ARGUMENT"},
	}
	for _, tt := range tests {
		status, body := send(tt.bearer, tt.project, tt.body)
		errObj, _ := body["error"].(map[string]any)
		if status != tt.status || (tt.code != "" && errObj["status"] != tt.code) || (tt.code == "" && body["name"] == nil) {
			t.Errorf("%s: %d %v, want %d %s", tt.name, status, body, tt.status, tt.code)
		}
	}

	// A scripted UNREGISTERED, in Google's format with FcmError details.
	s.Script("abc:def", Unregistered)
	status, body := send(tok, s.project, good)
	details := body["error"].(map[string]any)["details"].([]any)
	if status != 404 || details[0].(map[string]any)["errorCode"] != "UNREGISTERED" {
		t.Errorf("scripted: %d %v", status, body)
	}
	s.Script("", QuotaExceeded(3*time.Second))
	req, _ := http.NewRequest(http.MethodPost, s.URL+"/v1/projects/"+s.project+"/messages:send", strings.NewReader(good))
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 429 || res.Header.Get("Retry-After") != "3" {
		t.Errorf("quota: %d Retry-After %q", res.StatusCode, res.Header.Get("Retry-After"))
	}
	if got := len(s.Delivered()); got != 1 {
		t.Errorf("delivered %d, want 1", got)
	}
}

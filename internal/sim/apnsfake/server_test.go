package apnsfake

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v4"
)

const (
	topic  = "com.example.mail"
	device = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func start(t *testing.T) (*Server, *Key, *http.Client) {
	t.Helper()
	key, err := NewKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Keys: []*Key{key}, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: poolOf(s)}, ForceAttemptHTTP2: true}
	return s, key, &http.Client{Transport: tr}
}

func poolOf(s *Server) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.Certificate())
	return p
}

func sign(t *testing.T, k *Key, kid, iss string, iat time.Time) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"iss": iss, "iat": iat.Unix()})
	tok.Header["kid"] = kid
	s, err := tok.SignedString(k.private)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type answer struct {
	status    int
	reason    string
	timestamp int64
	apnsID    string
}

func post(t *testing.T, c *http.Client, url, bearer string, headers map[string]string, body string) answer {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if bearer != "" {
		req.Header.Set("Authorization", "bearer "+bearer)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var b struct {
		Reason    string `json:"reason"`
		Timestamp int64  `json:"timestamp"`
	}
	_ = json.NewDecoder(res.Body).Decode(&b)
	return answer{res.StatusCode, b.Reason, b.Timestamp, res.Header.Get("apns-id")}
}

// TestChecksLikeApple: each request breaks one rule and gets Apple's answer.
func TestChecksLikeApple(t *testing.T) {
	s, key, c := start(t)
	other, err := NewKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := sign(t, key, key.ID, key.TeamID, time.Now())
	alert := map[string]string{"apns-topic": topic, "apns-push-type": "alert"}
	with := func(k, v string) map[string]string {
		h := map[string]string{"apns-topic": topic, "apns-push-type": "alert"}
		if v == "" {
			delete(h, k)
		} else {
			h[k] = v
		}
		return h
	}
	payload := `{"aps":{"alert":"hi"}}`
	url := s.URL + "/3/device/" + device
	tests := []struct {
		name    string
		bearer  string
		url     string
		headers map[string]string
		body    string
		status  int
		reason  string
	}{
		{"good", good, url, alert, payload, 200, ""},
		{"no token", "", url, alert, payload, 403, "MissingProviderToken"},
		{"unknown kid", sign(t, key, "XXXXXXXXXX", key.TeamID, time.Now()), url, alert, payload, 403, "InvalidProviderToken"},
		{"wrong key", sign(t, other, key.ID, key.TeamID, time.Now()), url, alert, payload, 403, "InvalidProviderToken"},
		{"wrong team", sign(t, key, key.ID, "OTHERTEAM1", time.Now()), url, alert, payload, 403, "InvalidProviderToken"},
		{"old token", sign(t, key, key.ID, key.TeamID, time.Now().Add(-61*time.Minute)), url, alert, payload, 403, "ExpiredProviderToken"},
		{"bad device token", good, s.URL + "/3/device/xyz", alert, payload, 400, "BadDeviceToken"},
		{"missing topic", good, url, with("apns-topic", ""), payload, 400, "MissingTopic"},
		{"other topic", good, url, with("apns-topic", "com.other"), payload, 400, "TopicDisallowed"},
		{"no push type", good, url, with("apns-push-type", ""), payload, 400, "InvalidPushType"},
		{"background at 10", good, url, with("apns-push-type", "background"), `{"aps":{"content-available":1}}`, 400, "BadPriority"},
		{"long collapse id", good, url, with("apns-collapse-id", strings.Repeat("c", 65)), payload, 400, "BadCollapseId"},
		{"too large", good, url, alert, `{"aps":{"alert":"` + strings.Repeat("x", MaxPayload) + `"}}`, 413, "PayloadTooLarge"},
		{"empty", good, url, alert, "", 400, "PayloadEmpty"},
		{"bad path", good, s.URL + "/2/device/" + device, alert, payload, 404, "BadPath"},
	}
	for _, tt := range tests {
		a := post(t, c, tt.url, tt.bearer, tt.headers, tt.body)
		if a.status != tt.status || a.reason != tt.reason || a.apnsID == "" {
			t.Errorf("%s: %d %q (apns-id %q), want %d %q", tt.name, a.status, a.reason, a.apnsID, tt.status, tt.reason)
		}
	}
	if n := len(s.Pushes()); n != len(tests) {
		t.Errorf("recorded %d pushes, want %d", n, len(tests))
	}
	if n := len(s.Delivered()); n != 1 {
		t.Errorf("delivered %d, want 1", n)
	}
}

func TestScriptAndExpiry(t *testing.T) {
	s, key, c := start(t)
	good := sign(t, key, key.ID, key.TeamID, time.Now())
	h := map[string]string{"apns-topic": topic, "apns-push-type": "alert"}
	url := s.URL + "/3/device/" + device
	gone := time.UnixMilli(1700000000123)
	s.Script(device, Unregistered(gone))
	s.Script("", TooManyRequests)
	if a := post(t, c, url, good, h, `{"aps":{}}`); a.status != 410 || a.reason != "Unregistered" || a.timestamp != gone.UnixMilli() {
		t.Errorf("410: %+v", a)
	}
	if a := post(t, c, url, good, h, `{"aps":{}}`); a.status != 429 {
		t.Errorf("global script: %+v", a)
	}
	if a := post(t, c, url, good, h, `{"aps":{}}`); a.status != 200 {
		t.Errorf("after the script: %+v", a)
	}
	s.ExpireProviderTokens()
	if a := post(t, c, url, good, h, `{"aps":{}}`); a.status != 403 || a.reason != "ExpiredProviderToken" {
		t.Errorf("expired: %+v", a)
	}
	if a := post(t, c, url, sign(t, key, key.ID, key.TeamID, time.Now().Add(time.Second)), h, `{"aps":{}}`); a.status != 200 {
		t.Errorf("a new token: %+v", a)
	}
}

// TestHTTP2Only: like APNs, HTTP/1.1 is not spoken. (Go's TLS lets a
// client that offers only http/1.1 through, so the handler answers 505.)
func TestHTTP2Only(t *testing.T) {
	s, _, _ := start(t)
	h1 := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: poolOf(s), NextProtos: []string{"http/1.1"}},
	}}
	res, err := h1.Post(s.URL+"/3/device/"+device, "application/json", bytes.NewReader([]byte(`{}`)))
	if err != nil {
		return // refused in the TLS handshake
	}
	res.Body.Close()
	if res.StatusCode != http.StatusHTTPVersionNotSupported {
		t.Fatalf("HTTP/1.1 request answered %d", res.StatusCode)
	}
}

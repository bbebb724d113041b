package oauth_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/sim/graphsim"
	"github.com/ensgate/ensgate/oauth"
)

const alice = "alice@contoso.test"

func sim(t *testing.T, strict bool) *graphsim.TestServer {
	t.Helper()
	return graphsim.Start(t, graphsim.Config{
		Users:                 []graphsim.User{{Address: alice}},
		StrictRefreshRotation: strict,
	})
}

func endpoint(ts *graphsim.TestServer) oauth.Endpoint {
	return oauth.Endpoint{TokenURL: ts.TokenURL, ClientID: graphsim.DefaultClientID, Scopes: []string{"https://graph.microsoft.com/Mail.Read", "offline_access"}}
}

// secrets collects every token a test handled, to check that no error
// string carries one.
type secrets struct {
	mu   sync.Mutex
	toks []string
}

func (s *secrets) add(tok ...string) {
	s.mu.Lock()
	s.toks = append(s.toks, tok...)
	s.mu.Unlock()
}

func (s *secrets) check(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, tok := range s.toks {
		if tok != "" && strings.Contains(msg, tok) {
			t.Errorf("error string carries a token: %q", msg)
		}
	}
	for _, frag := range []string{"0.AXsim-rt", "eyJ0eXAi", "refresh_token="} {
		if strings.Contains(msg, frag) {
			t.Errorf("error string carries token text %q: %q", frag, msg)
		}
	}
}

func TestRefreshRotates(t *testing.T) {
	ts := sim(t, false)
	rt, err := ts.MintRefreshToken(alice, graphsim.DefaultClientID)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tok, err := endpoint(ts).Refresh(context.Background(), rt)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" || tok.RefreshToken == rt {
		t.Fatalf("want a new access token and a rotated refresh token, got access %t, refresh rotated %t", tok.AccessToken != "", tok.RefreshToken != rt)
	}
	if d := tok.Expiry.Sub(start); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("expiry %v from now, want about an hour", d)
	}
	// The rotated token works, and the old one still does (Microsoft does
	// not revoke used refresh tokens).
	if _, err := endpoint(ts).Refresh(context.Background(), tok.RefreshToken); err != nil {
		t.Fatalf("rotated token: %v", err)
	}
	if _, err := endpoint(ts).Refresh(context.Background(), rt); err != nil {
		t.Fatalf("old token: %v", err)
	}
}

func TestStrictRotationNeedsTheNewToken(t *testing.T) {
	ts := sim(t, true)
	var sec secrets
	rt, _ := ts.MintRefreshToken(alice, graphsim.DefaultClientID)
	sec.add(rt)
	ep := endpoint(ts)
	cur := rt
	for i := range 5 {
		tok, err := ep.Refresh(context.Background(), cur)
		if err != nil {
			t.Fatalf("redemption %d: %v", i, err)
		}
		sec.add(tok.AccessToken, tok.RefreshToken)
		cur = tok.RefreshToken
	}
	_, err := ep.Refresh(context.Background(), rt)
	if !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("reusing a redeemed token: got %v, want ErrInvalidGrant", err)
	}
	sec.check(t, err)
}

func TestRevokedIsInvalidGrant(t *testing.T) {
	ts := sim(t, false)
	var sec secrets
	rt, _ := ts.MintRefreshToken(alice, graphsim.DefaultClientID)
	sec.add(rt)
	if err := ts.RevokeRefreshTokens(alice); err != nil {
		t.Fatal(err)
	}
	_, err := endpoint(ts).Refresh(context.Background(), rt)
	if !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("got %v, want ErrInvalidGrant", err)
	}
	var oe *oauth.Error
	if !errors.As(err, &oe) || oe.Code != "invalid_grant" || oe.Status != 400 || len(oe.Codes) != 1 || oe.Codes[0] != 50173 {
		t.Errorf("got %#v, want 400 invalid_grant AADSTS50173", oe)
	}
	sec.check(t, err)

	// An unknown token too.
	_, err = endpoint(ts).Refresh(context.Background(), "not-a-token")
	if !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("unknown token: got %v, want ErrInvalidGrant", err)
	}
}

func TestUnauthorizedClient(t *testing.T) {
	ts := sim(t, false)
	var sec secrets
	rt, _ := ts.MintRefreshToken(alice, graphsim.DefaultClientID)
	sec.add(rt)
	ep := endpoint(ts)
	ep.ClientID = "11111111-2222-4333-8444-555555555555"
	_, err := ep.Refresh(context.Background(), rt)
	if !errors.Is(err, oauth.ErrUnauthorizedClient) || errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("got %v, want ErrUnauthorizedClient", err)
	}
	sec.check(t, err)
}

// TestRequestForm checks what goes over the wire: a public client's
// refresh grant with the scopes, no secret, no Authorization header.
func TestRequestForm(t *testing.T) {
	var got url.Values
	var auth string
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		got, auth = r.PostForm, r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		// No refresh_token in the answer: the one given stays.
		io.WriteString(w, `{"token_type":"Bearer","access_token":"at-1","expires_in":3600}`)
	}))
	defer hs.Close()
	ep := oauth.Endpoint{TokenURL: hs.URL + "/token", ClientID: "cid", Scopes: []string{"Mail.Read", "offline_access"}}
	tok, err := ep.Refresh(context.Background(), "rt-1")
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken != "at-1" || tok.RefreshToken != "rt-1" {
		t.Errorf("got %+v, want at-1 and the unrotated rt-1", tok)
	}
	want := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt-1"}, "client_id": {"cid"}, "scope": {"Mail.Read offline_access"}}
	if got.Encode() != want.Encode() {
		t.Errorf("form %v, want %v", got, want)
	}
	if auth != "" {
		t.Errorf("Authorization header %q, want none (public client)", auth)
	}
}

// TestTransient: answers that are worth a retry later.
func TestTransient(t *testing.T) {
	const rt = "0.AXsim-rt.secret-refresh-token"
	var sec secrets
	sec.add(rt)
	cases := []struct {
		name       string
		handler    http.HandlerFunc
		status     int
		retryAfter time.Duration
	}{
		{"500", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			http.Error(w, "boom "+rt, http.StatusInternalServerError)
		}, 500, 7 * time.Second},
		{"503 json", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"error":"temporarily_unavailable","error_description":"`+rt+`"}`)
		}, 503, 0},
		{"429", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
		}, 429, 30 * time.Second},
		{"200 garbage", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"access_token": `+rt)
		}, 0, 0},
		{"200 html", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html>"+rt+"</html>")
		}, 0, 0},
		{"200 too large", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"token_type":"Bearer","expires_in":3600,"access_token":"`+strings.Repeat("a", oauth.MaxAnswer)+`"}`)
		}, 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			hs := httptest.NewServer(c.handler)
			defer hs.Close()
			_, err := oauth.Endpoint{TokenURL: hs.URL, ClientID: "cid"}.Refresh(context.Background(), rt)
			var te *oauth.TransientError
			if !errors.As(err, &te) {
				t.Fatalf("got %v, want a TransientError", err)
			}
			if te.Status != c.status || te.RetryAfter != c.retryAfter {
				t.Errorf("status %d retry after %v, want %d and %v", te.Status, te.RetryAfter, c.status, c.retryAfter)
			}
			if errors.Is(err, oauth.ErrInvalidGrant) || errors.Is(err, oauth.ErrUnauthorizedClient) {
				t.Errorf("%v: transient errors must not read as must-sign-in or bad client", err)
			}
			sec.check(t, err)
		})
	}

	t.Run("timeout", func(t *testing.T) {
		release := make(chan struct{})
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-release }))
		defer hs.Close()
		defer close(release)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err := oauth.Endpoint{TokenURL: hs.URL, ClientID: "cid"}.Refresh(ctx, rt)
		var te *oauth.TransientError
		if !errors.As(err, &te) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want a TransientError wrapping DeadlineExceeded", err)
		}
		sec.check(t, err)
	})

	t.Run("connection refused", func(t *testing.T) {
		hs := httptest.NewServer(http.NotFoundHandler())
		u := hs.URL
		hs.Close()
		_, err := oauth.Endpoint{TokenURL: u, ClientID: "cid"}.Refresh(context.Background(), rt)
		var te *oauth.TransientError
		if !errors.As(err, &te) {
			t.Fatalf("got %v, want a TransientError", err)
		}
		sec.check(t, err)
	})
}

// TestOtherRefusals: interaction_required and consent_required are
// must-sign-in; other 4xx codes are plain *Error; descriptions (which
// might echo anything) stay out of the message.
func TestOtherRefusals(t *testing.T) {
	const rt = "0.AXsim-rt.echoed"
	var sec secrets
	sec.add(rt)
	for code, want := range map[string]error{
		"interaction_required": oauth.ErrInvalidGrant,
		"consent_required":     oauth.ErrInvalidGrant,
		"invalid_client":       oauth.ErrUnauthorizedClient,
		"invalid_scope":        nil,
		"invalid_request":      nil,
	} {
		hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"`+code+`","error_description":"AADSTS1: about `+rt+`","error_codes":[1]}`)
		}))
		_, err := oauth.Endpoint{TokenURL: hs.URL, ClientID: "cid"}.Refresh(context.Background(), rt)
		hs.Close()
		var oe *oauth.Error
		if !errors.As(err, &oe) || oe.Code != code {
			t.Errorf("%s: got %v, want *Error with that code", code, err)
			continue
		}
		if errors.Unwrap(err) != want {
			t.Errorf("%s: unwraps to %v, want %v", code, errors.Unwrap(err), want)
		}
		sec.check(t, err)
	}
}

// TestNoRedirect: a redirecting token endpoint never gets the refresh
// token re-sent elsewhere.
func TestNoRedirect(t *testing.T) {
	hit := make(chan string, 1)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		hit <- r.PostForm.Get("refresh_token")
	}))
	defer other.Close()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL, http.StatusTemporaryRedirect)
	}))
	defer hs.Close()
	_, err := oauth.Endpoint{TokenURL: hs.URL, ClientID: "cid"}.Refresh(context.Background(), "rt-secret")
	if err == nil {
		t.Fatal("a redirect must fail the redemption")
	}
	select {
	case got := <-hit:
		t.Fatalf("the redirect target received a request (refresh token %q)", got)
	default:
	}
}

func TestEmptyRefreshToken(t *testing.T) {
	_, err := oauth.Endpoint{TokenURL: "http://127.0.0.1:1", ClientID: "cid"}.Refresh(context.Background(), "")
	if !errors.Is(err, oauth.ErrInvalidGrant) {
		t.Fatalf("got %v, want ErrInvalidGrant", err)
	}
}

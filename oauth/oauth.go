// Package oauth redeems refresh tokens at an OAuth 2.0 token endpoint (the
// Microsoft identity platform's v2.0 endpoint, and ADFS-style endpoints) for
// a public client: the mail app's own registration, with no secret, whose
// refresh tokens ENS holds sealed. It answers the new access token and the
// refresh token to store next (rotated when the server sends one), and
// sorts failures into the few cases callers act on: the user must sign in
// again, the client id is wrong, or try again later.
//
// No token ever appears in an error string; callers may log errors.
package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// MaxAnswer bounds the body of a token endpoint's answer. Entra access
// tokens are a few kilobytes (more with group claims); an answer past this
// is not a token answer.
const MaxAnswer = 256 << 10

// Endpoint is a token endpoint and the public client that redeems refresh
// tokens there.
type Endpoint struct {
	// TokenURL is the token endpoint, e.g. the authority +
	// "/oauth2/v2.0/token" for the Microsoft identity platform.
	TokenURL string
	// ClientID is the mail app's application (client) id; refresh tokens
	// are bound to it.
	ClientID string
	// Scopes are sent with each redemption (space-separated). Microsoft
	// refresh tokens are multi-resource: the scopes choose the resource the
	// access token is for (Graph's Mail.Read, or EWS's
	// https://outlook.office365.com/EWS.AccessAsUser.All). Empty: the
	// server's default for the grant.
	Scopes []string
	// HTTPClient sends the request; nil: http.DefaultClient. Its
	// redirects are not followed (a refresh token is never re-sent to
	// another URL), and answers are cut at MaxAnswer.
	HTTPClient *http.Client
}

// Tokens are the result of a redemption.
type Tokens struct {
	AccessToken string
	// RefreshToken is the one to store for the next redemption: the
	// rotated one when the server sent one, else the one redeemed.
	RefreshToken string
	// Expiry of the access token; zero if the server did not say.
	Expiry time.Time
}

// Errors callers branch on, with errors.Is.
var (
	// ErrInvalidGrant: the refresh token cannot be redeemed any more
	// (expired, revoked, password changed, consent withdrawn): the user
	// must sign in again in the mail app. The OAuth codes invalid_grant,
	// interaction_required and consent_required all mean this here: a
	// server-side process cannot show the user a prompt.
	ErrInvalidGrant = errors.New("oauth: the user must sign in again")
	// ErrUnauthorizedClient: the endpoint does not accept the client id
	// (unauthorized_client, or invalid_client: unknown application, or an
	// app registration that is not a public client). A configuration
	// error, not the user's.
	ErrUnauthorizedClient = errors.New("oauth: the token endpoint refuses the client id")
)

// Error is a refusal by the token endpoint (a 4xx answer with an OAuth
// error). It wraps ErrInvalidGrant or ErrUnauthorizedClient when the code
// says so. The server's error_description is left out on purpose: it is
// free text, and Codes (Entra's AADSTS numbers) say the same.
type Error struct {
	Status int    // HTTP status
	Code   string // OAuth error code, e.g. "invalid_grant"
	Codes  []int  // Entra's error_codes (AADSTS numbers), if any
	kind   error
}

func (e *Error) Error() string {
	s := "oauth: token endpoint answered " + strconv.Itoa(e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	for i, c := range e.Codes {
		if i == 0 {
			s += " (AADSTS"
		} else {
			s += ", AADSTS"
		}
		s += strconv.Itoa(c)
		if i == len(e.Codes)-1 {
			s += ")"
		}
	}
	if e.kind != nil {
		s += ": " + strings.TrimPrefix(e.kind.Error(), "oauth: ")
	}
	return s
}

// Unwrap returns ErrInvalidGrant, ErrUnauthorizedClient or nil.
func (e *Error) Unwrap() error { return e.kind }

// TransientError is a failure worth retrying later with the same refresh
// token: a network error or timeout, a 5xx or 429 answer (RetryAfter from
// its Retry-After header, zero if none), or an answer that is not a token
// answer. Err, if set, is the cause (e.g. context.DeadlineExceeded).
type TransientError struct {
	Status     int // HTTP status; 0 if there was no answer
	RetryAfter time.Duration
	Reason     string
	Err        error
}

func (e *TransientError) Error() string {
	s := "oauth: token endpoint unavailable"
	if e.Status != 0 {
		s += " (" + strconv.Itoa(e.Status) + ")"
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf("; retry after %s", e.RetryAfter)
	}
	return s
}

func (e *TransientError) Unwrap() error { return e.Err }

// Refresh redeems refreshToken (grant_type refresh_token). The request's
// deadline is ctx's.
func (e Endpoint) Refresh(ctx context.Context, refreshToken string) (Tokens, error) {
	if refreshToken == "" {
		return Tokens{}, fmt.Errorf("%w (no refresh token)", ErrInvalidGrant)
	}
	if e.TokenURL == "" || e.ClientID == "" {
		return Tokens{}, errors.New("oauth: endpoint needs a token URL and a client id")
	}
	// x/oauth2's own refresh (Config.TokenSource) cannot send a scope,
	// which Microsoft's multi-resource refresh tokens need; its
	// clientcredentials flow can, and allows grant_type to be overridden
	// for this purpose. With AuthStyleInParams and no secret it posts
	// client_id in the form, as a public client must.
	cfg := clientcredentials.Config{
		ClientID:  e.ClientID,
		TokenURL:  e.TokenURL,
		Scopes:    e.Scopes,
		AuthStyle: oauth2.AuthStyleInParams,
		EndpointParams: url.Values{
			"grant_type":    {"refresh_token"},
			"refresh_token": {refreshToken},
		},
	}
	base := e.HTTPClient
	if base == nil {
		base = http.DefaultClient
	}
	rt := base.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	hc := &http.Client{
		Transport:     limitTransport{rt},
		Timeout:       base.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	tok, err := cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, hc))
	if err != nil {
		return Tokens{}, classify(ctx, err)
	}
	out := Tokens{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, Expiry: tok.Expiry}
	if out.RefreshToken == "" {
		out.RefreshToken = refreshToken
	}
	return out, nil
}

// classify turns x/oauth2's error into one of this package's, dropping
// its text (which may quote the answer's body).
func classify(ctx context.Context, err error) error {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		// No answer, or a 2xx that is not a token answer. x/oauth2
		// flattens the cause into text (%v), so ask the context, and
		// read the kind from the text without passing the text on.
		te := &TransientError{Reason: "answer is not a token answer"}
		switch msg := err.Error(); {
		case ctx.Err() != nil:
			te.Reason, te.Err = "request cancelled or timed out", ctx.Err()
		case strings.Contains(msg, errAnswerTooLarge.Error()):
			te.Reason = "answer too large"
		case strings.HasPrefix(msg, "oauth2: cannot fetch token"):
			te.Reason = "network error"
		}
		return te
	}
	status := 0
	var header http.Header
	if re.Response != nil {
		status, header = re.Response.StatusCode, re.Response.Header
	}
	if status == http.StatusTooManyRequests || status >= 500 {
		return &TransientError{Status: status, RetryAfter: ParseRetryAfter(header.Get("Retry-After")), Reason: "server error"}
	}
	e := &Error{Status: status, Code: re.ErrorCode, Codes: aadsts(re.Body)}
	switch re.ErrorCode {
	case "invalid_grant", "interaction_required", "consent_required":
		e.kind = ErrInvalidGrant
	case "unauthorized_client", "invalid_client":
		e.kind = ErrUnauthorizedClient
	case "":
		if status < 400 {
			// A 2xx that failed to parse, or a redirect: not a token answer.
			return &TransientError{Status: status, Reason: "answer is not a token answer"}
		}
	}
	return e
}

// aadsts reads Entra's error_codes from an error answer.
func aadsts(body []byte) []int {
	var v struct {
		Codes []int `json:"error_codes"`
	}
	if json.Unmarshal(body, &v) != nil || len(v.Codes) > 8 {
		return nil
	}
	return v.Codes
}

// ParseRetryAfter reads a Retry-After header's value: seconds or an HTTP
// date, capped at a day; 0 if absent or unreadable. (Graph's answers use
// it too.)
func ParseRetryAfter(v string) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(min(s, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return min(d, 24*time.Hour)
		}
	}
	return 0
}

var errAnswerTooLarge = errors.New("oauth: token answer exceeds the size limit")

// limitTransport cuts answers at MaxAnswer: reading past it fails, rather
// than truncating into something that might parse.
type limitTransport struct{ base http.RoundTripper }

func (t limitTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: MaxAnswer}
	return resp, nil
}

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One more byte means the answer is too large.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, errAnswerTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// Package graph is a small typed client for the few Microsoft Graph v1.0
// calls ENS makes on an Exchange Online mailbox with a delegated access
// token: who the token belongs to (/me), the Inbox's counts, one message's
// selected fields, change-notification subscriptions on the Inbox
// (create, renew, reauthorize, delete), and the Inbox's message delta
// query; and the parsing of the change and lifecycle notifications Graph
// POSTs back. It is plain net/http: msgraph-sdk-go would add minutes to
// builds and tens of megabytes to the binary for these few calls.
//
// Errors never carry a token, an address, a subject or Graph's free-text
// error message in their strings: callers may log them.
package graph

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ensgate/ensgate/oauth"
)

// DefaultRoot is the public cloud's Graph root (national clouds have
// their own, e.g. https://graph.microsoft.us).
const DefaultRoot = "https://graph.microsoft.com"

// Answer size limits. Graph's entities here are small; a delta page holds
// up to a page of messages with the selected fields.
const (
	maxAnswer      = 1 << 20
	maxDeltaAnswer = 8 << 20
	maxErrorAnswer = 64 << 10
)

// Client calls one Graph root. It is safe for concurrent use.
type Client struct {
	root string // scheme://host[/prefix], no trailing slash
	base string // root + "/v1.0"
	hc   *http.Client
	// MaxPageSize, if positive, asks for delta pages of at most this many
	// messages (Prefer: odata.maxpagesize); Graph's default otherwise.
	MaxPageSize int
}

// New returns a client for the Graph root (without the version; empty:
// DefaultRoot). httpClient nil: http.DefaultClient. Redirects are never
// followed: the bearer token goes to the root's origin only.
func New(root string, httpClient *http.Client) *Client {
	root = strings.TrimRight(root, "/")
	if root == "" {
		root = DefaultRoot
	}
	if httpClient == nil {
		httpClient = http.DefaultClient
	}
	hc := *httpClient
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{root: root, base: root + "/v1.0", hc: &hc}
}

// Errors callers branch on, with errors.Is; *APIError wraps them.
var (
	// ErrUnauthorized: 401, the access token is expired, revoked or not
	// valid for Graph; redeem the refresh token and try again.
	ErrUnauthorized = errors.New("graph: access token refused")
	// ErrNotFound: 404, the message or subscription is gone.
	ErrNotFound = errors.New("graph: not found")
	// ErrDeltaExpired: the delta or skip token is no longer known (410
	// Gone, or syncStateNotFound / resyncRequired): start a new round with
	// an empty link.
	ErrDeltaExpired = errors.New("graph: delta token expired")
)

// APIError is a Graph error answer. Its string names the status and
// Graph's error code only: Message is Graph's free text, which may name
// the mailbox or the resource, so it is kept out of Error().
type APIError struct {
	Status  int
	Code    string
	Message string
	kind    error
}

func (e *APIError) Error() string {
	s := "graph: " + strconv.Itoa(e.Status)
	if t := http.StatusText(e.Status); t != "" {
		s += " " + t
	}
	if e.Code != "" {
		s += " (" + e.Code + ")"
	}
	return s
}

// Unwrap returns ErrUnauthorized, ErrNotFound, ErrDeltaExpired or nil.
func (e *APIError) Unwrap() error { return e.kind }

// ThrottledError is a 429, or a 503 with Retry-After: Outlook's per-app,
// per-mailbox limits (4 concurrent requests, 10,000 per 10 minutes) or a
// busy service. RetryAfter is zero when Graph did not say.
type ThrottledError struct {
	Status     int
	Code       string
	RetryAfter time.Duration
}

func (e *ThrottledError) Error() string {
	s := "graph: throttled (" + strconv.Itoa(e.Status)
	if e.Code != "" {
		s += " " + e.Code
	}
	s += ")"
	if e.RetryAfter > 0 {
		s += "; retry after " + e.RetryAfter.String()
	}
	return s
}

// errTooLarge is returned when an answer exceeds its limit.
var errTooLarge = errors.New("graph: answer exceeds the size limit")

// request is one call.
type request struct {
	method, url string
	body        any // JSON-encoded if not nil
	limit       int64
	header      http.Header
}

// do sends r with the token and decodes a 2xx JSON answer into out (if
// not nil). Graph's other answers become the package's errors.
func (c *Client) do(ctx context.Context, token string, r request, out any) error {
	if token == "" {
		return &APIError{Status: http.StatusUnauthorized, Code: "NoToken", kind: ErrUnauthorized}
	}
	var body io.Reader
	if r.body != nil {
		b, err := json.Marshal(r.body)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, body)
	if err != nil {
		return errors.New("graph: bad request URL")
	}
	for k, v := range r.header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// *url.Error names the URL, which holds ids and delta tokens but
		// no bearer token; keep the cause for errors.Is (timeouts).
		return &transportError{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return answerError(resp)
	}
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxErrorAnswer))
		return nil
	}
	b, err := readLimited(resp.Body, r.limit)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return errors.New("graph: answer is not the expected JSON")
	}
	return nil
}

// transportError is a failure without an answer. Its string leaves out
// the request URL (delta links carry state Graph treats as a secret).
type transportError struct{ err error }

func (e *transportError) Error() string {
	if errors.Is(e.err, context.DeadlineExceeded) {
		return "graph: request timed out"
	}
	if errors.Is(e.err, context.Canceled) {
		return "graph: request cancelled"
	}
	return "graph: request failed (network)"
}

func (e *transportError) Unwrap() error { return e.err }

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	if limit <= 0 {
		limit = maxAnswer
	}
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, &transportError{err: err}
	}
	if int64(len(b)) > limit {
		return nil, errTooLarge
	}
	return b, nil
}

// answerError turns a non-2xx answer into the package's error.
func answerError(resp *http.Response) error {
	b, _ := readLimited(resp.Body, maxErrorAnswer)
	var v struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	json.Unmarshal(b, &v)
	code := v.Error.Code
	if len(code) > 128 {
		code = code[:128]
	}
	ra := oauth.ParseRetryAfter(resp.Header.Get("Retry-After"))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests,
		resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		return &ThrottledError{Status: resp.StatusCode, Code: code, RetryAfter: ra}
	}
	e := &APIError{Status: resp.StatusCode, Code: code, Message: v.Error.Message}
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		e.kind = ErrUnauthorized
	case resp.StatusCode == http.StatusNotFound:
		e.kind = ErrNotFound
	case resp.StatusCode == http.StatusGone,
		strings.EqualFold(code, "syncStateNotFound"), strings.EqualFold(code, "resyncRequired"):
		e.kind = ErrDeltaExpired
	}
	return e
}

// url builds base + path + ?query.
func (c *Client) url(path string, q url.Values) string {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// sameOrigin reports whether link is on the client's root (scheme, host
// and port): links from answers or storage are followed with the token
// only there.
func (c *Client) sameOrigin(link string) bool {
	u, err := url.Parse(link)
	if err != nil {
		return false
	}
	r, err := url.Parse(c.root)
	if err != nil {
		return false
	}
	return strings.EqualFold(u.Scheme, r.Scheme) && strings.EqualFold(u.Host, r.Host) && u.User == nil
}

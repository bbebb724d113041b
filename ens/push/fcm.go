package push

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/google"
)

// FCMScope is the OAuth 2 scope for sending with FCM HTTP v1.
const FCMScope = "https://www.googleapis.com/auth/firebase.messaging"

// FCMDefaultURL is Google's FCM endpoint.
const FCMDefaultURL = "https://fcm.googleapis.com"

// FCMConfig configures the FCM HTTP v1 sender.
type FCMConfig struct {
	URL string // base URL (FCMDefaultURL)

	// CredentialsFile is a Google service-account JSON key; its token_uri
	// is where access tokens are fetched (so a fake can serve them), and
	// its project_id the project messages are sent for.
	CredentialsFile string
	Credentials     []byte // the same, in memory (instead of CredentialsFile)

	Retry  RetryPolicy
	Client ClientConfig
	Logger *slog.Logger // nil: no logs
}

// FCM sends data messages through FCM HTTP v1 with service-account auth.
type FCM struct {
	client   *http.Client // adds the OAuth 2 access token
	conns    http.RoundTripper
	endpoint string // …/v1/projects/{project}/messages:send
	timeout  time.Duration
	retry    RetryPolicy
	slots    slots
}

// Validate reports every problem of cfg at once, each naming the setting
// (as the ens app's fcm block spells it) and what to put there. It reads
// no file beyond checking that it exists.
func (cfg FCMConfig) Validate() error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf("fcm."+format, args...)) }
	if base := cmp.Or(cfg.URL, FCMDefaultURL); !isHTTPSURL(base) {
		fail("url %q: want an https:// URL", base)
	}
	switch {
	case cfg.CredentialsFile != "":
		if _, err := os.Stat(cfg.CredentialsFile); err != nil {
			fail("credentials_file is unusable: %v", err)
		}
	case len(cfg.Credentials) == 0:
		fail("credentials_file is required: a Google service-account JSON key of the Firebase project")
	}
	errs = append(errs, cfg.Retry.validate("fcm")...)
	errs = append(errs, cfg.Client.validate("fcm")...)
	return errors.Join(errs...)
}

// NewFCM validates cfg, reads the credentials and returns a sender. It
// fetches no token yet: the first Send does.
func NewFCM(cfg FCMConfig) (*FCM, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	creds := cfg.Credentials
	if cfg.CredentialsFile != "" {
		var err error
		if creds, err = os.ReadFile(cfg.CredentialsFile); err != nil {
			return nil, fmt.Errorf("fcm.credentials_file: %w", err)
		}
	}
	jc, err := google.JWTConfigFromJSON(creds, FCMScope)
	if err != nil {
		return nil, fmt.Errorf("fcm.credentials_file: %w", err)
	}
	var f struct {
		ProjectID string `json:"project_id"`
	}
	_ = json.Unmarshal(creds, &f) // JWTConfigFromJSON has parsed it already
	if f.ProjectID == "" {
		return nil, errors.New("fcm.credentials_file: no project_id: download the service-account key again from the Firebase console")
	}

	cc := cfg.Client.withDefaults()
	hc := cc.httpClient(false, nil)
	// The token endpoint is reached with the same client (same roots,
	// timeouts); the token is cached and renewed shortly before it expires.
	tokens := jc.TokenSource(context.WithValue(context.Background(), oauth2.HTTPClient, hc))
	return &FCM{
		client: &http.Client{
			Transport: &oauth2.Transport{Source: tokens, Base: hc.Transport},
			Timeout:   hc.Timeout,
		},
		conns:    hc.Transport,
		endpoint: strings.TrimSuffix(cmp.Or(cfg.URL, FCMDefaultURL), "/") + "/v1/projects/" + url.PathEscape(f.ProjectID) + "/messages:send",
		timeout:  cc.RequestTimeout,
		retry:    cfg.Retry.withDefaults(),
		slots:    make(slots, cc.MaxInFlight),
	}, nil
}

// Close drops idle connections, for a sender replaced by a new config.
func (f *FCM) Close() {
	// oauth2.Transport does not pass CloseIdleConnections on.
	f.conns.(interface{ CloseIdleConnections() }).CloseIdleConnections()
}

// Send sends m, retrying transient failures within the retry policy.
func (f *FCM) Send(ctx context.Context, m Message) Result {
	body, reason := f.body(m)
	if reason != "" {
		return Result{Outcome: Rejected, Reason: reason}
	}
	return f.retry.run(ctx, func(ctx context.Context) attempt {
		return f.post(ctx, body)
	})
}

// post makes one request, holding an in-flight slot.
func (f *FCM) post(ctx context.Context, body []byte) attempt {
	if err := f.slots.acquire(ctx); err != nil {
		return attempt{retry: true, reason: ReasonCanceled, err: err}
	}
	defer f.slots.release()
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	// Cannot fail: the endpoint was checked by NewFCM.
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.endpoint, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json; charset=utf-8")
	res, err := f.client.Do(req)
	if err != nil {
		return fcmTransportError(err)
	}
	defer res.Body.Close()
	// Error bodies are small; a larger one is cut, not fatal.
	data, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil {
		return transportError(err)
	}
	return classifyFCM(res.StatusCode, res.Header, data, time.Now())
}

// fcmTransportError also covers the OAuth 2 token endpoint, which
// oauth2.Transport calls before the request.
func fcmTransportError(err error) attempt {
	var rerr *oauth2.RetrieveError
	if !errors.As(err, &rerr) {
		return transportError(err)
	}
	code := rerr.ErrorCode
	if code == "" {
		// oauth2/jwt leaves the RFC 6749 error code in the body.
		var body struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(rerr.Body, &body)
		code = body.Error
	}
	if len(code) > 40 {
		code = "" // not an RFC 6749 code; keep the metric label set small
	}
	reason := "oauth2: " + cmp.Or(code, "HTTP "+fmt.Sprint(rerr.Response.StatusCode))
	if code := rerr.Response.StatusCode; code == http.StatusTooManyRequests || code >= 500 {
		return attempt{retry: true, reason: reason, err: rerr}
	}
	return attempt{outcome: Rejected, reason: reason, err: rerr} // key revoked, clock, wrong token_uri
}

// googleError is Google's JSON error body (google.rpc.Status).
type googleError struct {
	Error struct {
		Code    int    `json:"code"`
		Status  string `json:"status"`
		Details []struct {
			Type            string `json:"@type"`
			ErrorCode       string `json:"errorCode"` // FcmError
			FieldViolations []struct {
				Field string `json:"field"`
			} `json:"fieldViolations"` // BadRequest
		} `json:"details"`
	} `json:"error"`
}

// classifyFCM maps an FCM answer to an outcome. The reason is the FcmError
// errorCode when there is one (it is more precise than the status).
func classifyFCM(status int, h http.Header, body []byte, now time.Time) attempt {
	if status == http.StatusOK {
		return attempt{outcome: Delivered}
	}
	var ge googleError
	_ = json.Unmarshal(body, &ge) // a non-JSON error body leaves it empty
	reason, tokenField := ge.Error.Status, false
	for _, d := range ge.Error.Details {
		if d.ErrorCode != "" {
			reason = d.ErrorCode
		}
		for _, v := range d.FieldViolations {
			tokenField = tokenField || v.Field == "message.token"
		}
	}
	reason = cmp.Or(reason, fmt.Sprintf("HTTP %d", status))
	switch {
	case reason == "UNREGISTERED":
		return attempt{outcome: TokenDead, reason: reason}
	case reason == "INVALID_ARGUMENT" && tokenField:
		// A malformed token will never become valid.
		return attempt{outcome: TokenDead, reason: reason}
	case reason == "UNAVAILABLE", reason == "INTERNAL", reason == "QUOTA_EXCEEDED",
		status == http.StatusTooManyRequests, status >= 500:
		return attempt{retry: true, reason: reason, after: retryAfter(h, now)}
	default:
		// INVALID_ARGUMENT (not the token), SENDER_ID_MISMATCH,
		// THIRD_PARTY_AUTH_ERROR, UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND.
		return attempt{outcome: Rejected, reason: reason}
	}
}

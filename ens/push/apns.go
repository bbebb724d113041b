package push

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sideshow/apns2"
	"github.com/sideshow/apns2/certificate"
	"github.com/sideshow/apns2/token"
)

// APNsDefaultURL is Apple's production endpoint, the url "production".
const APNsDefaultURL = apns2.HostProduction

// APNsConfig configures the APNs sender: token auth (KeyFile or Key, with
// KeyID and TeamID) or certificate auth (CertFile), not both.
type APNsConfig struct {
	// URL is "production" (the default), "sandbox" ("development" too), or
	// the base URL of another endpoint, e.g. a local fake.
	URL string

	KeyFile string // .p8 signing key from Apple's developer portal
	Key     []byte // the same, in memory (instead of KeyFile)
	KeyID   string // the key's 10-character id
	TeamID  string // the 10-character team id

	CertFile     string // .p12/.pfx, or PEM with certificate and key
	CertPassword string // for the .p12 or an encrypted PEM key

	Topic string // default apns-topic (the app's bundle id)

	Retry  RetryPolicy
	Client ClientConfig
	Logger *slog.Logger // nil: no logs
}

// APNs sends pushes to Apple's push service through apns2.
type APNs struct {
	client  *apns2.Client
	token   *token.Token // nil with certificate auth
	topic   string
	timeout time.Duration
	retry   RetryPolicy
	slots   slots
	log     *slog.Logger
}

// Validate reports every problem of cfg at once, each naming the setting
// (as the ens app's apns block spells it) and what to put there. It reads
// no file beyond checking that it exists.
func (cfg APNsConfig) Validate() error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf("apns."+format, args...)) }
	if _, err := apnsHost(cfg.URL); err != nil {
		fail("url %v", err)
	}
	tokenAuth := cfg.KeyFile != "" || len(cfg.Key) > 0
	switch {
	case tokenAuth && cfg.CertFile != "":
		fail("cert_file and apns.key_file are alternatives: configure one")
	case cfg.CertFile != "":
		if _, err := os.Stat(cfg.CertFile); err != nil {
			fail("cert_file is unusable: %v", err)
		}
	case !tokenAuth:
		fail("key_file is required: the .p8 signing key from Apple's developer portal (or cert_file for certificate auth)")
	case cfg.KeyFile != "":
		if _, err := os.Stat(cfg.KeyFile); err != nil {
			fail("key_file is unusable: %v", err)
		}
	}
	if cfg.CertFile == "" {
		// Apple's ids are 10 characters; anything else is a copying slip.
		if len(cfg.KeyID) != 10 {
			fail("key_id must be the 10-character key id from Apple")
		}
		if len(cfg.TeamID) != 10 {
			fail("team_id must be the 10-character team id from Apple")
		}
	}
	errs = append(errs, cfg.Retry.validate("apns")...)
	errs = append(errs, cfg.Client.validate("apns")...)
	return errors.Join(errs...)
}

// NewAPNs validates cfg, loads the key or certificate and returns a
// sender. It does not connect: the first Send does.
func NewAPNs(cfg APNsConfig) (*APNs, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, _ := apnsHost(cfg.URL) // checked by Validate
	cc := cfg.Client.withDefaults()
	a := &APNs{
		topic:   cfg.Topic,
		timeout: cc.RequestTimeout,
		retry:   cfg.Retry.withDefaults(),
		slots:   make(slots, cc.MaxInFlight),
		log:     cmp.Or(cfg.Logger, slog.New(slog.DiscardHandler)),
	}
	if cfg.CertFile != "" {
		cert, err := apnsCert(cfg.CertFile, cfg.CertPassword)
		if err != nil {
			return nil, err
		}
		a.client = &apns2.Client{Host: host, Certificate: cert, HTTPClient: cc.httpClient(true, []tls.Certificate{cert})}
		return a, nil
	}
	key, err := apnsKey(cfg)
	if err != nil {
		return nil, err
	}
	a.token = &token.Token{AuthKey: key, KeyID: cfg.KeyID, TeamID: cfg.TeamID}
	a.client = &apns2.Client{Host: host, Token: a.token, HTTPClient: cc.httpClient(true, nil)}
	return a, nil
}

// apnsHost maps the url setting to the endpoint: Apple's names for its
// two, or the base URL of another (a test server).
func apnsHost(u string) (string, error) {
	switch strings.ToLower(u) {
	case "", "production":
		return APNsDefaultURL, nil
	case "sandbox", "development":
		return apns2.HostDevelopment, nil
	}
	if !isHTTPSURL(u) {
		return "", fmt.Errorf("%q: want production, sandbox or an https:// URL", u)
	}
	return strings.TrimSuffix(u, "/"), nil
}

func apnsKey(cfg APNsConfig) (*ecdsa.PrivateKey, error) {
	var key *ecdsa.PrivateKey
	var err error
	if cfg.KeyFile != "" {
		key, err = token.AuthKeyFromFile(cfg.KeyFile)
	} else {
		key, err = token.AuthKeyFromBytes(cfg.Key)
	}
	if err != nil {
		return nil, fmt.Errorf("apns: signing key: %w", err)
	}
	return key, nil
}

func apnsCert(file, password string) (tls.Certificate, error) {
	var cert tls.Certificate
	var err error
	switch strings.ToLower(filepath.Ext(file)) {
	case ".p12", ".pfx":
		cert, err = certificate.FromP12File(file, password)
	default:
		cert, err = certificate.FromPemFile(file, password)
	}
	if err != nil {
		return cert, fmt.Errorf("apns: certificate %s: %w", file, err)
	}
	return cert, nil
}

// Close drops idle connections, for a sender replaced by a new config.
func (a *APNs) Close() { a.client.CloseIdleConnections() }

// Send sends m, retrying transient failures within the retry policy.
func (a *APNs) Send(ctx context.Context, m Message) Result {
	if !ValidAPNsToken(m.Token) {
		// Also keeps a crafted token from changing the request path.
		return Result{Outcome: TokenDead, Reason: apns2.ReasonBadDeviceToken}
	}
	n, reason := a.notification(m)
	if reason != "" {
		return Result{Outcome: Rejected, Reason: reason}
	}
	refreshed := false
	return a.retry.run(ctx, func(ctx context.Context) attempt {
		res, bearer, err := a.push(ctx, n)
		if err != nil {
			return transportError(err)
		}
		if res.Reason == apns2.ReasonExpiredProviderToken && a.token != nil && !refreshed {
			refreshed = true
			a.refreshToken(bearer)
			return attempt{again: true, reason: res.Reason}
		}
		return classifyAPNs(res, m.RegisteredAt)
	})
}

// push makes one request, holding an in-flight slot. bearer is the provider
// token it (most likely) carried.
func (a *APNs) push(ctx context.Context, n *apns2.Notification) (res *apns2.Response, bearer string, err error) {
	if err := a.slots.acquire(ctx); err != nil {
		return nil, "", err
	}
	defer a.slots.release()
	if a.token != nil {
		bearer = a.token.GenerateIfExpired() // what apns2 is about to send
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	res, err = a.client.PushWithContext(ctx, n)
	return res, bearer, err
}

// refreshToken replaces the shared provider token after APNs called it
// expired (a clock step, or a token APNs revoked early). apns2 only renews
// by age, so sign a new one under the token's own lock, unless a concurrent
// Send already did so since bearer was used.
func (a *APNs) refreshToken(bearer string) {
	a.token.Lock()
	defer a.token.Unlock()
	if a.token.Bearer != bearer {
		return
	}
	if _, err := a.token.Generate(); err != nil {
		a.log.Error("apns: cannot sign a new provider token", "error", err)
		return
	}
	a.log.Info("apns: provider token renewed after ExpiredProviderToken", "key_id", a.token.KeyID)
}

// notification turns m into an apns2 notification; reason is set when m
// cannot be sent at all.
func (a *APNs) notification(m Message) (*apns2.Notification, string) {
	body, reason := apnsBody(m)
	if reason != "" {
		return nil, reason
	}
	n := &apns2.Notification{
		DeviceToken: m.Token,
		Topic:       cmp.Or(m.Topic, a.topic),
		Payload:     body,
		PushType:    apns2.PushTypeAlert,
		Priority:    apns2.PriorityHigh,
		Expiration:  time.Now().Add(alertTTL),
		CollapseID:  collapseID(m.CollapseID),
	}
	switch {
	case m.Kind == Reregister:
		// Apple requires priority 5 for background pushes; a collapse id
		// would only let one account's request replace another's.
		n.PushType = apns2.PushTypeBackground
		n.Priority = apns2.PriorityLow
		n.Expiration = time.Now().Add(reregisterTTL)
		n.CollapseID = ""
	case !textOf(m).alert():
		n.Priority = apns2.PriorityLow // a badge change can wait for the device's convenience
	}
	return n, ""
}

// classifyAPNs maps an APNs answer to an outcome.
func classifyAPNs(res *apns2.Response, registeredAt time.Time) attempt {
	reason := cmp.Or(res.Reason, fmt.Sprintf("HTTP %d", res.StatusCode))
	switch {
	case res.StatusCode == http.StatusOK:
		return attempt{outcome: Delivered}
	case res.StatusCode == http.StatusGone || res.Reason == apns2.ReasonUnregistered:
		// The timestamp says when APNs learnt the token was dead; a device
		// that registered after that (apps may get the same token back) is
		// not dead. APNs gives whole seconds.
		if !res.Timestamp.IsZero() && res.Timestamp.Before(registeredAt.Truncate(time.Second)) {
			return attempt{outcome: Rejected, reason: reason}
		}
		return attempt{outcome: TokenDead, reason: reason}
	case res.Reason == apns2.ReasonBadDeviceToken:
		return attempt{outcome: TokenDead, reason: reason}
	case res.StatusCode == http.StatusTooManyRequests, res.StatusCode >= 500,
		res.Reason == apns2.ReasonIdleTimeout:
		return attempt{retry: true, reason: reason}
	default:
		// 400 (topic, headers, payload), 403 (credentials), 405, 413.
		return attempt{outcome: Rejected, reason: reason}
	}
}

// ValidAPNsToken reports whether t looks like an APNs device token: hex (32
// bytes today, longer allowed). Registration refuses others, and Send never
// puts one in a URL.
func ValidAPNsToken(t string) bool {
	if t == "" || len(t) > 200 {
		return false
	}
	_, err := hex.DecodeString(t)
	return err == nil
}

// collapseID keeps an apns-collapse-id within Apple's 64 bytes; a longer one
// is replaced by its hash, which collapses just the same.
func collapseID(id string) string {
	if len(id) <= 64 {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

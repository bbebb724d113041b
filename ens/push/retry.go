package push

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// RetryPolicy bounds the retries of transient failures (5xx, 429, network
// errors). Zero fields take the defaults shown.
type RetryPolicy struct {
	MaxAttempts int           // requests per Send, including the first (4)
	BaseDelay   time.Duration // backoff before the first retry, doubled each time (250ms)
	MaxDelay    time.Duration // cap on one backoff (5s)
	MaxElapsed  time.Duration // total time a Send may spend, waits included (30s)
}

// validate reports negative settings; sender names the config (apns, fcm).
func (p RetryPolicy) validate(sender string) []error {
	if p.MaxAttempts < 0 || p.BaseDelay < 0 || p.MaxDelay < 0 || p.MaxElapsed < 0 {
		return []error{fmt.Errorf("%s.retry: attempts and delays must not be negative (0 takes the default)", sender)}
	}
	return nil
}

func (p RetryPolicy) withDefaults() RetryPolicy {
	p.MaxAttempts = cmp.Or(p.MaxAttempts, 4)
	p.BaseDelay = cmp.Or(p.BaseDelay, 250*time.Millisecond)
	p.MaxDelay = cmp.Or(p.MaxDelay, 5*time.Second)
	p.MaxElapsed = cmp.Or(p.MaxElapsed, 30*time.Second)
	return p
}

// attempt is what one request came to.
type attempt struct {
	outcome Outcome // final outcome, unless retry or again
	reason  string
	err     error
	retry   bool          // transient: back off and try again
	after   time.Duration // the server's Retry-After, 0 if none
	again   bool          // try again at once (a refreshed credential), without backoff
}

// run calls try until it gives a final outcome or the policy's bounds run out.
// The caller guarantees that again is returned at most once per Send.
func (p RetryPolicy) run(ctx context.Context, try func(context.Context) attempt) Result {
	start := time.Now()
	for n := 1; ; n++ {
		a := try(ctx)
		switch {
		case a.again:
			continue
		case !a.retry:
			return Result{Outcome: a.outcome, Reason: a.reason, Attempts: n, Err: a.err}
		case ctx.Err() != nil:
			return Result{Outcome: Failed, Reason: ReasonCanceled, Attempts: n, Err: ctx.Err()}
		case n >= p.MaxAttempts:
			return Result{Outcome: Failed, Reason: a.reason, Attempts: n, Err: a.err}
		}
		// A server's Retry-After is a floor: waiting less would only earn
		// another 429. When it does not fit in the budget, give up now.
		delay := max(p.backoff(n), a.after)
		if time.Since(start)+delay > p.MaxElapsed {
			return Result{Outcome: Failed, Reason: a.reason, Attempts: n, Err: a.err}
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return Result{Outcome: Failed, Reason: ReasonCanceled, Attempts: n, Err: ctx.Err()}
		case <-t.C:
		}
	}
}

// backoff is the wait before retry n (n >= 1): "full jitter", a random
// duration up to BaseDelay·2^(n-1) capped at MaxDelay, so that many senders
// failing together do not retry in lockstep.
func (p RetryPolicy) backoff(n int) time.Duration {
	ceiling := p.MaxDelay
	if n-1 < 30 && p.BaseDelay<<(n-1) < ceiling {
		ceiling = p.BaseDelay << (n - 1)
	}
	return time.Duration(rand.Int64N(int64(ceiling)) + 1)
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// transportError classifies an error from an HTTP round trip that got no
// response.
func transportError(err error) attempt {
	// A *url.Error quotes the request URL, and an APNs URL holds the device
	// token; keep only the cause.
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err
	}
	var verr *tls.CertificateVerificationError
	var nerr net.Error
	switch {
	case errors.As(err, &verr):
		return attempt{outcome: Rejected, reason: ReasonTLS, err: err}
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return attempt{retry: true, reason: ReasonTimeout, err: err}
	default:
		return attempt{retry: true, reason: ReasonNetwork, err: err}
	}
}

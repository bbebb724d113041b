package push

import (
	"context"
	"net/http"
	"testing"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	p := RetryPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}.withDefaults()
	for n := 1; n <= 40; n++ {
		ceiling := min(p.MaxDelay, p.BaseDelay<<min(n-1, 20))
		for range 50 {
			if d := p.backoff(n); d <= 0 || d > ceiling {
				t.Fatalf("backoff(%d) = %v, want in (0, %v]", n, d, ceiling)
			}
		}
	}
}

func TestRetryAfterHeader(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := map[string]time.Duration{
		"":                              0,
		"7":                             7 * time.Second,
		"-1":                            0,
		"soon":                          0,
		"Fri, 02 Jan 2026 03:04:35 GMT": 30 * time.Second,
		"Fri, 02 Jan 2026 03:00:00 GMT": 0, // in the past
	}
	for v, want := range tests {
		h := http.Header{}
		if v != "" {
			h.Set("Retry-After", v)
		}
		if got := retryAfter(h, now); got != want {
			t.Errorf("Retry-After %q = %v, want %v", v, got, want)
		}
	}
}

// TestRunBounds: attempts and total time are both bounded.
func TestRunBounds(t *testing.T) {
	transient := func(context.Context) attempt { return attempt{retry: true, reason: "x"} }
	p := RetryPolicy{MaxAttempts: 5, BaseDelay: time.Microsecond, MaxDelay: time.Microsecond}.withDefaults()
	if res := p.run(context.Background(), transient); res.Outcome != Failed || res.Attempts != 5 || res.Reason != "x" {
		t.Errorf("attempt bound: %+v", res)
	}
	p = RetryPolicy{MaxAttempts: 100, BaseDelay: 20 * time.Millisecond, MaxDelay: 20 * time.Millisecond, MaxElapsed: 100 * time.Millisecond}
	start := time.Now()
	res := p.run(context.Background(), transient)
	if res.Outcome != Failed || res.Attempts >= 100 || time.Since(start) > 150*time.Millisecond {
		t.Errorf("time bound: %+v after %v", res, time.Since(start))
	}
}

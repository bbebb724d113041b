package ens

import (
	"testing"
	"time"
)

// Limiters whose bucket has refilled are dropped as the set grows, limiters
// still draining are kept, and past maxLimiters new keys share one.
func TestLimiterSetStaysBounded(t *testing.T) {
	set := newLimiterSet[int](10) // bursts of 21
	busy := set.get(-1)
	if !busy.AllowN(time.Now(), 21) {
		t.Fatal("a new limiter did not allow its burst")
	}
	for i := range minLimiterSweep - 1 {
		set.get(i) // made, never used: as good as new
	}
	if n := len(set.entries); n != minLimiterSweep {
		t.Fatalf("%d limiters before the first sweep", n)
	}
	set.get(minLimiterSweep) // the set is due for a sweep
	if _, ok := set.entries[-1]; !ok || len(set.entries) != 2 {
		t.Fatalf("after the sweep: %d limiters, the drained one kept: %v; want it and the newest", len(set.entries), ok)
	}
	if set.get(-1) != busy {
		t.Fatal("a drained limiter was replaced by a full one")
	}

	for i := range maxLimiters - 1 {
		set.entries[i] = busy // all draining: a sweep frees nothing
	}
	set.swept = time.Time{}
	if l := set.get(maxLimiters); l != set.overflow {
		t.Fatal("a new key past maxLimiters got a limiter of its own")
	}
	if n := len(set.entries); n != maxLimiters {
		t.Fatalf("%d limiters, want %d", n, maxLimiters)
	}
	set.sweep(time.Now().Add(time.Hour))
	if n := len(set.entries); n != 0 {
		t.Fatalf("%d limiters left an hour later", n)
	}
}

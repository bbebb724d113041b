package graphsim

import (
	"container/heap"
	"sync"
	"time"
)

// clock is the simulator's notion of time (the "sim clock"): access-token
// and subscription expiry, notification retries and their 4-hour window,
// throttling windows and lifecycle events are all measured on it. It runs
// at a chosen speed relative to the wall clock (or not at all, when frozen)
// and can be moved forward at once with Advance, which fires the timers
// that fall due on the way, in order, each at its own instant.
//
// Timer callbacks run one at a time. Work a callback starts in the
// background (a notification POST) is tracked with begin/end, and Advance
// waits for it before firing the next timer, so a test that advances
// four hours sees every retry of that window happen in order.
type clock struct {
	mu       sync.Mutex
	perWall  float64 // sim seconds per wall second; 0: frozen
	wallBase time.Time
	simBase  time.Time
	timers   timerHeap
	seq      uint64
	wake     chan struct{}

	run sync.Mutex // held while timers fire (the loop or Advance)

	busyMu sync.Mutex
	busy   int // background work in flight
	idle   *sync.Cond

	stop chan struct{}
	done chan struct{}
}

type timer struct {
	at    time.Time
	seq   uint64
	f     func()
	index int // in the heap; -1 once fired or stopped
}

type timerHeap []*timer

func (h timerHeap) Len() int { return len(h) }
func (h timerHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h timerHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].index = i; h[j].index = j }
func (h *timerHeap) Push(x any)   { t := x.(*timer); t.index = len(*h); *h = append(*h, t) }
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}

// newClock starts a clock at start (zero: now) running perWall sim seconds
// per wall second (0: frozen).
func newClock(start time.Time, perWall float64) *clock {
	if start.IsZero() {
		start = time.Now()
	}
	c := &clock{
		perWall:  perWall,
		wallBase: time.Now(),
		simBase:  start.UTC().Truncate(time.Microsecond),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	c.idle = sync.NewCond(&c.busyMu)
	go c.loop()
	return c
}

// Now is the current sim time (UTC).
func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nowLocked()
}

func (c *clock) nowLocked() time.Time {
	if c.perWall == 0 {
		return c.simBase
	}
	d := time.Since(c.wallBase)
	return c.simBase.Add(time.Duration(float64(d) * c.perWall)).UTC()
}

// wall converts a sim duration to the wall-clock time it takes; frozen
// clocks never get there.
func (c *clock) wall(d time.Duration) (time.Duration, bool) {
	if c.perWall == 0 {
		return 0, false
	}
	return time.Duration(float64(d) / c.perWall), true
}

// At runs f at sim time t (at once, from the clock's goroutine, if t has
// passed).
func (c *clock) At(t time.Time, f func()) *timer {
	c.mu.Lock()
	c.seq++
	tm := &timer{at: t, seq: c.seq, f: f}
	heap.Push(&c.timers, tm)
	c.mu.Unlock()
	c.poke()
	return tm
}

// After runs f once d has passed on the sim clock.
func (c *clock) After(d time.Duration, f func()) *timer { return c.At(c.Now().Add(d), f) }

// Stop cancels t; it reports whether t had not fired yet.
func (c *clock) Stop(t *timer) bool {
	if t == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.index < 0 {
		return false
	}
	heap.Remove(&c.timers, t.index)
	return true
}

func (c *clock) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// begin and end bracket background work that Advance must wait for.
func (c *clock) begin() {
	c.busyMu.Lock()
	c.busy++
	c.busyMu.Unlock()
}

func (c *clock) end() {
	c.busyMu.Lock()
	c.busy--
	if c.busy == 0 {
		c.idle.Broadcast()
	}
	c.busyMu.Unlock()
}

func (c *clock) waitIdle() {
	c.busyMu.Lock()
	for c.busy > 0 {
		c.idle.Wait()
	}
	c.busyMu.Unlock()
}

// popDue removes and returns the earliest timer due at or before t.
func (c *clock) popDue(t time.Time) *timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 || c.timers[0].at.After(t) {
		return nil
	}
	return heap.Pop(&c.timers).(*timer)
}

// Advance moves the sim clock forward by d, firing every timer due on the
// way at its own instant and waiting for the background work each starts.
func (c *clock) Advance(d time.Duration) {
	c.run.Lock()
	defer c.run.Unlock()
	c.waitIdle()
	target := c.Now().Add(d)
	for {
		tm := c.popDue(target)
		if tm == nil {
			break
		}
		c.set(tm.at)
		tm.f()
		c.waitIdle()
	}
	c.set(target)
	c.poke()
}

// set makes the sim time t now (never moving backwards).
func (c *clock) set(t time.Time) {
	c.mu.Lock()
	if t.After(c.nowLocked()) {
		c.simBase = t
		c.wallBase = time.Now()
	}
	c.mu.Unlock()
}

// loop fires timers as the sim clock reaches them by itself.
func (c *clock) loop() {
	defer close(c.done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		c.mu.Lock()
		var wait time.Duration = -1
		if len(c.timers) > 0 {
			if w, ok := c.wall(c.timers[0].at.Sub(c.nowLocked())); ok {
				wait = max(w, 0)
			}
		}
		c.mu.Unlock()
		var tc <-chan time.Time
		if wait >= 0 {
			t.Reset(wait)
			tc = t.C
		}
		select {
		case <-c.stop:
			return
		case <-c.wake:
			continue
		case <-tc:
		}
		c.run.Lock()
		for {
			tm := c.popDue(c.Now())
			if tm == nil {
				break
			}
			tm.f()
		}
		c.run.Unlock()
	}
}

// close stops the loop; pending timers never fire.
func (c *clock) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

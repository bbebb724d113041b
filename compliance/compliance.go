// Package compliance keeps a node's copy of every device's compliance
// state, which the EWS proxy judges requests by and ENS filters its pushes
// with. It belongs to neither: one copy per database serves both.
package compliance

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/ensgate/ensgate/store"
)

// Cache is a node's copy of every device's compliance state. Lookups
// never touch the database; PostgreSQL NOTIFY keeps the copy current on
// every node within a round trip of an admin's change.
type Cache struct {
	store *store.Store
	log   *slog.Logger

	mu     sync.RWMutex
	states map[string][]tenantState // by device id; one entry per tenant that knows the device
	loaded bool                     // false until the first full load, and after a lost listener

	firstLoad     chan struct{} // closed by the first full load
	firstLoadOnce sync.Once
	settled       chan struct{} // closed once the first load has succeeded or failed
	settledOnce   sync.Once
}

// tenantState is kept small: a node holds one per known device.
type tenantState struct {
	tenant int64
	state  string // one of store's constants, so all share their bytes
}

// New returns an empty cache; Run fills and follows it.
func New(s *store.Store, log *slog.Logger) *Cache {
	return &Cache{store: s, log: log, states: map[string][]tenantState{},
		firstLoad: make(chan struct{}), settled: make(chan struct{})}
}

// Loaded is closed once the states have been loaded for the first time.
func (c *Cache) Loaded() <-chan struct{} { return c.firstLoad }

// Current reports whether the copy is loaded and followed: false before
// the first load and while the listener is lost (changes may be missed).
func (c *Cache) Current() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.loaded
}

func (c *Cache) settle() { c.settledOnce.Do(func() { close(c.settled) }) }

// ErrUnknown means the states could not be loaded (the database is
// unreachable): the proxy fails closed rather than guess.
var ErrUnknown = errors.New("device compliance is not known yet (database unreachable)")

// Lookup is State for a request. Until the first load has succeeded or
// failed it waits for that outcome (or for ctx, at most FirstLoadWait), so
// a request that reaches a node in its first moments is judged by the
// states rather than refused for not knowing them yet; a database that
// refuses connections fails the first load, and so the request, at once,
// and one that does not answer at all costs a request FirstLoadWait.
// Afterwards it costs one channel check.
func (c *Cache) Lookup(ctx context.Context, k store.DeviceKey) (string, error) {
	select {
	case <-c.settled:
	default:
		wait := time.NewTimer(FirstLoadWait)
		defer wait.Stop()
		select {
		case <-c.settled:
		case <-ctx.Done():
		case <-wait.C:
		}
	}
	return c.State(k)
}

// FirstLoadWait bounds how long a request waits for the first load.
const FirstLoadWait = 5 * time.Second

// State returns a device's state ("" when the device is unknown). With
// TenantID 0 it looks across tenants and returns the most restrictive.
func (c *Cache) State(k store.DeviceKey) (string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.loaded {
		return "", ErrUnknown
	}
	worst := ""
	for _, ts := range c.states[k.DeviceID] {
		if ts.tenant == k.TenantID {
			return ts.state, nil
		}
		if k.TenantID == 0 && restrictiveness[ts.state] > restrictiveness[worst] {
			worst = ts.state
		}
	}
	return worst, nil
}

var restrictiveness = map[string]int{store.Compliant: 1, store.NonCompliant: 2, store.Blocked: 3, store.Wiped: 4}

// Run loads the states and follows changes until ctx ends.
func (c *Cache) Run(ctx context.Context) {
	c.store.ListenCompliance(ctx, func() { c.reload(ctx) }, func(k store.DeviceKey) error { return c.refresh(ctx, k) },
		func(err error) {
			c.settle() // the database could not even be listened to
			c.mu.Lock()
			c.loaded = false // changes may be missed until the listener is back
			c.mu.Unlock()
			c.log.Warn("compliance listener lost; retrying", slog.Any("error", err))
		})
}

// reload replaces the whole copy; called whenever the listener (re)starts,
// after LISTEN, so no change between the load and the listen is lost.
func (c *Cache) reload(ctx context.Context) {
	for ctx.Err() == nil {
		rows, err := c.store.ComplianceStates(ctx)
		if err == nil {
			states := make(map[string][]tenantState, len(rows))
			for k, state := range rows {
				set(states, k, state)
			}
			c.mu.Lock()
			c.states, c.loaded = states, true
			c.mu.Unlock()
			c.firstLoadOnce.Do(func() { close(c.firstLoad) })
			c.settle()
			return
		}
		c.settle()
		c.log.Warn("loading device compliance", slog.Any("error", err))
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// refresh reads one changed device; if that fails, the listener starts
// over and reloads everything.
func (c *Cache) refresh(ctx context.Context, k store.DeviceKey) error {
	state, err := c.store.ComplianceState(ctx, k)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.loaded = false // a change we could not read: fail closed until reloaded
		return err
	}
	set(c.states, k, state)
	return nil
}

// set records state ("" forgets the device) for k in states.
func set(states map[string][]tenantState, k store.DeviceKey, state string) {
	list := slices.DeleteFunc(states[k.DeviceID], func(ts tenantState) bool { return ts.tenant == k.TenantID })
	if state != "" {
		list = append(list, tenantState{tenant: k.TenantID, state: intern(state)})
	}
	if len(list) == 0 {
		delete(states, k.DeviceID)
		return
	}
	states[k.DeviceID] = list
}

// intern returns store's constant for a state read from the database, so
// that 100,000 devices do not hold 100,000 copies of "compliant".
func intern(state string) string {
	for _, c := range []string{store.Compliant, store.NonCompliant, store.Blocked, store.Wiped} {
		if state == c {
			return c
		}
	}
	return state
}

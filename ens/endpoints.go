package ens

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/store"
)

// endpoint is a tenant's allowed EWS endpoint with its shared client and the
// bulkhead that keeps one slow Exchange from taking every goroutine.
type endpoint struct {
	store.Endpoint
	pin    ews.Fingerprint
	client *ews.Client
	// backOff is shared by client and every certificate client made for
	// a request (ewsClient), so that their back-offs outlive the request.
	backOff *ews.BackOff
	slots   chan struct{}
}

// endpointCache keeps each endpoint's shared state until the database
// announces a change to it (store.ListenEndpoints): a new pin or a removal
// reaches every node within seconds. A row read before the latest
// announcement may be stale, so it serves its request but is not kept.
type endpointCache struct {
	mu      sync.Mutex
	entries map[int64]*endpoint
	changed map[int64]time.Time // when a change to the endpoint was last announced
	resetAt time.Time           // when every entry was last dropped
}

// forget drops the endpoint's entry; calls in flight finish with it.
func (c *endpointCache) forget(id int64) {
	c.mu.Lock()
	ep := c.entries[id]
	delete(c.entries, id)
	if c.changed == nil {
		c.changed = map[int64]time.Time{}
	}
	c.changed[id] = time.Now()
	c.mu.Unlock()
	if ep != nil {
		ep.client.CloseIdleConnections()
	}
}

// reset drops every entry: after a (re)connection of the listener, changes
// may have been missed.
func (c *endpointCache) reset() {
	c.mu.Lock()
	entries := c.entries
	c.entries, c.changed, c.resetAt = nil, nil, time.Now()
	c.mu.Unlock()
	for _, ep := range entries {
		ep.client.CloseIdleConnections()
	}
}

func (c *endpointCache) get(id int64) *endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.entries[id]
}

// keep stores ep unless its row may be stale or another request stored the
// endpoint first; it returns the entry to use.
func (c *endpointCache) keep(ep *endpoint) *endpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !ep.ReadAt.After(c.resetAt) || !ep.ReadAt.After(c.changed[ep.ID]) {
		return ep
	}
	if kept := c.entries[ep.ID]; kept != nil {
		ep.client.CloseIdleConnections()
		return kept
	}
	if c.entries == nil {
		c.entries = map[int64]*endpoint{}
	}
	c.entries[ep.ID] = ep
	return ep
}

func (s *Service) ewsConfig(e store.Endpoint, pin ews.Fingerprint) ews.Config {
	return ews.Config{URL: e.URL, Pin: pin, RootCAs: s.cfg.EWSRootCAs, UserAgent: "ENSGate/" + Version(), Timeout: s.cfg.EWSTimeout}
}

// endpointFor returns the shared state for an endpoint row read from the
// database.
func (s *Service) endpointFor(e store.Endpoint) (*endpoint, error) {
	if ep := s.endpoints.get(e.ID); ep != nil {
		return ep, nil
	}
	var pin ews.Fingerprint
	if e.Fingerprint != "" {
		var err error
		if pin, err = ews.ParseFingerprint(e.Fingerprint); err != nil {
			return nil, fmt.Errorf("endpoint %d: %w", e.ID, err)
		}
	}
	backOff := &ews.BackOff{}
	cfg := s.ewsConfig(e, pin)
	cfg.BackOff = backOff
	client, err := ews.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	return s.endpoints.keep(&endpoint{Endpoint: e, pin: pin, client: client, backOff: backOff,
		slots: make(chan struct{}, s.cfg.EWSConcurrency)}), nil
}

// errEndpointBusy means the endpoint's bulkhead is full.
var errEndpointBusy = errors.New("too many calls in flight to this Exchange")

// acquire takes a slot for an EWS call, waiting at most a second.
func (ep *endpoint) acquire(ctx context.Context) (release func(), err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	select {
	case ep.slots <- struct{}{}:
		return func() { <-ep.slots }, nil
	case <-ctx.Done():
		return nil, errEndpointBusy
	}
}

// endpointByID returns the shared state of the subscription's endpoint.
func (s *Service) endpointByID(ctx context.Context, id int64) (*endpoint, error) {
	if ep := s.endpoints.get(id); ep != nil {
		return ep, nil
	}
	row, err := s.store.EndpointByID(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.endpointFor(row)
}

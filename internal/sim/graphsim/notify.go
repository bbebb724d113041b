package graphsim

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"time"
)

// Delivery follows concepts/change-notifications-delivery-webhooks.md:
//
//   - one POST may carry several notifications ({"value":[...]}), of one
//     subscription or several with the same URL;
//   - the listener must answer 2xx within 3 s; otherwise Graph retries
//     (the simulator: after FirstRetry, doubling up to MaxRetryDelay) for
//     up to 4 hours, then drops the notification (and, the simulator's
//     reading of "missed", tells the subscription's lifecycle URL);
//   - an answer later than 2900 ms is slow; once an endpoint has answered
//     SlowSample (100) times, 10 % or more slow answers flag it slow: its
//     notifications are delayed by 10 minutes (and failures retried every
//     10 minutes); 15 % or more: they are dropped. The tally starts over
//     every 10 minutes. A POST that times out counts as slow.
//
// Lifecycle notifications travel the same way to the lifecycle URL, apart
// from change notifications.

type endpointKey struct {
	url       string
	lifecycle bool
}

const (
	endpointNormal = iota
	endpointThrottled
	endpointDropping
)

type endpoint struct {
	key     endpointKey
	queue   []*pending
	busy    bool // a POST is in flight, or a retry or delay is scheduled
	backoff time.Duration
	state   int
	window  time.Time // start of the slow tally
	answers int
	slow    int
}

type pending struct {
	sub   *subscription
	body  map[string]any
	first time.Time
	event string // lifecycle event; "" for a change notification
}

const slowDelay = 10 * time.Minute

func (s *Server) endpointLocked(url string, lifecycle bool) *endpoint {
	k := endpointKey{url, lifecycle}
	ep := s.endpoints[k]
	if ep == nil {
		ep = &endpoint{key: k, window: s.clock.Now()}
		s.endpoints[k] = ep
	}
	return ep
}

// changedLocked queues a change notification for every subscription of m
// that asked for this change type.
func (s *Server) changedLocked(m *mailbox, msgID, changeType string) {
	now := s.clock.Now()
	var subs []*subscription
	for _, sub := range s.subs {
		if sub.user == m && slices.Contains(sub.changeTypes, changeType) {
			subs = append(subs, sub)
		}
	}
	slices.SortFunc(subs, func(a, b *subscription) int { return a.created.Compare(b.created) })
	var etag string
	if msg := m.find(msgID); msg != nil {
		etag = msg.etag()
	}
	for _, sub := range subs {
		if s.pausedLocked(sub, now) {
			s.stats.add(&s.stats.c.NotificationsPaused, 1)
			continue
		}
		rd := map[string]any{
			"@odata.type": "#Microsoft.Graph.Message",
			"@odata.id":   "Users/" + m.id + "@" + s.tenant + "/Messages/" + msgID,
			"id":          msgID,
		}
		if etag != "" {
			rd["@odata.etag"] = etag
		}
		n := map[string]any{
			"subscriptionId":                 sub.id,
			"subscriptionExpirationDateTime": subTime(sub.expires),
			"changeType":                     changeType,
			"resource":                       "users/" + m.id + "@" + s.tenant + "/messages/" + msgID,
			"resourceData":                   rd,
			"clientState":                    nullable(sub.clientState),
			"tenantId":                       s.tenant,
		}
		s.enqueueLocked(s.endpointLocked(sub.notificationURL, false), &pending{sub: sub, body: n, first: now})
	}
}

func nullable(v string) any {
	if v == "" {
		return nil
	}
	return v
}

// lifecycleLocked queues a lifecycle notification for sub, if it has a
// lifecycle URL.
func (s *Server) lifecycleLocked(sub *subscription, event string, now time.Time) {
	if sub.lifecycleURL == "" {
		return
	}
	n := map[string]any{
		"subscriptionId":                 sub.id,
		"subscriptionExpirationDateTime": subTime(sub.expires),
		"tenantId":                       s.tenant,
		"clientState":                    nullable(sub.clientState),
		"lifecycleEvent":                 event,
	}
	s.log.Info("graphsim: lifecycle notification queued", "subscription", sub.id, "lifecycleEvent", event)
	s.enqueueLocked(s.endpointLocked(sub.lifecycleURL, true), &pending{sub: sub, body: n, first: now, event: event})
}

func (s *Server) enqueueLocked(ep *endpoint, p *pending) {
	ep.queue = append(ep.queue, p)
	s.kickLocked(ep)
}

// kickLocked starts the next POST to ep if none is in flight or waiting.
func (s *Server) kickLocked(ep *endpoint) {
	if ep.busy || len(ep.queue) == 0 || s.closed {
		return
	}
	now := s.clock.Now()
	s.tallyLocked(ep, now)
	switch ep.state {
	case endpointDropping:
		s.dropLocked(ep, len(ep.queue), now)
		return
	case endpointThrottled:
		ep.busy = true
		s.clock.After(slowDelay, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			ep.busy = false
			if !s.closed && len(ep.queue) > 0 {
				s.startLocked(ep)
			}
		})
		return
	}
	s.startLocked(ep)
}

func (s *Server) startLocked(ep *endpoint) {
	ep.busy = true
	n := min(len(ep.queue), s.cfg.MaxBatch)
	batch := slices.Clone(ep.queue[:n])
	s.clock.begin()
	go s.post(ep, batch)
}

// tallyLocked starts a new slow tally every 10 minutes, and with it
// clears the endpoint's flag (the simulator's reading of "the accumulation
// of responses is flushed every 10 minutes").
func (s *Server) tallyLocked(ep *endpoint, now time.Time) {
	if now.Sub(ep.window) >= slowDelay {
		ep.window, ep.answers, ep.slow, ep.state = now, 0, 0, endpointNormal
	}
}

// dropLocked gives up the first n queued notifications of ep; for change
// notifications their subscriptions are told "missed".
func (s *Server) dropLocked(ep *endpoint, n int, now time.Time) {
	dropped := slices.Clone(ep.queue[:n])
	ep.queue = slices.Delete(ep.queue, 0, n)
	s.stats.add(&s.stats.c.NotificationsDropped, int64(len(dropped)))
	s.log.Info("graphsim: notifications dropped", "count", len(dropped), "lifecycle", ep.key.lifecycle)
	if ep.key.lifecycle {
		return
	}
	var told []*subscription
	for _, p := range dropped {
		if !p.sub.ended && !slices.Contains(told, p.sub) {
			told = append(told, p.sub)
			s.lifecycleLocked(p.sub, Missed, now)
		}
	}
}

// post sends one batch and settles its outcome.
func (s *Server) post(ep *endpoint, batch []*pending) {
	defer s.clock.end()
	value := make([]any, len(batch))
	for i, p := range batch {
		value[i] = p.body
	}
	body, _ := json.Marshal(map[string]any{"value": value})
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.DeliveryTimeout)
	defer cancel()
	ok := false
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.key.url, bytes.NewReader(body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		var resp *http.Response
		resp, err = s.client.Do(req)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			ok = resp.StatusCode >= 200 && resp.StatusCode < 300
		}
	}
	elapsed := time.Since(start)

	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	ep.busy = false
	if s.closed {
		return
	}
	s.tallyLocked(ep, now)
	ep.answers++
	if elapsed > s.cfg.SlowResponse || ctx.Err() != nil {
		ep.slow++
		s.stats.add(&s.stats.c.SlowResponses, 1)
	}
	if ep.answers >= s.cfg.SlowSample {
		switch pct := ep.slow * 100 / ep.answers; {
		case pct >= 15:
			ep.state = endpointDropping
		case pct >= 10:
			ep.state = endpointThrottled
		default:
			ep.state = endpointNormal
		}
	}
	if ok {
		ep.queue = slices.Delete(ep.queue, 0, len(batch))
		ep.backoff = 0
		s.stats.add(&s.stats.c.NotificationPosts, 1)
		for _, p := range batch {
			if p.event == "" {
				s.stats.add(&s.stats.c.NotificationsSent, 1)
				p.sub.sent++
			} else {
				s.stats.lifecycle(p.event)
			}
		}
		s.kickLocked(ep)
		return
	}
	s.stats.add(&s.stats.c.NotificationsRetried, 1)
	for _, p := range batch {
		p.sub.failed++
	}
	s.log.Info("graphsim: notification POST failed", "count", len(batch), "lifecycle", ep.key.lifecycle)
	// Give up what has been failing for the retry window.
	expired := 0
	for expired < len(ep.queue) && !now.Before(ep.queue[expired].first.Add(s.cfg.RetryWindow)) {
		expired++
	}
	if expired > 0 {
		s.dropLocked(ep, expired, now)
	}
	if len(ep.queue) == 0 {
		ep.backoff = 0
		return
	}
	switch {
	case ep.state != endpointNormal:
		ep.backoff = slowDelay
	case ep.backoff == 0:
		ep.backoff = s.cfg.FirstRetry
	default:
		ep.backoff = min(2*ep.backoff, s.cfg.MaxRetryDelay)
	}
	// Never wait past the oldest notification's window: it is retried (or
	// dropped) on time.
	wait := min(ep.backoff, ep.queue[0].first.Add(s.cfg.RetryWindow).Sub(now))
	ep.busy = true
	s.clock.After(wait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		ep.busy = false
		s.kickLocked(ep)
	})
}

// PendingNotifications is the number of notifications queued or in flight
// (change and lifecycle).
func (s *Server) PendingNotifications() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ep := range s.endpoints {
		n += len(ep.queue)
	}
	return n
}

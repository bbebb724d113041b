package ens

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// graphWork is the work Graph's notifications and lifecycle events leave
// for this node, after Graph was answered: one worker per subscription at a
// time drains what arrived for it, so a mailbox's flood costs one worker
// and Graph sees the calls of one (Outlook allows 4 at once per app and
// mailbox, and the mail app's own calls count too), and lifecycle events
// that repeat merge into one round. Workers are bounded per node
// (NotificationsInFlight); Stop waits for them (Service.background).
type graphWork struct {
	mu    sync.Mutex
	tasks map[int64]*graphTask // by subscription row id
	slots chan struct{}        // one per running worker
}

// graphTask is what is waiting for one subscription's worker.
type graphTask struct {
	o       *sealed
	items   []string
	events  map[string]bool
	arrived time.Time // of the oldest notification waiting
	end     bool      // end the subscription at Graph (it is over here)
}

// maxWaitingItems bounds the items one subscription has waiting; beyond,
// the fallback jobs announce them.
const maxWaitingItems = 10 * maxItemsPerNotification

// add hands work for o to its subscription's worker, starting one if none
// runs. It reports false when the node runs as many workers as it may: the
// caller answers 503 and Graph retries.
func (s *Service) addGraphWork(o *sealed, items []string, events map[string]bool, end bool, arrived time.Time) bool {
	q := &s.graphWork
	q.mu.Lock()
	defer q.mu.Unlock()
	t := q.tasks[o.sub.ID]
	if t == nil {
		select {
		case q.slots <- struct{}{}:
		default:
			return false
		}
		t = &graphTask{o: o, events: map[string]bool{}, arrived: arrived}
		q.tasks[o.sub.ID] = t
		s.background.Add(1)
		go s.runGraphWork(o.sub.ID, t)
	}
	for _, id := range items {
		if len(t.items) < maxWaitingItems && !slices.Contains(t.items, id) {
			t.items = append(t.items, id)
		}
	}
	for e := range events {
		t.events[e] = true
	}
	t.end = t.end || end
	return true
}

// runGraphWork drains a subscription's task until nothing is left.
func (s *Service) runGraphWork(id int64, t *graphTask) {
	q := &s.graphWork
	defer s.background.Done()
	log := s.log.With(slog.String("subscription", t.o.sub.PublicID))
	for {
		q.mu.Lock()
		items, events, end, arrived := t.items, t.events, t.end, t.arrived
		t.items, t.events, t.end, t.arrived = nil, map[string]bool{}, false, time.Now()
		if len(items) == 0 && len(events) == 0 && !end {
			delete(q.tasks, id)
			<-q.slots
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
		ctx, cancel := context.WithTimeout(s.backgroundCtx, graphWorkTimeout)
		var err error
		switch {
		case end:
			err = s.endGraphSubscription(ctx, t.o)
		case len(events) > 0:
			err = s.graphEvents(ctx, log, t.o, events)
		}
		if err == nil && len(items) > 0 && !end {
			err = s.deliverGraph(ctx, log, t.o, items, arrived)
		}
		cancel()
		if err != nil {
			log.Warn("Graph work not done in full; its fallback job will see to the rest", slog.Any("error", err))
		}
	}
}

package store

import (
	"context"
	"time"
)

// listen calls changed with the payload of each notification on channel,
// and reset after each (re)connection, when notifications may have been
// missed, until ctx ends. When its connection is lost, or changed fails,
// it reports the error to failed and starts over a second later.
func (s *Store) listen(ctx context.Context, channel string, reset func(), changed func(payload string) error, failed func(error)) {
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, channel, reset, changed)
		if ctx.Err() != nil {
			return
		}
		failed(err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// listenOnce listens on one connection until it fails. The connection is
// hijacked from the pool and closed at the end: it carries LISTEN state,
// which must not reach the pool's other users.
func (s *Store) listenOnce(ctx context.Context, channel string, reset func(), changed func(string) error) error {
	pooled, err := s.pool.Acquire(ctx)
	if err != nil {
		return s.unreachable(err)
	}
	conn := pooled.Hijack()
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	reset()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		if err := changed(n.Payload); err != nil {
			return err
		}
	}
}

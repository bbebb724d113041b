package caddymodule

import (
	"context"
	"log/slog"

	"github.com/caddyserver/caddy/v2"

	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/store"
)

// stores shares one pgx pool per database URL across config reloads: the
// new config is provisioned before the old one is cleaned up, so the pool
// outlives both and no connection is dropped by a reload.
var stores = caddy.NewUsagePool()

type sharedStore struct{ *store.Store }

func (s sharedStore) Destruct() error {
	s.Close()
	return nil
}

func acquireStore(databaseURL string) (*store.Store, error) {
	v, _, err := stores.LoadOrNew(databaseURL, func() (caddy.Destructor, error) {
		// Not the config's context: that one ends with the config, the pool must not.
		s, err := store.Open(context.Background(), databaseURL)
		if err != nil {
			return nil, err
		}
		return sharedStore{s}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(sharedStore).Store, nil
}

func releaseStore(databaseURL string) error {
	_, err := stores.Delete(databaseURL)
	return err
}

// caches shares one compliance cache, and so one LISTEN connection, per
// database URL between the ens app and the ews_proxy handlers, and across
// reloads like the pool. Neither module owns it: whichever is provisioned
// first starts it, and it stops when the last one is cleaned up, so Caddy
// may start the apps in any order.
var caches = caddy.NewUsagePool()

type sharedCache struct {
	*compliance.Cache
	databaseURL string
	stop        context.CancelFunc
	done        <-chan struct{}
}

func (c sharedCache) Destruct() error {
	c.stop()
	<-c.done
	return releaseStore(c.databaseURL)
}

// acquireCompliance returns the database's compliance cache, loading and
// following the states from the first call on. The cache holds a reference
// to the database pool of its own, which its listener needs until it stops.
func acquireCompliance(databaseURL string, log *slog.Logger) (*compliance.Cache, error) {
	v, _, err := caches.LoadOrNew(databaseURL, func() (caddy.Destructor, error) {
		s, err := acquireStore(databaseURL)
		if err != nil {
			return nil, err
		}
		c := compliance.New(s, log)
		// Not the config's context: the cache outlives the config that started it.
		ctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Run(ctx)
		}()
		return sharedCache{Cache: c, databaseURL: databaseURL, stop: stop, done: done}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(sharedCache).Cache, nil
}

func releaseCompliance(databaseURL string) error {
	_, err := caches.Delete(databaseURL)
	return err
}

package caddymodule

import (
	"context"

	"github.com/caddyserver/caddy/v2"

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

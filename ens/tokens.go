package ens

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/oauth"
	"github.com/ensgate/ensgate/store"
)

// refreshWindow: an access token this close to its expiry is replaced
// before it is used, so calls do not fail on it first.
const refreshWindow = 5 * time.Minute

// errNoRefreshToken: the subscription's credentials hold no refresh token,
// or its endpoint names no OAuth client to redeem one with.
var errNoRefreshToken = errors.New("no refresh token to redeem")

// oauthEndpoint is where an endpoint's refresh tokens are redeemed.
func (s *Service) oauthEndpoint(o store.OAuth) oauth.Endpoint {
	return oauth.Endpoint{TokenURL: o.TokenURL(), ClientID: o.ClientID, Scopes: strings.Fields(o.Scope),
		HTTPClient: &http.Client{Timeout: s.cfg.EWSTimeout}}
}

// redeem replaces creds' access token (and its refresh token, which
// rotates) with new ones from the endpoint's OAuth authority.
func (s *Service) redeem(ctx context.Context, o store.OAuth, creds *credentials) error {
	if creds.RefreshToken == "" || o.ClientID == "" {
		return errNoRefreshToken
	}
	tokens, err := s.oauthEndpoint(o).Refresh(ctx, creds.RefreshToken)
	if err != nil {
		return err
	}
	creds.AccessToken, creds.RefreshToken, creds.AccessExpiry = tokens.AccessToken, tokens.RefreshToken, tokens.Expiry
	return nil
}

// sealed is a live subscription's credentials as its key opened them: what
// a notification, a lifecycle event or a retry works with.
type sealed struct {
	sub   store.Subscription
	creds *credentials
	key   seal.SubscriptionKey
}

// open opens a subscription's credentials with its key.
func (s *Service) open(sub store.Subscription, key seal.SubscriptionKey) (*sealed, error) {
	plain, err := key.Open(sub.PublicID, sub.SealedCredentials)
	if err != nil {
		return nil, errForgedCallback
	}
	var c credentials
	if err := json.Unmarshal(plain, &c); err != nil {
		return nil, err
	}
	return &sealed{sub: sub, creds: &c, key: key}, nil
}

// update re-seals o's credentials as change leaves them, one change at a
// time per subscription across nodes: change is given the credentials as
// they are now stored (another node's refresh included) and returns
// whether it changed them. o then holds what is stored.
func (s *Service) update(ctx context.Context, o *sealed, change func(c *credentials) (bool, error)) error {
	stored, err := s.store.UpdateCredentials(ctx, o.sub.ID, func(current []byte) ([]byte, error) {
		cur, err := s.open(store.Subscription{PublicID: o.sub.PublicID, SealedCredentials: current}, o.key)
		if err != nil {
			return nil, err
		}
		changed, err := change(cur.creds)
		if err != nil || !changed {
			return nil, err
		}
		plain, err := json.Marshal(cur.creds)
		if err != nil {
			return nil, err
		}
		return o.key.Seal(o.sub.PublicID, plain), nil
	})
	if err != nil {
		return err
	}
	sub := o.sub
	sub.SealedCredentials = stored
	fresh, err := s.open(sub, o.key)
	if err != nil {
		return err
	}
	*o = *fresh
	return nil
}

// freshAccess makes sure o's access token is usable: with force (the
// source refused it) or when it expires within refreshWindow, it redeems
// the refresh token and re-seals the credentials, unless another caller
// replaced the token meanwhile. Credentials without a refresh token are
// left alone, unless forced.
func (s *Service) freshAccess(ctx context.Context, o *sealed, oa store.OAuth, force bool) error {
	if !force && !expiring(o.creds) {
		return nil
	}
	refused := o.creds.AccessToken
	return s.update(ctx, o, func(c *credentials) (bool, error) {
		if c.AccessToken != refused && !expiring(c) {
			return false, nil // refreshed meanwhile
		}
		return true, s.redeem(ctx, oa, c)
	})
}

// expiring: the access token has a refresh token and is known to expire
// within refreshWindow.
func expiring(c *credentials) bool {
	return c.RefreshToken != "" && !c.AccessExpiry.IsZero() && time.Until(c.AccessExpiry) <= refreshWindow
}

package ens

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/ens/seal"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/privacy"
	"github.com/ensgate/ensgate/store"
)

type registerRequest struct {
	DeviceID          string         `json:"deviceId"`
	Email             string         `json:"email"`
	Platform          string         `json:"platform"`
	PushToken         string         `json:"pushToken"`
	Topic             string         `json:"topic"`
	EWSURL            string         `json:"ewsUrl"`
	AuthType          string         `json:"authType"`
	KeyID             string         `json:"keyId"`
	Credentials       string         `json:"credentials"`
	NotificationLevel *privacy.Level `json:"notificationLevel"`
	DeviceSecret      string         `json:"deviceSecret"` // needed when the id is already registered
	Source            string         `json:"source"`       // ews (the default) or graph
}

func (req *registerRequest) check() error {
	if err := checkDeviceID(req.DeviceID); err != nil {
		return err
	}
	if err := checkEmail(req.Email); err != nil {
		return err
	}
	switch {
	case req.Platform != string(push.IOS) && req.Platform != string(push.Android):
		return badRequest(`platform: must be "ios" or "android"`)
	case req.PushToken == "" || len(req.PushToken) > 4096:
		return badRequest("pushToken: must be 1 to 4096 characters")
	case req.Platform == string(push.IOS) && !push.ValidAPNsToken(req.PushToken):
		return badRequest("pushToken: an APNs device token is hexadecimal")
	case len(req.Topic) > 255:
		return badRequest("topic: must be at most 255 characters")
	case req.Source != "" && req.Source != store.SourceEWS && req.Source != store.SourceGraph:
		return badRequest(`source: must be "ews" (the default) or "graph"`)
	case req.EWSURL == "" && req.Source != store.SourceGraph:
		return badRequest("ewsUrl: required")
	case req.Source == store.SourceGraph && req.AuthType != authOAuth:
		return badRequest(`authType: graph takes "oauth"`)
	case req.AuthType != authBasic && req.AuthType != authOAuth && req.AuthType != authCert:
		return badRequest(`authType: must be "basic", "oauth" or "cert"`)
	case req.KeyID == "":
		return badRequest("keyId: required (from publickey)")
	case req.Credentials == "":
		return badRequest("credentials: required (a JWE)")
	case req.NotificationLevel == nil || !req.NotificationLevel.Valid():
		return badRequest("notificationLevel: must be %s", privacy.Range)
	case len(req.DeviceSecret) > maxDeviceSecret:
		return badRequest("deviceSecret: must be at most %d characters", maxDeviceSecret)
	}
	return nil
}

// register decrypts the device's credentials, subscribes the mailbox's Inbox
// with them and stores the subscription, superseding the mailbox's previous
// one. The plaintext credentials exist only during this request.
func (s *Service) register(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	err := s.registerDevice(w, r, t)
	result := "active"
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		result = ae.code
	case err != nil:
		result = "internal"
	}
	registrations.WithLabelValues(result).Inc()
	return err
}

func (s *Service) registerDevice(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	var req registerRequest
	if err := decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := req.check(); err != nil {
		return err
	}
	if err := s.limitDevice(w, r, t, req.DeviceID); err != nil {
		return err
	}
	ctx := r.Context()
	// Nothing below runs for a device an admin blocked, wiped or removed.
	if err := s.refuseNonCompliant(ctx, t, req.DeviceID); err != nil {
		return err
	}
	source := cmp.Or(req.Source, store.SourceEWS)
	// The allow-list is checked before anything else is done with the URL.
	row, err := s.sourceEndpoint(ctx, t, source, req.EWSURL)
	if err != nil {
		return err
	}
	mailbox := s.keys.Current.MailboxHash(req.Email)
	owner := store.DeviceOwner{TenantID: t.ID, DeviceID: req.DeviceID, SecretHash: deviceSecretHash(req.DeviceSecret),
		MailboxHashes: append([][]byte{mailbox}, s.keys.AcceptedMailboxHashes(req.Email)...)}
	// Checked here so that another's device id costs no call to Exchange,
	// and again when the registration is stored.
	proven, err := s.store.CheckDeviceOwner(ctx, owner)
	if err != nil {
		return ownerError(err)
	}
	priv, keyPairID, err := s.privateKey(ctx, t, req.DeviceID, req.KeyID)
	if err != nil {
		return err
	}
	creds, err := decryptCredentials(req.Credentials, priv, req.Email, req.AuthType, source)
	if err != nil {
		return err
	}
	if creds.RefreshToken != "" && row.OAuth.ClientID == "" {
		return badRequest("credentials: this endpoint takes no refresh token (its OAuth client is not configured: ensgate ens endpoint add --client-id)")
	}

	publicID, key := randomID(), seal.NewSubscriptionKey()
	remote := store.Subscription{Source: source, StatusFrequency: s.statusMinutes()}
	if source == store.SourceGraph {
		gs, err := s.subscribeGraph(ctx, row, creds, publicID, key)
		if err != nil {
			s.log.Info("registration refused by Graph", slog.String("tenant", t.Name), slog.String("device", req.DeviceID), slog.Any("error", err))
			return graphError(w, err)
		}
		remote.RemoteID, remote.ExpiresAt, remote.StatusFrequency = gs.ID, gs.Expiration, graphStatusMinutes
	} else {
		ep, err := s.endpointFor(row)
		if err != nil {
			return err
		}
		if creds.RefreshToken != "" {
			// Redeemed now, so a token that does not work is refused here,
			// and the mailbox is checked with the access token it gives.
			if err := s.redeem(ctx, row.OAuth, creds); err != nil {
				return graphError(w, err)
			}
		}
		ewsSub, err := s.subscribe(ctx, ep, creds, publicID, key, s.attestation(t.ID, []string{req.DeviceID}))
		if err != nil {
			s.log.Info("registration refused by Exchange", slog.String("tenant", t.Name), slog.String("device", req.DeviceID), slog.Any("error", err))
			return exchangeError(err)
		}
		remote.RemoteID, remote.Watermark = ewsSub.ID, ewsSub.Watermark
	}
	sealed, err := json.Marshal(creds)
	if err != nil {
		return err
	}
	// A device that proved its secret keeps it; any other gets a new one.
	secret := req.DeviceSecret
	if !proven {
		secret = newDeviceSecret()
	}
	superseded, err := s.store.LatestSubscription(ctx, t.ID, mailbox)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	sub, err := s.store.Register(ctx, store.Registration{
		Subscription: store.Subscription{PublicID: publicID, TenantID: t.ID, MailboxHash: mailbox, EndpointID: row.ID,
			AuthType: req.AuthType, SealedCredentials: key.Seal(publicID, sealed), Source: source, RemoteID: remote.RemoteID,
			ExpiresAt: remote.ExpiresAt, Watermark: remote.Watermark, StatusFrequency: remote.StatusFrequency},
		Device: store.Device{TenantID: t.ID, DeviceID: req.DeviceID, MailboxHash: mailbox, Platform: req.Platform,
			PushToken: req.PushToken, Topic: req.Topic, NotificationLevel: *req.NotificationLevel,
			SecretHash: deviceSecretHash(secret)},
		Owner:               owner,
		KeyPairID:           keyPairID,
		FormerMailboxHashes: s.keys.AcceptedMailboxHashes(req.Email),
	})
	if err != nil && source == store.SourceGraph {
		// Not stored: Graph's subscription would call for a week in vain.
		if derr := s.graphClient(row.URL).DeleteSubscription(context.WithoutCancel(ctx), creds.AccessToken, remote.RemoteID); derr != nil {
			s.log.Info("ending the Graph subscription of a failed registration", slog.Any("error", derr))
		}
	}
	if errors.Is(err, store.ErrEndpointRemoved) {
		return errEndpointNotAllowed
	}
	if err != nil {
		return ownerError(err)
	}
	if superseded.State == store.SubscriptionActive && superseded.Source == store.SourceGraph && source == store.SourceGraph {
		// Graph would notify the old subscription until it expires: it is
		// the same user's, so the new token may end it.
		if err := s.graphClient(row.URL).DeleteSubscription(ctx, creds.AccessToken, superseded.RemoteID); err != nil {
			s.log.Info("ending the superseded Graph subscription", slog.String("subscription", superseded.PublicID), slog.Any("error", err))
		}
	}
	s.log.Info("device registered", slog.String("tenant", t.Name), slog.String("device", req.DeviceID),
		slog.String("subscription", sub.PublicID), slog.String("auth", req.AuthType), slog.String("source", source))
	writeJSON(w, http.StatusOK, map[string]string{"status": "active", "subscriptionId": sub.PublicID, "deviceSecret": secret})
	return nil
}

// subscribe checks that the credentials log in to the claimed mailbox
// itself (not as a delegate), then creates the push subscription on its
// Inbox, named explicitly so that Exchange enforces it too, with a callback
// that carries the subscription's id and key. The Inbox's id joins the
// credentials, so that only items in it are ever announced. Both calls
// carry the device's attestation.
func (s *Service) subscribe(ctx context.Context, ep *endpoint, creds *credentials, publicID string, key seal.SubscriptionKey, attestation ews.CallOption) (*ews.Subscription, error) {
	client, done, err := s.ewsClient(ep, creds)
	if err != nil {
		return nil, err
	}
	defer done()
	release, err := ep.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	acct := creds.account()
	inbox, err := client.VerifyMailbox(ctx, acct, attestation)
	if err != nil {
		return nil, err
	}
	creds.InboxID = inbox.ID
	return client.Subscribe(ctx, acct, ews.SubscribeRequest{
		URL: s.callbackURL(publicID, key), StatusFrequency: s.statusMinutes()}, attestation)
}

// sourceEndpoint finds the tenant's allowed endpoint for a registration:
// the EWS URL it names, or for Graph the Graph root it names, or the
// tenant's only one.
func (s *Service) sourceEndpoint(ctx context.Context, t store.Tenant, source, rawURL string) (store.Endpoint, error) {
	if rawURL == "" { // Graph only (check)
		var graphs []store.Endpoint
		all, err := s.store.Endpoints(ctx, t.ID)
		if err != nil {
			return store.Endpoint{}, err
		}
		for _, e := range all {
			if e.Kind == store.KindGraph {
				graphs = append(graphs, e)
			}
		}
		switch len(graphs) {
		case 0:
			return store.Endpoint{}, errGraphNotAllowed
		case 1:
			return graphs[0], nil
		}
		return store.Endpoint{}, badRequest("ewsUrl: this tenant allows several Graph roots; name one")
	}
	if _, err := store.NormalizeEWSURL(rawURL); err != nil {
		return store.Endpoint{}, badRequest("ewsUrl: %v", err)
	}
	row, err := s.store.EndpointFor(ctx, t.ID, rawURL)
	// A source is served by endpoints of its kind (the names agree).
	if errors.Is(err, store.ErrNotFound) || err == nil && row.Kind != source {
		if source == store.SourceGraph {
			return store.Endpoint{}, errGraphNotAllowed
		}
		return store.Endpoint{}, errEndpointNotAllowed
	}
	return row, err
}

package ens

import (
	"crypto"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/store"
)

// Authentication types a device may register with.
const (
	authBasic = "basic"
	authOAuth = "oauth"
	authCert  = "cert"
)

// credentials is what is sealed under the subscription key: everything
// needed to call Exchange for the mailbox, including its address, which is
// stored nowhere else in clear.
type credentials struct {
	Email       string `json:"email"`
	AuthType    string `json:"authType"`
	Username    string `json:"username,omitempty"`
	Password    string `json:"password,omitempty"`
	AccessToken string `json:"accessToken,omitempty"`
	// RefreshToken redeems new access tokens at the endpoint's OAuth
	// authority (tokens.go); it rotates, and is re-sealed each time.
	// AccessExpiry is when AccessToken expires: zero when unknown, and then
	// it is refreshed when refused.
	RefreshToken string    `json:"refreshToken,omitempty"`
	AccessExpiry time.Time `json:"accessExpiry,omitzero"`
	Certificate  []byte    `json:"certificate,omitempty"` // DER
	PrivateKey   []byte    `json:"privateKey,omitempty"`  // PKCS#8 DER
	// InboxID is the mailbox's Inbox as Exchange named it when the
	// subscription was made: only items in it are announced. Empty for
	// subscriptions made before it was recorded.
	InboxID string `json:"inboxId,omitempty"`
	// DeltaLink is where Graph's next delta query over the Inbox starts:
	// the catch-up after a missed notification.
	DeltaLink string `json:"deltaLink,omitempty"`
}

// maxToken bounds an OAuth token from a device (Entra's are a few KB).
const maxToken = 32 << 10

// The JWE algorithms accepted from devices: RSA-OAEP-256, and RSA1_5 for
// legacy apps. go-jose decrypts RSA1_5 with a random substitute key on bad
// padding, so both failures below look alike: no padding oracle.
var (
	jweKeyAlgorithms = []jose.KeyAlgorithm{jose.RSA_OAEP_256, jose.RSA1_5}
	jweEncryptions   = []jose.ContentEncryption{jose.A256GCM}
)

// decryptCredentials opens the device's JWE and checks its content for the
// declared authentication type and mail source.
func decryptCredentials(compact string, key *rsa.PrivateKey, email, authType, source string) (*credentials, error) {
	jwe, err := jose.ParseEncryptedCompact(compact, jweKeyAlgorithms, jweEncryptions)
	if err != nil {
		return nil, badRequest("credentials: not a JWE with alg RSA-OAEP-256 (or RSA1_5) and enc A256GCM")
	}
	plain, err := jwe.Decrypt(key)
	if err != nil {
		return nil, badRequest("credentials: cannot be decrypted with the key keyId names")
	}
	var in struct {
		Username     string `json:"username"`
		Password     string `json:"password"`
		AccessToken  string `json:"accessToken"`
		RefreshToken string `json:"refreshToken"`
		Certificate  string `json:"certificate"`
		PrivateKey   string `json:"privateKey"`
	}
	if err := json.Unmarshal(plain, &in); err != nil {
		return nil, badRequest("credentials: the decrypted content is not a JSON object")
	}
	c := &credentials{Email: email, AuthType: authType}
	switch authType {
	case authBasic:
		if in.Username == "" || in.Password == "" {
			return nil, badRequest(`credentials: basic needs "username" and "password"`)
		}
		c.Username, c.Password = in.Username, in.Password
	case authOAuth:
		if source == store.SourceGraph && in.RefreshToken == "" {
			return nil, badRequest(`credentials: graph needs "refreshToken"`)
		}
		if source != store.SourceGraph && in.AccessToken == "" {
			return nil, badRequest(`credentials: oauth needs "accessToken" (and may add "refreshToken")`)
		}
		if len(in.AccessToken) > maxToken || len(in.RefreshToken) > maxToken {
			return nil, badRequest("credentials: a token is longer than %d characters", maxToken)
		}
		c.AccessToken, c.RefreshToken = in.AccessToken, in.RefreshToken
	case authCert:
		cert, err := base64.StdEncoding.DecodeString(in.Certificate)
		if err != nil || len(cert) == 0 {
			return nil, badRequest(`credentials: cert needs "certificate", base64 of a DER certificate`)
		}
		key, err := base64.StdEncoding.DecodeString(in.PrivateKey)
		if err != nil || len(key) == 0 {
			return nil, badRequest(`credentials: cert needs "privateKey", base64 of a PKCS#8 key`)
		}
		c.Certificate, c.PrivateKey = cert, key
		if _, err := c.tlsCertificate(); err != nil {
			return nil, badRequest("credentials: %v", err)
		}
	}
	return c, nil
}

// tlsCertificate is the client certificate for mutual TLS with Exchange.
func (c *credentials) tlsCertificate() (*tls.Certificate, error) {
	leaf, err := x509.ParseCertificate(c.Certificate)
	if err != nil {
		return nil, errors.New("the certificate is not DER X.509")
	}
	key, err := x509.ParsePKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return nil, errors.New("the private key is not PKCS#8 DER")
	}
	pub, ok := key.(interface{ Public() crypto.PublicKey })
	if !ok {
		return nil, errors.New("unsupported private key type")
	}
	if eq, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !eq.Equal(pub.Public()) {
		return nil, errors.New("the private key does not belong to the certificate")
	}
	return &tls.Certificate{Certificate: [][]byte{c.Certificate}, PrivateKey: key, Leaf: leaf}, nil
}

// account is how EWS calls for this mailbox authenticate.
func (c *credentials) account() ews.Account {
	acct := ews.Account{Mailbox: c.Email}
	switch c.AuthType {
	case authBasic:
		acct.Auth = ews.BasicAuth{Username: c.Username, Password: c.Password}
	case authOAuth:
		acct.Auth = ews.BearerAuth{Token: c.AccessToken}
	}
	return acct
}

// ewsClient returns the client for these credentials: the endpoint's shared
// one, or for a client certificate a client of its own, which done closes so
// that the key leaves no connection behind after the request. The latter
// shares the endpoint's back-off, so an ErrorServerBusy still holds for the
// certificate's next request.
func (s *Service) ewsClient(ep *endpoint, c *credentials) (client *ews.Client, done func(), err error) {
	if c.AuthType != authCert {
		return ep.client, func() {}, nil
	}
	cert, err := c.tlsCertificate()
	if err != nil {
		return nil, nil, err
	}
	cfg := s.ewsConfig(ep.Endpoint, ep.pin)
	cfg.Certificate = cert
	cfg.BackOff = ep.backOff
	client, err = ews.NewClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	return client, client.CloseIdleConnections, nil
}

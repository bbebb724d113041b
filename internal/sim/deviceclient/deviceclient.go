// Package deviceclient is what a mail app does against the device API:
// fetch a key, encrypt its Exchange credentials to it as a JWE, register,
// ask for status, unregister. Tests, benchmarks and the `make run` demo use
// it as the device side.
package deviceclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Client calls the device API at BaseURL (…/api/ens) with a tenant token.
// Like an app, it keeps each registered device's secret and presents it to
// register the device again, ask its status or unregister it.
type Client struct {
	BaseURL string
	Token   string
	HTTP    *http.Client // nil: http.DefaultClient

	mu      sync.Mutex
	secrets map[string]string // device id → deviceSecret
}

// Secret returns the deviceSecret kept for a device id ("" if none).
func (c *Client) Secret(deviceID string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.secrets[deviceID]
}

// SetSecret keeps a device's secret, as an app stores it.
func (c *Client) SetSecret(deviceID, secret string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.secrets == nil {
		c.secrets = map[string]string{}
	}
	c.secrets[deviceID] = secret
}

// Device is a registration: what registerdevicev2 needs besides the key.
type Device struct {
	ID                string            `json:"deviceId"`
	Email             string            `json:"email"`
	Platform          string            `json:"platform"`
	PushToken         string            `json:"pushToken"`
	Topic             string            `json:"topic,omitempty"`
	EWSURL            string            `json:"ewsUrl,omitempty"`
	Source            string            `json:"source,omitempty"` // ews (the default) or graph
	AuthType          string            `json:"authType"`
	NotificationLevel int               `json:"notificationLevel"`
	Credentials       map[string]string `json:"-"` // encrypted into the JWE
	// KeyAlgorithm for the JWE; empty: RSA-OAEP-256.
	KeyAlgorithm jose.KeyAlgorithm `json:"-"`
}

// Error is a device API error answer.
type Error struct {
	Status  int
	Code    string `json:"error"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message) }

// Do sends one request and decodes a JSON answer into out (if not nil). A
// non-2xx answer is returned as *Error.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	if secret := c.Secret(deviceOf(path)); secret != "" && method == http.MethodGet {
		req.Header.Set(SecretHeader, secret)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		apiErr := &Error{Status: resp.StatusCode}
		json.Unmarshal(data, apiErr)
		return apiErr
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

// PublicKey asks for a key pair, retrying while the pool is empty (503).
func (c *Client) PublicKey(ctx context.Context, deviceID, email string) (keyID string, key *jose.JSONWebKey, err error) {
	var answer struct {
		KeyID string          `json:"keyId"`
		JWK   json.RawMessage `json:"jwk"`
	}
	for {
		err = c.Do(ctx, "POST", "/publickey", map[string]string{"deviceId": deviceID, "email": email}, &answer)
		if apiErr, ok := err.(*Error); ok && apiErr.Status == http.StatusServiceUnavailable {
			select {
			case <-ctx.Done():
				return "", nil, err
			case <-time.After(100 * time.Millisecond):
				continue
			}
		}
		if err != nil {
			return "", nil, err
		}
		break
	}
	key = new(jose.JSONWebKey)
	if err := key.UnmarshalJSON(answer.JWK); err != nil {
		return "", nil, fmt.Errorf("publickey answered an unusable JWK: %w", err)
	}
	return answer.KeyID, key, nil
}

// RegisterBody fetches a key and builds the registerdevicev2 body with the
// credentials encrypted to it.
func (c *Client) RegisterBody(ctx context.Context, d Device) (map[string]any, error) {
	keyID, key, err := c.PublicKey(ctx, d.ID, d.Email)
	if err != nil {
		return nil, err
	}
	alg := d.KeyAlgorithm
	if alg == "" {
		alg = jose.RSA_OAEP_256
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: alg, Key: key.Key}, nil)
	if err != nil {
		return nil, err
	}
	plain, err := json.Marshal(d.Credentials)
	if err != nil {
		return nil, err
	}
	jwe, err := enc.Encrypt(plain)
	if err != nil {
		return nil, err
	}
	compact, err := jwe.CompactSerialize()
	if err != nil {
		return nil, err
	}
	fields, _ := json.Marshal(d)
	var body map[string]any
	json.Unmarshal(fields, &body)
	body["keyId"], body["credentials"] = keyID, compact
	if secret := c.Secret(d.ID); secret != "" {
		body["deviceSecret"] = secret
	}
	return body, nil
}

// Register registers the device and returns ENSGate's subscription id.
func (c *Client) Register(ctx context.Context, d Device) (string, error) {
	body, err := c.RegisterBody(ctx, d)
	if err != nil {
		return "", err
	}
	var answer struct {
		Status         string `json:"status"`
		SubscriptionID string `json:"subscriptionId"`
		DeviceSecret   string `json:"deviceSecret"`
	}
	if err := c.Do(ctx, "POST", "/registerdevicev2", body, &answer); err != nil {
		return "", err
	}
	c.SetSecret(d.ID, answer.DeviceSecret)
	return answer.SubscriptionID, nil
}

// SecretHeader carries the deviceSecret on status.
const SecretHeader = "X-Device-Secret"

// Status is the device's status answer, asked with its secret.
type Status struct {
	Registered   bool   `json:"registered"`
	Subscription string `json:"subscription"`
	Resubscribe  bool   `json:"resubscribe"`
}

// Status asks whether the device is registered and should register again.
func (c *Client) Status(ctx context.Context, deviceID string) (Status, error) {
	var st Status
	err := c.Do(ctx, "GET", "/status?"+url.Values{"deviceId": {deviceID}}.Encode(), nil, &st)
	return st, err
}

// Unregister ends the device's registration, with its secret.
func (c *Client) Unregister(ctx context.Context, deviceID string) error {
	return c.Do(ctx, "POST", "/unregister", map[string]string{"deviceId": deviceID, "deviceSecret": c.Secret(deviceID)}, nil)
}

// deviceOf is the deviceId query parameter of a path, if any.
func deviceOf(path string) string {
	_, query, _ := strings.Cut(path, "?")
	v, _ := url.ParseQuery(query)
	return v.Get("deviceId")
}

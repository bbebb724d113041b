package push

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"
)

// ClientConfig tunes the HTTPS client of a sender. Zero fields take the
// defaults shown.
type ClientConfig struct {
	// RequestTimeout bounds one request, well under apns2's 60 s so that a
	// stuck stream is retried instead of holding a slot (10s).
	RequestTimeout time.Duration
	// MaxInFlight caps concurrent requests per sender; further sends wait
	// (256).
	MaxInFlight int
	// ExtraRoots are trusted besides the system roots (which honour
	// SSL_CERT_FILE and SSL_CERT_DIR); for tests and private gateways.
	ExtraRoots []*x509.Certificate
}

// Connection settings of every sender.
const (
	// dialTimeout bounds the TCP connect and the TLS handshake.
	dialTimeout = 10 * time.Second
	// idleConnTimeout closes a connection unused this long. Apple asks
	// providers to keep connections open rather than reconnect often.
	idleConnTimeout = 15 * time.Minute
	// pingInterval: an HTTP/2 PING is sent when nothing was read for this
	// long, so a connection silently dropped by a middlebox is noticed;
	// pingTimeout closes a connection whose PING is not answered.
	pingInterval = 15 * time.Second
	pingTimeout  = 5 * time.Second
)

// validate reports negative settings; sender names the config (apns, fcm).
func (c ClientConfig) validate(sender string) []error {
	var errs []error
	if c.RequestTimeout < 0 {
		errs = append(errs, fmt.Errorf("%s.client.request_timeout %s must not be negative (0: 10s)", sender, c.RequestTimeout))
	}
	if c.MaxInFlight < 0 {
		errs = append(errs, fmt.Errorf("%s.client.max_in_flight %d must not be negative (0: 256)", sender, c.MaxInFlight))
	}
	return errs
}

func (c ClientConfig) withDefaults() ClientConfig {
	c.RequestTimeout = cmp.Or(c.RequestTimeout, 10*time.Second)
	c.MaxInFlight = cmp.Or(c.MaxInFlight, 256)
	return c
}

// isHTTPSURL reports whether raw is an absolute https:// URL.
func isHTTPSURL(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && u.Scheme == "https" && u.Host != ""
}

// httpClient builds the client of one sender. h2Only is for APNs, which
// speaks nothing else.
func (c ClientConfig) httpClient(h2Only bool, certs []tls.Certificate) *http.Client {
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool() // no system roots: only ExtraRoots
	}
	for _, cert := range c.ExtraRoots {
		roots.AddCert(cert)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP2(true)
	if !h2Only {
		protocols.SetHTTP1(true)
	}
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: dialTimeout,
		IdleConnTimeout:     idleConnTimeout,
		Protocols:           protocols,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: pingInterval,
			PingTimeout:     pingTimeout,
		},
	}
	// The client timeout is a backstop; each request also gets a context
	// deadline of RequestTimeout.
	return &http.Client{Transport: t, Timeout: c.RequestTimeout + time.Second}
}

// slots is a counting semaphore capping requests in flight.
type slots chan struct{}

func (s slots) acquire(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s slots) release() { <-s }

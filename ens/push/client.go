package push

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"time"
)

// ClientConfig tunes the HTTPS client of a sender. Zero fields take the
// defaults shown.
type ClientConfig struct {
	// RequestTimeout bounds one request, well under apns2's 60 s so that a
	// stuck stream is retried instead of holding a slot (10s).
	RequestTimeout time.Duration
	// DialTimeout bounds the TCP connect and the TLS handshake (10s).
	DialTimeout time.Duration
	// IdleConnTimeout closes a connection unused this long (15m). Apple asks
	// providers to keep connections open rather than reconnect often.
	IdleConnTimeout time.Duration
	// PingInterval: an HTTP/2 PING is sent when nothing was read for this
	// long, so a connection silently dropped by a middlebox is noticed (15s).
	PingInterval time.Duration
	// PingTimeout closes a connection whose PING is not answered (5s).
	PingTimeout time.Duration
	// MaxInFlight caps concurrent requests per sender; further sends wait
	// (256).
	MaxInFlight int
	// ExtraRoots are trusted besides the system roots (which honour
	// SSL_CERT_FILE and SSL_CERT_DIR); for tests and private gateways.
	ExtraRoots []*x509.Certificate
}

func (c ClientConfig) withDefaults() ClientConfig {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.RequestTimeout, 10*time.Second)
	def(&c.DialTimeout, 10*time.Second)
	def(&c.IdleConnTimeout, 15*time.Minute)
	def(&c.PingInterval, 15*time.Second)
	def(&c.PingTimeout, 5*time.Second)
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 256
	}
	return c
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
	dialer := &net.Dialer{Timeout: c.DialTimeout, KeepAlive: 30 * time.Second}
	t := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: c.DialTimeout,
		IdleConnTimeout:     c.IdleConnTimeout,
		Protocols:           protocols,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: c.PingInterval,
			PingTimeout:     c.PingTimeout,
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

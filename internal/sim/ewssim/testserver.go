package ewssim

import (
	cryptotls "crypto/tls"
	"net/http"
	"net/http/httptest"
)

// TB is what Start needs of a test; testing.TB has it. The simulator also
// ships as cmd/ewssim, which must not link the testing package.
type TB interface {
	Helper()
	Cleanup(func())
}

// TestServer is a simulator listening on a loopback port.
type TestServer struct {
	*Server
	URL    string // base URL, e.g. http://127.0.0.1:41234
	EWSURL string // URL + EWSPath
	http   *httptest.Server
}

// Start runs a simulator over plain HTTP on a loopback port and closes it
// when the test ends.
func Start(t TB, cfg Config) *TestServer {
	return start(t, cfg, false)
}

// StartTLS is Start over HTTPS with httptest's certificate; use Client to
// talk to it.
func StartTLS(t TB, cfg Config) *TestServer {
	return start(t, cfg, true)
}

func start(t TB, cfg Config, tls bool) *TestServer {
	t.Helper()
	s := New(cfg)
	hs := httptest.NewUnstartedServer(s)
	hs.Config.ConnContext = ConnContext
	if tls {
		if cfg.ClientCAs != nil {
			hs.TLS = &cryptotls.Config{ClientAuth: cryptotls.VerifyClientCertIfGiven, ClientCAs: cfg.ClientCAs}
		}
		hs.StartTLS()
	} else {
		hs.Start()
	}
	ts := &TestServer{Server: s, URL: hs.URL, EWSURL: hs.URL + EWSPath, http: hs}
	t.Cleanup(ts.Close)
	return ts
}

// Client returns an HTTP client that trusts the server's certificate.
func (ts *TestServer) Client() *http.Client { return ts.http.Client() }

// Close stops deliveries and then the listener. It may be called more
// than once.
func (ts *TestServer) Close() {
	ts.Server.Close()
	ts.http.Close()
}

package graphsim

import (
	"net/http"
	"net/http/httptest"
)

// TB is what Start needs of a test; testing.TB has it (the package does
// not link the testing package, so it can ship in a binary).
type TB interface {
	Helper()
	Cleanup(func())
}

// TestServer is a simulator listening on a loopback port.
type TestServer struct {
	*Server
	URL       string // base URL, e.g. http://127.0.0.1:41234
	GraphURL  string // URL + "/v1.0"
	Authority string // URL + "/" + tenant id: the token endpoint is Authority + "/oauth2/v2.0/token"
	TokenURL  string
	http      *httptest.Server
}

// Start runs a simulator over plain HTTP on a loopback port and closes it
// when the test ends.
func Start(t TB, cfg Config) *TestServer { return start(t, cfg, false) }

// StartTLS is Start over HTTPS with httptest's certificate; use Client to
// talk to it.
func StartTLS(t TB, cfg Config) *TestServer { return start(t, cfg, true) }

func start(t TB, cfg Config, tls bool) *TestServer {
	t.Helper()
	s := New(cfg)
	hs := httptest.NewUnstartedServer(s)
	if tls {
		hs.StartTLS()
	} else {
		hs.Start()
	}
	ts := &TestServer{Server: s, URL: hs.URL, GraphURL: hs.URL + "/v1.0", Authority: hs.URL + "/" + s.tenant, http: hs}
	ts.TokenURL = ts.Authority + "/oauth2/v2.0/token"
	t.Cleanup(ts.Close)
	return ts
}

// Client returns an HTTP client that trusts the server's certificate.
func (ts *TestServer) Client() *http.Client { return ts.http.Client() }

// Close stops the simulator and then the listener; it may be called more
// than once.
func (ts *TestServer) Close() {
	ts.Server.Close()
	ts.http.Close()
}

package ewsproxy_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/ewsproxy"
)

// BenchmarkGuard is the proxy's own work per request (operation peek,
// compliance, auth-header policy), without the reverse proxy.
func BenchmarkGuard(b *testing.B) {
	g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, RemoveUnsupportedAuth: true}, nil, quiet)
	forward := func(w http.ResponseWriter, r *http.Request, _ bool) error {
		io.Copy(io.Discard, r.Body)
		w.Header().Add("WWW-Authenticate", "NTLM")
		w.Header().Add("WWW-Authenticate", `Basic realm="x"`)
		w.WriteHeader(http.StatusOK)
		return nil
	}
	for b.Loop() {
		r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
		r.Header.Set("Authorization", "Basic Y2xpZW50")
		if err := g.Serve(httptest.NewRecorder(), r, forward); err != nil {
			b.Fatal(err)
		}
	}
}

package ewsproxy_test

import (
	"bytes"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/ewsproxy"
)

// FuzzGuard feeds the guard what clients and Exchange control: a Negotiate
// token, a challenge list and a request target. It must never panic,
// never forward a bare NTLMSSP token, never forward a path outside /EWS/
// or with a dot segment or a backslash, and only ever shorten challenges.
func FuzzGuard(f *testing.F) {
	ntlm, _ := base64.StdEncoding.DecodeString("TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==")
	f.Add(ntlm, `Basic realm="x", NTLM`, "/EWS/Exchange.asmx")
	f.Add([]byte{0x60, 0x80, 0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02, 0xa0, 0x00}, `Negotiate, NTLM, Basic realm="x"`, "/EWS/..%5cowa")
	f.Add([]byte{0xa1, 0x05, 0x30, 0x03, 0xa0, 0x01, 0x01}, "NTLM\tabc", "/EWS/%2e%2e/owa/")
	f.Add([]byte{}, `Bearer a="b\"c", d=e`, "/ews/a%2fb")
	g := ewsproxy.NewGuard(ewsproxy.Config{AllowUnknown: true, RemoveUnsupportedAuth: true}, nil, quiet)
	f.Fuzz(func(t *testing.T, token []byte, challenge, target string) {
		u, err := url.Parse(target)
		if err != nil {
			return
		}
		r := httptest.NewRequest("POST", "/EWS/Exchange.asmx", strings.NewReader(getItem))
		r.URL = u
		r.Header.Set("Authorization", "Negotiate "+base64.RawURLEncoding.EncodeToString(token))
		var forwarded *http.Request
		w := httptest.NewRecorder()
		g.Serve(w, r, func(w http.ResponseWriter, r *http.Request, _ bool) error {
			forwarded = r
			w.Header().Set("WWW-Authenticate", challenge)
			w.WriteHeader(http.StatusUnauthorized)
			return nil
		})
		if forwarded == nil {
			return
		}
		if bytes.HasPrefix(token, []byte("NTLMSSP\x00")) {
			t.Fatal("an NTLMSSP token was forwarded")
		}
		p := forwarded.URL.Path
		if lower := strings.ToLower(p); (lower != "/ews" && !strings.HasPrefix(lower, "/ews/")) ||
			strings.Contains(p, `\`) || strings.Contains(p+"/", "/../") || strings.Contains(p+"/", "/./") {
			t.Fatalf("forwarded path %q", p)
		}
		for _, v := range w.Header().Values("WWW-Authenticate") {
			if v == "" || len(v) > len(challenge) {
				t.Fatalf("challenge %q became %q", challenge, v)
			}
		}
	})
}

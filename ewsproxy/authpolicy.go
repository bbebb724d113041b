package ewsproxy

import (
	"encoding/base64"
	"net/http"
	"strings"
)

// unsupportedChallenge reports whether a WWW-Authenticate value offers a
// scheme that clients behind the proxy cannot complete: NTLM is bound to
// one connection, which a proxy that pools upstream connections breaks;
// Negotiate needs a Kerberos ticket for Exchange that remote devices
// cannot get, unless the proxy does Kerberos for them (KCD).
func unsupportedChallenge(value string, kerberos bool) bool {
	scheme, _, _ := strings.Cut(strings.TrimSpace(value), " ")
	switch strings.ToLower(scheme) {
	case "ntlm":
		return true
	case "negotiate":
		return !kerberos
	}
	return false
}

// isNTLM reports whether an Authorization header carries NTLM, bare or
// wrapped in Negotiate (an NTLMSSP token instead of a Kerberos one).
func isNTLM(authorization string) bool {
	scheme, cred, _ := strings.Cut(strings.TrimSpace(authorization), " ")
	switch strings.ToLower(scheme) {
	case "ntlm":
		return true
	case "negotiate":
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
		return err == nil && strings.HasPrefix(string(raw), "NTLMSSP\x00")
	}
	return false
}

// isNegotiate tells an Authorization header of the Negotiate scheme.
func isNegotiate(authorization string) bool {
	scheme, _, _ := strings.Cut(strings.TrimSpace(authorization), " ")
	return strings.EqualFold(scheme, "negotiate")
}

// challengeFilter removes unsupported challenges from the upstream's
// response headers just before they are written. Caddy's header_down
// cannot remove single values of a repeated header.
type challengeFilter struct {
	http.ResponseWriter
	kerberos    bool
	wroteHeader bool
}

func (f *challengeFilter) WriteHeader(status int) {
	if !f.wroteHeader {
		f.wroteHeader = true
		h := f.Header()
		if values := h.Values("WWW-Authenticate"); len(values) > 0 {
			kept := values[:0:0]
			for _, v := range values {
				if !unsupportedChallenge(v, f.kerberos) {
					kept = append(kept, v)
				}
			}
			h.Del("WWW-Authenticate")
			for _, v := range kept {
				h.Add("WWW-Authenticate", v)
			}
		}
	}
	f.ResponseWriter.WriteHeader(status)
}

func (f *challengeFilter) Write(b []byte) (int, error) {
	if !f.wroteHeader {
		f.WriteHeader(http.StatusOK)
	}
	return f.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and the rest, so
// streamed responses still stream.
func (f *challengeFilter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

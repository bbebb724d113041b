package ewsproxy

import (
	"net/http"
	"strings"
)

// unsupportedScheme reports whether clients behind the proxy cannot
// complete an authentication scheme: NTLM is bound to one connection,
// which a proxy that pools upstream connections breaks; Negotiate needs a
// Kerberos ticket for Exchange that remote devices cannot get, unless the
// proxy does Kerberos for them (KCD). Schemes are case-insensitive
// (RFC 7235 §2.1).
func unsupportedScheme(scheme string, kerberos bool) bool {
	switch {
	case strings.EqualFold(scheme, "NTLM"):
		return true
	case strings.EqualFold(scheme, "Negotiate"):
		return !kerberos
	}
	return false
}

// filterChallenges returns a WWW-Authenticate value without its
// unsupported challenges, wherever they stand in the list; "" if none is
// left. A value that is not a valid challenge list (RFC 7235 §4.1) is
// dropped whole: what cannot be parsed cannot be shown to hold no NTLM.
func filterChallenges(value string, kerberos bool) string {
	challenges, ok := parseChallenges(value)
	if !ok {
		return ""
	}
	var kept []string
	for _, c := range challenges {
		if !unsupportedScheme(c.scheme, kerberos) {
			kept = append(kept, c.text)
		}
	}
	if len(kept) == len(challenges) {
		return value // untouched, byte for byte
	}
	return strings.Join(kept, ", ")
}

// challenge is one challenge of a WWW-Authenticate list: its scheme and its
// text as sent (scheme and parameters).
type challenge struct {
	scheme, text string
}

// parseChallenges splits a WWW-Authenticate value into its challenges:
//
//	WWW-Authenticate = 1#challenge
//	challenge  = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//	auth-param = token BWS "=" BWS ( token / quoted-string )
//
// A list element of the form `token BWS "="` adds a parameter to the
// current challenge; any other element starts a new challenge. Tabs count
// as whitespace, and empty list elements are skipped (RFC 7230 §7).
func parseChallenges(s string) ([]challenge, bool) {
	var out []challenge
	start := 0 // where the current challenge's text begins
	sc := &scanner{s: s}
	for {
		sc.skipSpace()
		if sc.done() {
			return out, len(out) > 0
		}
		if sc.peek() == ',' {
			sc.i++
			continue
		}
		elem := sc.i
		name := sc.token()
		if name == "" {
			return nil, false
		}
		afterName := sc.i
		sc.skipSpace()
		if !sc.done() && sc.peek() == '=' {
			// An auth-param of the current challenge.
			if len(out) == 0 || !sc.paramValue() {
				return nil, false
			}
		} else {
			start = elem
			out = append(out, challenge{scheme: name})
			if sc.i > afterName && !sc.done() && sc.peek() != ',' && !sc.token68OrParam() {
				return nil, false
			}
		}
		out[len(out)-1].text = strings.TrimRight(s[start:sc.i], " \t")
		sc.skipSpace()
		if !sc.done() && sc.peek() != ',' {
			return nil, false
		}
	}
}

// scanner reads RFC 7230/7235 syntax from s.
type scanner struct {
	s string
	i int
}

func (sc *scanner) done() bool { return sc.i >= len(sc.s) }
func (sc *scanner) peek() byte { return sc.s[sc.i] }

func (sc *scanner) skipSpace() {
	for !sc.done() && (sc.peek() == ' ' || sc.peek() == '\t') {
		sc.i++
	}
}

// token reads 1*tchar, or returns "".
func (sc *scanner) token() string {
	start := sc.i
	for !sc.done() && isTchar(sc.peek()) {
		sc.i++
	}
	return sc.s[start:sc.i]
}

// paramValue reads `"=" BWS ( token / quoted-string )`.
func (sc *scanner) paramValue() bool {
	sc.i++ // "="
	sc.skipSpace()
	if sc.done() {
		return false
	}
	if sc.peek() == '"' {
		return sc.quoted()
	}
	return sc.token() != ""
}

// quoted reads a quoted-string with its backslash escapes.
func (sc *scanner) quoted() bool {
	for sc.i++; !sc.done(); sc.i++ {
		switch sc.peek() {
		case '\\':
			sc.i++
		case '"':
			sc.i++
			return true
		}
	}
	return false
}

// token68OrParam reads what follows a scheme: a token68 or a first
// auth-param.
func (sc *scanner) token68OrParam() bool {
	start := sc.i
	if name := sc.token(); name != "" {
		save := sc.i
		sc.skipSpace()
		if !sc.done() && sc.peek() == '=' {
			// Either `name=value` or a token68 ending in padding.
			sc.i = save
			for !sc.done() && sc.peek() == '=' {
				sc.i++
			}
			if end := sc.i; isToken68(sc.s[start:end]) && sc.atElementEnd() {
				return true
			}
			sc.i = save
			sc.skipSpace()
			return sc.paramValue()
		}
		sc.i = save
	}
	// A token68 that is not also a token (it holds '/').
	sc.i = start
	for !sc.done() && isToken68Char(sc.peek()) {
		sc.i++
	}
	for !sc.done() && sc.peek() == '=' {
		sc.i++
	}
	return sc.i > start && sc.atElementEnd()
}

// atElementEnd tells whether only whitespace lies before the next comma or
// the end.
func (sc *scanner) atElementEnd() bool {
	j := sc.i
	for j < len(sc.s) && (sc.s[j] == ' ' || sc.s[j] == '\t') {
		j++
	}
	return j == len(sc.s) || sc.s[j] == ','
}

func isToken68(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		if !isToken68Char(body[i]) {
			return false
		}
	}
	return true
}

func isToken68Char(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'
}

// isTchar: RFC 7230 §3.2.6.
func isTchar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// authScheme returns the scheme of an Authorization value: its first
// token, ended by a space or a tab.
func authScheme(authorization string) (scheme, credentials string) {
	v := strings.TrimLeft(authorization, " \t")
	i := strings.IndexAny(v, " \t")
	if i < 0 {
		return v, ""
	}
	return v[:i], strings.Trim(v[i:], " \t")
}

// isNTLM reports whether any of the request's Authorization headers
// carries NTLM: bare, in any case and spacing, or inside Negotiate (see
// negotiateIsNTLM).
func isNTLM(h http.Header) bool {
	for _, v := range h.Values("Authorization") {
		scheme, cred := authScheme(v)
		switch {
		case strings.EqualFold(scheme, "NTLM"):
			return true
		case strings.EqualFold(scheme, "Negotiate") && negotiateIsNTLM(cred):
			return true
		}
	}
	return false
}

// isNegotiate tells a request that authenticates with the Negotiate
// scheme.
func isNegotiate(h http.Header) bool {
	for _, v := range h.Values("Authorization") {
		if scheme, _ := authScheme(v); strings.EqualFold(scheme, "Negotiate") {
			return true
		}
	}
	return false
}

// responseWriter notes whether the response has begun and, with filter,
// removes unsupported challenges from the upstream's response headers just
// before they are written. Caddy's header_down cannot remove single values
// of a repeated header, let alone single challenges of one value.
type responseWriter struct {
	http.ResponseWriter
	filter, kerberos bool
	wroteHeader      bool
}

func (f *responseWriter) WriteHeader(status int) {
	if !f.wroteHeader && f.filter {
		h := f.Header()
		if values := h.Values("WWW-Authenticate"); len(values) > 0 {
			h.Del("WWW-Authenticate")
			for _, v := range values {
				if v = filterChallenges(v, f.kerberos); v != "" {
					h.Add("WWW-Authenticate", v)
				}
			}
		}
	}
	// 1xx responses are not the response yet.
	f.wroteHeader = f.wroteHeader || status >= 200
	f.ResponseWriter.WriteHeader(status)
}

func (f *responseWriter) Write(b []byte) (int, error) {
	if !f.wroteHeader {
		f.WriteHeader(http.StatusOK)
	}
	return f.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and the rest, so
// streamed responses still stream.
func (f *responseWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

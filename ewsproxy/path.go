package ewsproxy

import (
	"net/url"
	"strings"
)

// errBadPath explains, to the client and the log, why a path was refused.
type errBadPath string

func (e errBadPath) Error() string { return string(e) }

// cleanPath decodes a request's path once and checks that it names
// something under /EWS (any case) and nothing else, as IIS would read it:
// IIS turns '\' into '/', resolves "." and ".." segments, and Windows
// drops a segment's trailing dots and spaces, so "/EWS/..%5cowa" is OWA.
// Refused: '\' raw or encoded, an encoded '/' or '%' (double encoding), a
// segment of only dots and spaces, ';', control characters, anything outside
// ASCII (Windows' best-fit mapping turns some characters, such as the
// fullwidth solidus, into path syntax; EWS paths are ASCII), and any path
// that does not start with /EWS/. It returns the decoded path, which is
// the one forwarded.
func cleanPath(u *url.URL) (string, error) {
	escaped := u.EscapedPath()
	var b strings.Builder
	for i := 0; i < len(escaped); i++ {
		c := escaped[i]
		if c == '%' {
			if i+2 >= len(escaped) {
				return "", errBadPath("malformed percent-encoding")
			}
			v, err := url.PathUnescape(escaped[i : i+3])
			if err != nil {
				return "", errBadPath("malformed percent-encoding")
			}
			switch v[0] {
			case '/':
				return "", errBadPath("an encoded slash (%2F)")
			case '%':
				return "", errBadPath("a double-encoded character (%25)")
			}
			c = v[0]
			i += 2
		}
		switch {
		case c == '\\':
			return "", errBadPath(`a backslash`)
		case c < 0x20 || c == 0x7f:
			return "", errBadPath("a control character")
		case c >= 0x80:
			return "", errBadPath("a character outside ASCII")
		case c == ';':
			// Path parameters: EWS has none, and servers and filters
			// behind the proxy disagree on them ("/EWS/..;/owa").
			return "", errBadPath("a ';'")
		}
		b.WriteByte(c)
	}
	p := b.String()
	for _, seg := range strings.Split(p, "/") {
		if seg != "" && strings.Trim(seg, ". ") == "" {
			return "", errBadPath(`a "." or ".." segment`)
		}
	}
	if lower := strings.ToLower(p); lower != "/ews" && !strings.HasPrefix(lower, "/ews/") {
		return "", errBadPath("a path outside /EWS/")
	}
	return p, nil
}

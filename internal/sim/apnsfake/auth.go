package apnsfake

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v4"
)

// oidUID is the subject attribute in which Apple's push certificates carry
// the app's bundle id (the topic).
var oidUID = asn1.ObjectIdentifier{0, 9, 2342, 19200300, 100, 1, 1}

// authenticate checks the client certificate or the provider token, as
// APNs does, and returns 403 with Apple's reason when neither is good.
func (s *Server) authenticate(r *http.Request, p *Push) (status int, reason string) {
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		p.Auth = "certificate"
		topic := certTopic(r.TLS.VerifiedChains[0][0].Subject)
		if p.Topic == "" {
			p.Topic = topic // with a certificate the topic is optional
		}
		if p.Topic != topic {
			return http.StatusBadRequest, "TopicDisallowed"
		}
		return 0, ""
	}
	p.Auth = "token"
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "bearer ")
	if !ok || bearer == "" {
		return http.StatusForbidden, "MissingProviderToken"
	}
	p.Bearer = bearer
	// Like APNs, verify a provider token once, not on every push; it is
	// still checked for age and for being expired by the test.
	s.mu.Lock()
	seen, known := s.bearers[bearer]
	s.mu.Unlock()
	if !known {
		kid, iat, err := s.verify(bearer)
		p.KeyID = kid
		if err != nil {
			return http.StatusForbidden, "InvalidProviderToken"
		}
		seen = providerToken{kid: kid, issued: iat}
		s.mu.Lock()
		s.bearers[bearer] = seen
		s.mu.Unlock()
	}
	p.KeyID = seen.kid
	if seen.expired || time.Since(seen.issued) > time.Hour {
		return http.StatusForbidden, "ExpiredProviderToken"
	}
	return 0, ""
}

// providerToken is a verified provider token.
type providerToken struct {
	kid     string
	issued  time.Time
	expired bool // by ExpireProviderTokens
}

// verify checks an ES256 provider token: a known kid, a valid signature,
// iss = the key's team, and an iat not in the future.
func (s *Server) verify(bearer string) (kid string, iat time.Time, err error) {
	var claims jwt.MapClaims
	var key *Key
	_, err = jwt.ParseWithClaims(bearer, &claims, func(t *jwt.Token) (any, error) {
		kid, _ = t.Header["kid"].(string)
		if key = s.keys[kid]; key == nil {
			return nil, errors.New("unknown kid")
		}
		return &key.private.PublicKey, nil
	}, jwt.WithValidMethods([]string{"ES256"}), jwt.WithoutClaimsValidation())
	if err != nil {
		return kid, iat, err
	}
	if iss, _ := claims["iss"].(string); iss != key.TeamID {
		return kid, iat, errors.New("iss is not the key's team")
	}
	n, ok := claims["iat"].(float64)
	if !ok {
		return kid, iat, errors.New("no iat")
	}
	iat = time.Unix(int64(n), 0)
	if time.Until(iat) > time.Minute {
		return kid, iat, errors.New("iat in the future")
	}
	return kid, iat, nil
}

func certTopic(subject pkix.Name) string {
	for _, n := range subject.Names {
		if n.Type.Equal(oidUID) {
			if v, ok := n.Value.(string); ok {
				return v
			}
		}
	}
	return ""
}

package fcmfake

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v4"
)

// Scope is the OAuth 2 scope FCM HTTP v1 requires.
const Scope = "https://www.googleapis.com/auth/firebase.messaging"

// Credentials is the service account's JSON key, as the Google Cloud
// console hands it out; token_uri points at this server.
func (s *Server) Credentials() []byte {
	der, _ := x509.MarshalPKCS8PrivateKey(s.key) // cannot fail for an RSA key
	b, _ := json.MarshalIndent(map[string]string{
		"type":                        "service_account",
		"project_id":                  s.project,
		"private_key_id":              s.keyID,
		"private_key":                 string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})),
		"client_email":                s.email,
		"client_id":                   "100000000000000000001",
		"auth_uri":                    "https://accounts.google.com/o/oauth2/auth",
		"token_uri":                   s.URL + "/token",
		"auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
	}, "", "  ")
	return b
}

// WriteCredentials writes Credentials to dir/fcm-service-account.json.
func (s *Server) WriteCredentials(dir string) (path string, err error) {
	path = filepath.Join(dir, "fcm-service-account.json")
	return path, os.WriteFile(path, s.Credentials(), 0o600)
}

// token is the OAuth 2 token endpoint for the JWT bearer grant (RFC 7523)
// as Google runs it for service accounts.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, "invalid_request", "bad form")
		return
	}
	if r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
		oauthError(w, "unsupported_grant_type", "Invalid grant_type")
		return
	}
	if err := s.verifyAssertion(r.PostForm.Get("assertion")); err != nil {
		oauthError(w, "invalid_grant", err.Error())
		return
	}
	ttl := s.cfg.TokenTTL
	if ttl <= 0 {
		ttl = time.Hour
	}
	tok := "ya29.fake-" + rand.Text()
	s.mu.Lock()
	s.tokens[tok] = time.Now().Add(ttl)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": tok, "token_type": "Bearer", "expires_in": int(ttl / time.Second),
	})
}

// verifyAssertion checks the service account's signed JWT: RS256 by our
// key (kid = private_key_id), iss = the account, aud = this endpoint, the
// FCM scope, and a lifetime of at most an hour that includes now.
func (s *Server) verifyAssertion(assertion string) error {
	var claims jwt.MapClaims
	_, err := jwt.ParseWithClaims(assertion, &claims, func(t *jwt.Token) (any, error) {
		if kid, _ := t.Header["kid"].(string); kid != s.keyID {
			return nil, errors.New("unknown key id")
		}
		return &s.key.PublicKey, nil
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithoutClaimsValidation())
	if err != nil {
		return errors.New("invalid JWT signature")
	}
	iat, _ := claims["iat"].(float64)
	exp, _ := claims["exp"].(float64)
	now := float64(time.Now().Unix())
	switch {
	case claims["iss"] != s.email:
		return errors.New("invalid JWT: iss is not the service account")
	case claims["aud"] != s.URL+"/token":
		return errors.New("invalid JWT: aud is not the token endpoint")
	case !strings.Contains(" "+asString(claims["scope"])+" ", " "+Scope+" "):
		return errors.New("invalid JWT: the scope lacks firebase.messaging")
	case iat == 0 || exp == 0 || exp-iat > 3600 || iat > now+60 || exp < now:
		return errors.New("invalid JWT: token must be a short-lived token (60 minutes) and in a reasonable timeframe")
	}
	return nil
}

func asString(v any) string {
	s, _ := v.(string)
	return s
}

// oauthError writes an RFC 6749 error, as Google's token endpoint does.
func oauthError(w http.ResponseWriter, code, description string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": description})
}

// authorized reports whether r carries a live access token we issued.
func (s *Server) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	exp, ok := s.tokens[tok]
	return ok && time.Now().Before(exp)
}

package graphsim

import (
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The token endpoint follows the Microsoft identity platform's
// v2-oauth2-auth-code-flow.md ("Refresh the access token") and
// refresh-tokens.md:
//
//   - POST /{tenant}/oauth2/v2.0/token, form-encoded, grant_type
//     refresh_token, client_id, refresh_token, scope (optional; must be
//     within what was granted). A public client: no secret.
//   - The answer: token_type Bearer, scope, expires_in, ext_expires_in,
//     access_token and a new refresh_token each time.
//   - "The Microsoft identity platform doesn't revoke old refresh tokens
//     when used to fetch new access tokens": the old one stays valid (until
//     its lifetime ends or the user's tokens are revoked) unless
//     Config.StrictRefreshRotation is set.
//   - Errors are 400 with {error, error_description ("AADSTSnnnn: ..."),
//     error_codes, timestamp, trace_id, correlation_id}.

// refreshToken is one issued refresh token.
type refreshToken struct {
	user    *mailbox
	client  string
	scopes  []string // granted, lower case, without the resource prefix
	issued  time.Time
	expires time.Time
	used    bool
	revoked bool
}

// accessToken is one issued access token.
type accessToken struct {
	user    *mailbox
	client  string
	scopes  []string
	expires time.Time
}

// DefaultScopes are what MintRefreshToken grants when given none.
var DefaultScopes = []string{"Mail.Read", "User.Read", "offline_access"}

// normScope lower-cases a scope and drops the Graph resource prefix; any
// resource's .default (EWS's https://outlook.office365.com/.default too)
// is the consented permissions, as Entra has it.
func normScope(sc string) string {
	sc = strings.ToLower(sc)
	if strings.HasSuffix(sc, "/.default") {
		return ".default"
	}
	for _, p := range []string{"https://graph.microsoft.com/", "https://graph.microsoft.us/", "https://microsoftgraph.chinacloudapi.cn/"} {
		sc = strings.TrimPrefix(sc, p)
	}
	return sc
}

func normScopes(in []string) []string {
	var out []string
	for _, sc := range in {
		if sc = normScope(sc); sc != "" && !slices.Contains(out, sc) {
			out = append(out, sc)
		}
	}
	return out
}

// MintRefreshToken issues a refresh token for the user and client, as the
// mail app would hold after the user signed in with the authorization code
// flow. Scopes default to DefaultScopes.
func (s *Server) MintRefreshToken(address, clientID string, scopes ...string) (string, error) {
	if len(scopes) == 0 {
		scopes = DefaultScopes
	}
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return "", ErrNoSuchUser
	}
	if !s.clients[strings.ToLower(clientID)] {
		return "", ErrUnknownClient
	}
	return s.issueRefreshLocked(m, strings.ToLower(clientID), normScopes(scopes), now), nil
}

func (s *Server) issueRefreshLocked(m *mailbox, client string, scopes []string, now time.Time) string {
	tok := "0.AXsim-rt." + randomID(48)
	s.refresh[tok] = &refreshToken{user: m, client: client, scopes: scopes, issued: now, expires: now.Add(s.cfg.RefreshTokenLifetime)}
	return tok
}

// MintAccessToken issues an access token directly (as a registration might
// carry one beside its refresh token).
func (s *Server) MintAccessToken(address, clientID string, scopes ...string) (string, time.Time, error) {
	if len(scopes) == 0 {
		scopes = DefaultScopes
	}
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return "", time.Time{}, ErrNoSuchUser
	}
	if !s.clients[strings.ToLower(clientID)] {
		return "", time.Time{}, ErrUnknownClient
	}
	tok, exp := s.issueAccessLocked(m, strings.ToLower(clientID), normScopes(scopes), now)
	return tok, exp, nil
}

func (s *Server) issueAccessLocked(m *mailbox, client string, scopes []string, now time.Time) (string, time.Time) {
	tok := "eyJ0eXAiOiJKV1QiLCJzaW0iOnRydWV9." + randomID(48)
	exp := now.Add(s.cfg.AccessTokenLifetime)
	s.access[tok] = &accessToken{user: m, client: client, scopes: scopes, expires: exp}
	return tok, exp
}

// RevokeRefreshTokens revokes every refresh token of the user (as an
// admin's "revoke sessions" or a password change does): the next use gets
// invalid_grant (AADSTS50173). Access tokens already issued stay valid
// until they expire, as in Entra without continuous access evaluation.
func (s *Server) RevokeRefreshTokens(address string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return ErrNoSuchUser
	}
	for _, rt := range s.refresh {
		if rt.user == m {
			rt.revoked = true
		}
	}
	return nil
}

// ExpireAccessTokens makes every access token of the user expired now, so
// the next Graph call gets 401 InvalidAuthenticationToken.
func (s *Server) ExpireAccessTokens(address string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(address)]
	if m == nil {
		return ErrNoSuchUser
	}
	for tok, at := range s.access {
		if at.user == m {
			delete(s.access, tok)
		}
	}
	return nil
}

// tokenError answers the identity platform's error JSON.
func (s *Server) tokenError(w http.ResponseWriter, status int, code string, aadsts int, text string) {
	s.stats.tokenError(code)
	now := s.clock.Now().Format("2006-01-02 15:04:05Z")
	trace, corr := newGUID(), newGUID()
	desc := "AADSTS" + strconv.Itoa(aadsts) + ": " + text + "\r\nTrace ID: " + trace + "\r\nCorrelation ID: " + corr + "\r\nTimestamp: " + now
	writeJSON(w, status, map[string]any{
		"error": code, "error_description": desc, "error_codes": []int{aadsts},
		"timestamp": now, "trace_id": trace, "correlation_id": corr,
		"error_uri": "https://login.microsoftonline.com/error?code=" + strconv.Itoa(aadsts),
	})
}

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	s.stats.add(&s.stats.c.TokenRequests, 1)
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		s.tokenError(w, http.StatusMethodNotAllowed, "invalid_request", 900561, "The endpoint only accepts POST requests. Received a "+r.Method+" request.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		s.tokenError(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
		return
	}
	form := r.PostForm
	for _, p := range []string{"grant_type", "client_id"} {
		if form.Get(p) == "" {
			s.tokenError(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: '"+p+"'.")
			return
		}
	}
	if gt := form.Get("grant_type"); gt != "refresh_token" {
		s.tokenError(w, http.StatusBadRequest, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '"+gt+"'.")
		return
	}
	if form.Get("refresh_token") == "" {
		s.tokenError(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'refresh_token'.")
		return
	}
	client := strings.ToLower(form.Get("client_id"))
	now := s.clock.Now()
	s.mu.Lock()
	if !s.clients[client] {
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "unauthorized_client", 700016, "Application with identifier '"+client+"' was not found in the directory '"+s.tenant+"'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.")
		return
	}
	rt := s.refresh[form.Get("refresh_token")]
	switch {
	case rt == nil:
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
		return
	case rt.client != client:
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", 70000, "Provided grant is invalid or malformed.")
		return
	case rt.revoked:
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", 50173, "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.")
		return
	case !now.Before(rt.expires):
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", 700082, "The refresh token has expired due to inactivity.")
		return
	case rt.used && s.cfg.StrictRefreshRotation:
		s.mu.Unlock()
		s.tokenError(w, http.StatusBadRequest, "invalid_grant", 70000, "Provided grant is invalid or malformed (already redeemed; the simulator's strict rotation).")
		return
	}
	scopes := rt.scopes
	if req := form.Get("scope"); req != "" {
		var want []string
		for _, sc := range normScopes(strings.Fields(req)) {
			switch sc {
			case "openid", "profile", "email", "offline_access", ".default":
				continue
			}
			if !slices.Contains(rt.scopes, sc) {
				s.mu.Unlock()
				s.tokenError(w, http.StatusBadRequest, "invalid_grant", 65001, "The user or administrator has not consented to use the application with ID '"+client+"'. Send an interactive authorization request for this user and resource.")
				return
			}
			want = append(want, sc)
		}
		if len(want) > 0 {
			scopes = want
			if slices.Contains(rt.scopes, "offline_access") {
				scopes = append(scopes, "offline_access")
			}
		}
	}
	rt.used = true
	at, _ := s.issueAccessLocked(rt.user, client, scopes, now)
	resp := map[string]any{
		"token_type": "Bearer", "scope": scopeString(scopes),
		"expires_in": int(s.cfg.AccessTokenLifetime / time.Second), "ext_expires_in": int(s.cfg.AccessTokenLifetime / time.Second),
		"access_token": at,
	}
	if slices.Contains(rt.scopes, "offline_access") {
		resp["refresh_token"] = s.issueRefreshLocked(rt.user, client, rt.scopes, now)
	}
	s.mu.Unlock()
	s.stats.add(&s.stats.c.TokensIssued, 1)
	w.Header().Set("Cache-Control", "no-store, no-cache")
	w.Header().Set("Pragma", "no-cache")
	writeJSON(w, http.StatusOK, resp)
}

// scopeString is the answer's scope: Graph scopes with their resource
// prefix, offline_access bare.
func scopeString(scopes []string) string {
	var parts []string
	for _, sc := range scopes {
		if sc == "offline_access" || sc == "openid" || sc == "profile" || sc == "email" {
			parts = append(parts, sc)
			continue
		}
		parts = append(parts, "https://graph.microsoft.com/"+sc)
	}
	return strings.Join(parts, " ")
}

// authenticate returns the access token of a Graph request; on failure it
// has answered 401 with Graph's InvalidAuthenticationToken.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (*accessToken, bool) {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	w.Header().Set("WWW-Authenticate", `Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"`)
	if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
		s.stats.auth("missing")
		graphError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "Access token is empty.")
		return nil, false
	}
	now := s.clock.Now()
	s.mu.Lock()
	at := s.access[strings.TrimSpace(tok)]
	s.mu.Unlock()
	switch {
	case at == nil:
		s.stats.auth("invalid")
		graphError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed, there are no dots (.).")
		return nil, false
	case !now.Before(at.expires):
		s.stats.auth("expired")
		graphError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.")
		return nil, false
	}
	w.Header().Del("WWW-Authenticate")
	s.stats.auth("ok")
	return at, true
}

// TokenOwner returns the mailbox address an access token it issued
// belongs to while it is valid: the token authority another test peer (the
// EWS simulator, as Exchange trusts Entra's tokens) may ask.
func (s *Server) TokenOwner(token string) (string, bool) {
	now := s.clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	at := s.access[token]
	if at == nil || !now.Before(at.expires) {
		return "", false
	}
	return at.user.address, true
}

// canRead reports whether the token may read mail; basic reports that it
// has only Mail.ReadBasic (no body or bodyPreview).
func (at *accessToken) canRead() (ok, basic bool) {
	for _, sc := range at.scopes {
		switch sc {
		case "mail.read", "mail.readwrite":
			return true, false
		case "mail.readbasic":
			ok = true
		}
	}
	return ok, ok
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

package ewssim

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/jcmturner/gokrb5/v8/gssapi"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/service"
	"github.com/jcmturner/gokrb5/v8/spnego"
)

// negotiateAccepted is the SPNEGO NegTokenResp (negState accept-completed,
// supportedMech Kerberos 5) a Windows server returns on success; the
// simulator does not send an AP-REP, as mutual authentication is optional.
const negotiateAccepted = "Negotiate oRQwEqADCgEAoQsGCSqGSIb3EgECAg=="

// authenticate identifies the mailbox of an EWS request from its
// Authorization header, as IIS with Basic, OAuth and Windows
// authentication would. On failure it has already answered 401.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (string, bool) {
	scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	cred = strings.TrimSpace(cred)
	var user string
	var err error
	if scheme == "" && r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		scheme = "certificate"
	}
	switch strings.ToLower(scheme) {
	case "certificate":
		user, err = s.certificateUser(r.TLS.VerifiedChains[0][0])
		s.countAuth("certificate", err)
	case "basic":
		user, err = s.basic(cred)
		s.countAuth("basic", err)
	case "bearer":
		user, err = s.bearer(cred)
		s.countAuth("bearer", err)
	case "negotiate":
		user, err = s.negotiate(cred)
		if errors.Is(err, errNTLM) {
			s.stats.auth("ntlm_refused")
		} else {
			s.countAuth("negotiate", err)
		}
		if err == nil {
			w.Header().Set("WWW-Authenticate", negotiateAccepted)
			if s.persistKerberos {
				persisted(r).set(user)
			}
		}
	case "ntlm":
		err = errNTLM
		s.stats.auth("ntlm_refused")
	default:
		err = errors.New("no credentials")
		if s.persistKerberos {
			if user = persisted(r).get(); user != "" {
				err = nil
				s.stats.auth("negotiate_persisted")
				break
			}
		}
		s.stats.auth("missing")
	}
	if err != nil {
		s.challenge(w, r)
		return "", false
	}
	return user, true
}

// certificateUser maps a verified client certificate to a mailbox, as
// Exchange's certificate-based authentication does: by the certificate's
// e-mail address (rfc822Name), else its subject CN.
func (s *Server) certificateUser(cert *x509.Certificate) (string, error) {
	addr := cert.Subject.CommonName
	if len(cert.EmailAddresses) > 0 {
		addr = cert.EmailAddresses[0]
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.users[normAddr(addr)]
	if m == nil {
		return "", errBadCredentials
	}
	return m.Address, nil
}

var (
	errBadCredentials = errors.New("bad credentials")
	errNTLM           = errors.New("NTLM is not supported by the simulator")
)

func (s *Server) countAuth(scheme string, err error) {
	if err != nil {
		s.stats.auth(scheme + "_failed")
		return
	}
	s.stats.auth(scheme + "_ok")
}

// challenge answers 401 like IIS with Windows and Basic authentication
// enabled: one WWW-Authenticate line per scheme and no body.
func (s *Server) challenge(w http.ResponseWriter, r *http.Request) {
	realm := s.realm
	if realm == "" {
		realm = r.Host
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			realm = h
		}
	}
	h := w.Header()
	h.Del("WWW-Authenticate")
	h.Add("WWW-Authenticate", "Negotiate")
	h.Add("WWW-Authenticate", "NTLM")
	h.Add("WWW-Authenticate", `Basic realm="`+strings.ReplaceAll(realm, `"`, "")+`"`)
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusUnauthorized)
}

// basic checks user:password. The user name is the SMTP address (UPN) or
// DOMAIN\alias, where alias is the address's local part and the domain is
// not checked.
func (s *Server) basic(cred string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(cred)
	if err != nil {
		return "", errBadCredentials
	}
	name, password, ok := strings.Cut(string(raw), ":")
	if !ok {
		return "", errBadCredentials
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.lookupLogin(name)
	if m == nil || m.Password == "" || subtle.ConstantTimeCompare([]byte(m.Password), []byte(password)) != 1 {
		return "", errBadCredentials
	}
	return m.Address, nil
}

// lookupLogin resolves a logon name to a mailbox. Called with s.mu held.
func (s *Server) lookupLogin(name string) *mailbox {
	if _, alias, ok := strings.Cut(name, `\`); ok {
		var found *mailbox
		for addr, m := range s.users {
			if strings.EqualFold(addr[:strings.IndexByte(addr, '@')], alias) {
				if found != nil {
					return nil // ambiguous
				}
				found = m
			}
		}
		return found
	}
	return s.users[normAddr(name)]
}

func (s *Server) bearer(token string) (string, error) {
	s.mu.Lock()
	addr, ok := s.tokens[token]
	s.mu.Unlock()
	if !ok && token != "" && s.tokenAuthority != nil {
		addr, ok = s.tokenAuthority(token)
	}
	if token == "" || !ok {
		return "", errBadCredentials
	}
	return addr, nil
}

// negotiate verifies a SPNEGO (or bare Kerberos 5) token with the service
// keytab and maps the client principal to a mailbox: through the
// configured principal map, else by UPN equal to the SMTP address.
func (s *Server) negotiate(cred string) (string, error) {
	raw, err := base64.StdEncoding.DecodeString(cred)
	if err != nil {
		return "", errBadCredentials
	}
	if bytes.HasPrefix(raw, []byte("NTLMSSP\x00")) {
		return "", errNTLM
	}
	if s.krb == nil {
		return "", errors.New("kerberos is not configured")
	}
	apreq, err := apReq(raw)
	if err != nil {
		return "", err
	}
	ok, creds, err := service.VerifyAPREQ(apreq, s.krb)
	if err != nil || !ok {
		// Only the Kerberos error code: messages may name principals.
		var ke messages.KRBError
		if errors.As(err, &ke) {
			s.log.Debug("kerberos ticket rejected", "krbErrorCode", ke.ErrorCode)
		} else {
			s.log.Debug("kerberos ticket rejected")
		}
		return "", errBadCredentials
	}
	// An enterprise name (a UPN as the client name, as Heimdal leaves it
	// after S4U2Self) already is user@domain.
	principal := creds.UserName()
	if !strings.Contains(principal, "@") {
		principal += "@" + creds.Domain()
	}
	principal = strings.ToLower(principal)
	addr, mapped := s.principals[principal]
	if !mapped {
		addr = principal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[addr]; !ok {
		return "", errBadCredentials
	}
	return addr, nil
}

// apReq extracts the AP-REQ from a SPNEGO NegTokenInit or, as some clients
// send, a bare GSS-API Kerberos token.
func apReq(raw []byte) (*messages.APReq, error) {
	var st spnego.SPNEGOToken
	mech := raw
	if err := st.Unmarshal(raw); err == nil {
		if !st.Init || len(st.NegTokenInit.MechTypes) == 0 {
			return nil, errors.New("not a SPNEGO NegTokenInit")
		}
		oid := st.NegTokenInit.MechTypes[0]
		if !oid.Equal(gssapi.OIDKRB5.OID()) && !oid.Equal(gssapi.OIDMSLegacyKRB5.OID()) {
			return nil, errors.New("SPNEGO mechanism is not Kerberos 5")
		}
		mech = st.NegTokenInit.MechTokenBytes
	}
	var k spnego.KRB5Token
	if err := k.Unmarshal(mech); err != nil || !k.IsAPReq() {
		return nil, errors.New("no Kerberos AP-REQ in the token")
	}
	return &k.APReq, nil
}

// connLogin is the Kerberos login IIS keeps per connection.
type connLogin struct {
	mu   sync.Mutex
	user string
}

type connLoginKey struct{}

// ConnContext gives each connection its login state (PersistKerberos):
// use it as the http.Server's ConnContext.
func ConnContext(ctx context.Context, _ net.Conn) context.Context {
	return context.WithValue(ctx, connLoginKey{}, new(connLogin))
}

// persisted is the request's connection state; a throwaway one if the
// server does not set ConnContext.
func persisted(r *http.Request) *connLogin {
	if c, ok := r.Context().Value(connLoginKey{}).(*connLogin); ok {
		return c
	}
	return new(connLogin)
}

func (c *connLogin) set(user string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.user = user
}

func (c *connLogin) get() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.user
}

package kcd

import (
	"errors"
	"net/http"

	"github.com/jcmturner/gokrb5/v8/iana/errorcode"
)

// What went wrong, in terms an admin can act on. Match with errors.Is.
var (
	// ErrUnknownPrincipal: the KDC does not know the user
	// (KDC_ERR_C_PRINCIPAL_UNKNOWN).
	ErrUnknownPrincipal = errors.New("the KDC does not know the user")
	// ErrNotForwardable: the S4U2Self ticket is not forwardable, so
	// protocol transition is not allowed: the proxy's account is not
	// trusted for delegation to any protocol, or the user is sensitive and
	// cannot be delegated.
	ErrNotForwardable = errors.New("the S4U2Self ticket is not forwardable: protocol transition is not allowed for the proxy's account, or the user cannot be delegated")
	// ErrBadOption: the KDC refused S4U2Proxy (KDC_ERR_BADOPTION): the
	// Exchange SPN is not in the proxy's constrained-delegation list, or
	// the KDC cannot do S4U2Proxy.
	ErrBadOption = errors.New("the KDC refused delegation to the Exchange SPN (KDC_ERR_BADOPTION): the SPN is not in the proxy's delegation list, or the KDC cannot do S4U2Proxy")
	// ErrClockSkew: this host's clock and the KDC's differ by more than
	// the KDC allows (KRB_AP_ERR_SKEW).
	ErrClockSkew = errors.New("the clocks of this host and the KDC differ too much (KRB_AP_ERR_SKEW)")
	// ErrKDCUnreachable: no configured KDC answered in time.
	ErrKDCUnreachable = errors.New("no KDC answered")
	// ErrUserRefused: the KDC issues no tickets for the user
	// (KDC_ERR_CLIENT_REVOKED, KDC_ERR_POLICY, KDC_ERR_KEY_EXPIRED): the
	// account is disabled, locked out, expired or restricted.
	ErrUserRefused = errors.New("the KDC issues no tickets for the user: the account is disabled, locked out, expired or restricted")
	// ErrProxyLogin: the KDC refused the proxy's own login: its principal,
	// keytab or realm is wrong, or its account is disabled.
	ErrProxyLogin = errors.New("the KDC refused the proxy's own login: check the principal, keytab and realm")
	// ErrSIDMismatch: the certificate names a user SID (AD strong mapping)
	// that is not the SID of the user its UPN names.
	ErrSIDMismatch = errors.New("the certificate's SID is not the user's (strong certificate mapping)")
	// ErrKDC: any other error answer from the KDC (its code is in Error).
	ErrKDC = errors.New("the KDC refused the request")
	// ErrProtocol: the KDC's answer failed our checks (wrong nonce, server
	// or client name, undecryptable): a misbehaving KDC or an attack.
	ErrProtocol = errors.New("the KDC's answer failed verification")
)

// Steps of the exchange, as they appear in errors, logs and metrics.
const (
	StepIdentity  = "identity"  // certificate → user principal
	StepLogin     = "as"        // the proxy's own TGT
	StepS4U2Self  = "s4u2self"  // a ticket to the proxy on the user's behalf
	StepS4U2Proxy = "s4u2proxy" // a ticket to Exchange on the user's behalf
)

// Error is a failed step. It never contains the user's name: logs must not
// carry personal data.
type Error struct {
	Step string // one of the Step constants
	Kind error  // one of the Err sentinels (or ErrNoIdentity)
	Code int32  // the KDC's error code, 0 if it did not answer with one
	KDC  string // the KDC that answered, if any
	Err  error  // detail, if any
}

func (e *Error) Error() string {
	msg := "kcd: " + e.Step + ": " + e.Kind.Error()
	if errors.Is(e.Err, e.Kind) { // the detail already says it
		msg = "kcd: " + e.Step + ": " + e.Err.Error()
	}
	if e.Code != 0 {
		msg += " [KDC error " + errorcode.Lookup(e.Code) + "]"
	}
	if e.KDC != "" {
		msg += " (KDC " + e.KDC + ")"
	}
	if e.Err != nil && !errors.Is(e.Err, e.Kind) {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}

// HTTPStatus is what the EWS proxy answers the client: 403 when the user
// cannot be delegated (no identity in the certificate, unknown to the KDC,
// not delegable), 502 when the gateway or the KDC is at fault.
func (e *Error) HTTPStatus() int {
	switch e.Kind {
	case ErrNoIdentity, ErrUnknownPrincipal, ErrNotForwardable, ErrUserRefused, ErrSIDMismatch:
		return http.StatusForbidden
	}
	return http.StatusBadGateway
}

// kindOf maps a KDC error code at a step to what it means for us: about
// the user only at S4U2Self, where the user is looked up; at the login,
// anything but clock skew is the proxy's own configuration.
func kindOf(step string, code int32) error {
	switch {
	case code == errorcode.KRB_AP_ERR_SKEW:
		return ErrClockSkew
	case step == StepLogin:
		return ErrProxyLogin
	case code == errorcode.KDC_ERR_BADOPTION:
		return ErrBadOption
	case step != StepS4U2Self:
		return ErrKDC
	case code == errorcode.KDC_ERR_C_PRINCIPAL_UNKNOWN:
		return ErrUnknownPrincipal
	case code == errorcode.KDC_ERR_CLIENT_REVOKED, code == errorcode.KDC_ERR_POLICY, code == errorcode.KDC_ERR_KEY_EXPIRED:
		return ErrUserRefused
	}
	return ErrKDC
}

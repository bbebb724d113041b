package kcd

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
)

// What to do with the user SID that AD certificate services put into
// certificates for strong certificate mapping (KB5014754).
const (
	// SIDCheck (the default): a certificate that carries a SID is only
	// good for the user with that SID, as AD's compatibility mode.
	SIDCheck = "check"
	// SIDRequire: a certificate must carry the user's SID, as AD's full
	// enforcement mode.
	SIDRequire = "require"
	// SIDOff ignores the extension.
	SIDOff = "off"
)

// CertificateDelegator turns a verified client certificate into a
// Negotiate header for Exchange: the identity the certificate names, then
// a delegated ticket for it. It is the EWS proxy's Delegator.
type CertificateDelegator struct {
	Identity *IdentityMapper
	KCD      *Delegator
	// SID is SIDCheck (also when empty), SIDRequire or SIDOff.
	SID string
}

// CheckSIDPolicy reports an unknown SID policy.
func CheckSIDPolicy(policy string) error {
	switch policy {
	case "", SIDCheck, SIDRequire, SIDOff:
		return nil
	}
	return fmt.Errorf("sid %q: want %s, %s or %s", policy, SIDCheck, SIDRequire, SIDOff)
}

// Authorization returns the Authorization header value for cert's user.
// Errors are *Error; their HTTPStatus is 403 for a certificate that names
// no user, or a user that cannot be delegated or is not the one its SID
// names.
func (c *CertificateDelegator) Authorization(ctx context.Context, cert *x509.Certificate) (string, error) {
	user, err := c.Identity.Identity(cert)
	if err != nil {
		return "", &Error{Step: StepIdentity, Kind: ErrNoIdentity, Err: err}
	}
	sid, present := sidOf(cert)
	switch {
	case c.SID == SIDOff:
		sid = ""
	case present && sid == "":
		return "", &Error{Step: StepIdentity, Kind: ErrSIDMismatch, Err: errors.New("the SID extension (1.3.6.1.4.1.311.25.2) is malformed")}
	case c.SID == SIDRequire && !present:
		return "", &Error{Step: StepIdentity, Kind: ErrNoIdentity, Err: errors.New("no SID extension (1.3.6.1.4.1.311.25.2), and strong mapping is required")}
	}
	return c.KCD.NegotiateSID(ctx, user, sid)
}

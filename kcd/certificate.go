package kcd

import (
	"context"
	"crypto/x509"
)

// CertificateDelegator turns a verified client certificate into a
// Negotiate header for Exchange: the identity the certificate names, then
// a delegated ticket for it. It is the EWS proxy's Delegator.
type CertificateDelegator struct {
	Identity *IdentityMapper
	KCD      *Delegator
}

// Authorization returns the Authorization header value for cert's user.
// Errors are *Error; their HTTPStatus is 403 for a certificate that names
// no user or a user that cannot be delegated.
func (c *CertificateDelegator) Authorization(ctx context.Context, cert *x509.Certificate) (string, error) {
	user, err := c.Identity.Identity(cert)
	if err != nil {
		return "", &Error{Step: StepIdentity, Kind: ErrNoIdentity, Err: err}
	}
	return c.KCD.Negotiate(ctx, user)
}

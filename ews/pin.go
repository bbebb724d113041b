package ews

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"strings"
)

// Fingerprint pins a server certificate: the SHA-256 of the DER leaf
// certificate ("sha256:<hex>"), or of the leaf's SubjectPublicKeyInfo
// ("spki-sha256:<hex>"), which survives a certificate renewal that keeps
// the key. The zero Fingerprint pins nothing.
// Fingerprints are comparable with ==.
type Fingerprint struct {
	kind pinKind
	sum  [sha256.Size]byte
}

type pinKind uint8

const (
	pinNone pinKind = iota
	pinCert
	pinSPKI
)

const (
	certPrefix = "sha256:"
	spkiPrefix = "spki-sha256:"
)

// ParseFingerprint parses "sha256:<hex>" or "spki-sha256:<hex>". Case and
// colons in the hex part are ignored, so the output of
// `openssl x509 -fingerprint -sha256` can be pasted after the prefix.
func ParseFingerprint(s string) (Fingerprint, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	var f Fingerprint
	var digits string
	switch {
	case strings.HasPrefix(s, spkiPrefix):
		f.kind, digits = pinSPKI, s[len(spkiPrefix):]
	case strings.HasPrefix(s, certPrefix):
		f.kind, digits = pinCert, s[len(certPrefix):]
	default:
		return Fingerprint{}, errors.New(`ews: fingerprint must start with "sha256:" or "spki-sha256:"`)
	}
	sum, err := hex.DecodeString(strings.ReplaceAll(digits, ":", ""))
	if err != nil || len(sum) != sha256.Size {
		return Fingerprint{}, errors.New("ews: fingerprint must have 64 hex digits (a SHA-256)")
	}
	copy(f.sum[:], sum)
	return f, nil
}

// IsZero reports whether f pins nothing.
func (f Fingerprint) IsZero() bool { return f.kind == pinNone }

// String returns the canonical form: lower-case hex without colons.
func (f Fingerprint) String() string {
	if f.IsZero() {
		return ""
	}
	prefix := certPrefix
	if f.kind == pinSPKI {
		prefix = spkiPrefix
	}
	return prefix + hex.EncodeToString(f.sum[:])
}

// Matches reports whether cert is the pinned certificate or carries the
// pinned public key.
func (f Fingerprint) Matches(cert *x509.Certificate) bool {
	switch f.kind {
	case pinCert:
		return sha256.Sum256(cert.Raw) == f.sum
	case pinSPKI:
		return sha256.Sum256(cert.RawSubjectPublicKeyInfo) == f.sum
	}
	return false
}

// verifyConnection is a tls.Config.VerifyConnection hook enforcing f. It
// runs inside the handshake, after chain verification and on resumed
// sessions too, so a mismatching server never sees a request, let alone
// credentials.
func (f Fingerprint) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 || !f.Matches(cs.PeerCertificates[0]) {
		return ErrPinMismatch
	}
	return nil
}

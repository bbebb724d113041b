package kcd

import (
	"crypto/x509"
	"encoding/asn1"
	"regexp"
)

var (
	// oidNTDSCASecurity is the extension in which AD certificate services
	// (since KB5014754) put the SID of the user a certificate was issued
	// to, for "strong" certificate mapping.
	oidNTDSCASecurity = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 25, 2}
	oidNTDSObjectSID  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 25, 2, 1}
	sidPattern        = regexp.MustCompile(`^S-1-[0-9]+(-[0-9]+){1,15}$`)
)

// SIDFromCertificate returns the user SID of AD's strong-mapping extension
// (1.3.6.1.4.1.311.25.2: a SEQUENCE of otherName, the SID as an OCTET
// STRING of its string form under 1.3.6.1.4.1.311.25.2.1), if the
// certificate has a well-formed one.
func SIDFromCertificate(cert *x509.Certificate) (string, bool) {
	sid, _ := sidOf(cert)
	return sid, sid != ""
}

// sidOf also reports whether the extension is there at all, so that a
// malformed one is not taken for a missing one.
func sidOf(cert *x509.Certificate) (sid string, present bool) {
	if cert == nil {
		return "", false
	}
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidNTDSCASecurity) {
			sid, _ = sidFromExtension(ext.Value)
			return sid, true
		}
	}
	return "", false
}

func sidFromExtension(der []byte) (string, bool) {
	var sid string
	framed := eachOtherName(der, oidNTDSObjectSID, func(value asn1.RawValue) {
		if sid == "" && value.Class == asn1.ClassUniversal && value.Tag == asn1.TagOctetString && !value.IsCompound &&
			sidPattern.Match(value.Bytes) {
			sid = string(value.Bytes)
		}
	})
	return sid, framed && sid != ""
}

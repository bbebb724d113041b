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
	if cert == nil {
		return "", false
	}
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidNTDSCASecurity) {
			return sidFromExtension(ext.Value)
		}
	}
	return "", false
}

func sidFromExtension(der []byte) (string, bool) {
	var names asn1.RawValue
	rest, err := asn1.Unmarshal(der, &names)
	if err != nil || len(rest) != 0 || names.Class != asn1.ClassUniversal || names.Tag != asn1.TagSequence || !names.IsCompound {
		return "", false
	}
	for b := names.Bytes; len(b) > 0; {
		var name asn1.RawValue
		if b, err = asn1.Unmarshal(b, &name); err != nil {
			return "", false
		}
		if name.Class != asn1.ClassContextSpecific || name.Tag != 0 || !name.IsCompound {
			continue
		}
		value, ok := otherNameValue(name.Bytes, oidNTDSObjectSID)
		if ok && value.Class == asn1.ClassUniversal && value.Tag == asn1.TagOctetString && !value.IsCompound &&
			sidPattern.Match(value.Bytes) {
			return string(value.Bytes), true
		}
	}
	return "", false
}

package kcd

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Identity sources, tried in the configured order.
const (
	SourceUPN   = "upn"   // SAN otherName 1.3.6.1.4.1.311.20.2.3 (Microsoft UPN, a UTF8String)
	SourceEmail = "email" // SAN rfc822Name; safe only if the CA guarantees it equals the UPN (S/MIME certificates carry one)
	SourceCN    = "cn"    // subject common name
)

// ErrNoIdentity means that no configured source of the certificate gave a
// usable user name. Identity's error wraps it and says, per source tried,
// whether it was absent or unusable; it never contains the certificate's
// names, which are personal data. (No "kcd:" prefix: like the other kinds
// in errors.go, Error adds it.)
var ErrNoIdentity = errors.New("the certificate names no user")

var (
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidMicrosoftUPN   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3}
	oidCommonName     = asn1.ObjectIdentifier{2, 5, 4, 3}
)

// UPNFromCertificate returns the first valid Microsoft UPN in the
// certificate's subject alternative names (see UPNFromSAN).
func UPNFromCertificate(cert *x509.Certificate) (string, bool) {
	upn, _ := upnFromCertificate(cert)
	return upn, upn != ""
}

// UPNFromSAN returns the first valid Microsoft UPN in a DER subject
// alternative name extension value (GeneralNames). crypto/x509 skips
// otherName, so it is parsed here.
//
// Valid means: the otherName's value is a UTF8String (the type Microsoft
// specifies, and the only one Heimdal, Apache httpd, strongSwan or
// FreeRADIUS read; other string types are ignored, not guessed at) of
// valid UTF-8 without control characters, '/' or '\', with exactly one '@'
// that has text on both sides. Invalid UPNs are skipped, so a later valid
// one is taken. Broken framing of the GeneralNames yields no UPN at all: a
// damaged extension is not half trusted.
func UPNFromSAN(der []byte) (string, bool) {
	upn, _ := upnFromSAN(der)
	return upn, upn != ""
}

func upnFromCertificate(cert *x509.Certificate) (upn string, seen bool) {
	if cert == nil {
		return "", false
	}
	// crypto/x509 refuses duplicate extensions, so there is one SAN at most.
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidSubjectAltName) {
			return upnFromSAN(ext.Value)
		}
	}
	return "", false
}

// upnFromSAN also reports whether any UPN otherName was there, valid or not,
// so that errors can tell an unusable UPN from a missing one.
func upnFromSAN(der []byte) (upn string, seen bool) {
	framed := eachOtherName(der, oidMicrosoftUPN, func(value asn1.RawValue) {
		seen = true
		// Keep the first valid one; eachOtherName reads on, as the
		// framing must hold.
		if upn == "" && value.Class == asn1.ClassUniversal && value.Tag == asn1.TagUTF8String &&
			!value.IsCompound && validUserName(string(value.Bytes), true) {
			upn = string(value.Bytes)
		}
	})
	if !framed {
		return "", false
	}
	return upn, seen
}

// eachOtherName calls f with the value of every otherName of type oid in
// der, a SEQUENCE of GeneralName (a subject alternative name, or AD's SID
// extension), and reports whether the whole sequence was well framed: a
// damaged extension is not half trusted.
func eachOtherName(der []byte, oid asn1.ObjectIdentifier, f func(value asn1.RawValue)) bool {
	var names asn1.RawValue
	rest, err := asn1.Unmarshal(der, &names)
	if err != nil || len(rest) != 0 || names.Class != asn1.ClassUniversal ||
		names.Tag != asn1.TagSequence || !names.IsCompound {
		return false
	}
	for b := names.Bytes; len(b) > 0; {
		var name asn1.RawValue
		if b, err = asn1.Unmarshal(b, &name); err != nil {
			return false
		}
		// otherName is [0] constructed; rfc822Name [1], dNSName [2],
		// directoryName [4], URI [6], iPAddress [7] etc. are not.
		if name.Class != asn1.ClassContextSpecific || name.Tag != 0 || !name.IsCompound {
			continue
		}
		if value, ok := otherNameValue(name.Bytes, oid); ok {
			f(value)
		}
	}
	return true
}

// otherNameValue returns the value inside the body of an otherName
// (SEQUENCE { type-id OID, value [0] EXPLICIT ANY }) if its type is oid.
func otherNameValue(body []byte, oid asn1.ObjectIdentifier) (asn1.RawValue, bool) {
	var typeID asn1.ObjectIdentifier
	rest, err := asn1.Unmarshal(body, &typeID)
	if err != nil || !typeID.Equal(oid) {
		return asn1.RawValue{}, false
	}
	var explicit, value asn1.RawValue
	if rest, err = asn1.Unmarshal(rest, &explicit); err != nil || len(rest) != 0 ||
		explicit.Class != asn1.ClassContextSpecific || explicit.Tag != 0 || !explicit.IsCompound {
		return asn1.RawValue{}, false
	}
	if rest, err = asn1.Unmarshal(explicit.Bytes, &value); err != nil || len(rest) != 0 {
		return asn1.RawValue{}, false
	}
	return value, true
}

// validUserName accepts a non-empty name of valid UTF-8 without control
// characters (they would forge log lines or Kerberos requests), without '/'
// or '\' (a Kerberos principal's component separator and escape: a user has
// one component) and with at most one '@' that has text on both sides;
// needAt requires the '@'.
func validUserName(s string, needAt bool) bool {
	if s == "" || !utf8.ValidString(s) || strings.ContainsAny(s, `/\`) ||
		strings.ContainsFunc(s, unicode.IsControl) {
		return false
	}
	switch strings.Count(s, "@") {
	case 0:
		return !needAt
	case 1:
		user, domain, _ := strings.Cut(s, "@")
		return user != "" && domain != ""
	default:
		return false
	}
}

// IdentityMapper derives the Kerberos user principal from a verified client
// certificate. It is safe for concurrent use.
type IdentityMapper struct {
	sources  []string
	template []templatePart // nil: the value as found
}

// templatePart is literal text or, if field is set, a placeholder.
type templatePart struct {
	literal string
	field   string // "user", "domain" or "value"
}

// NewIdentityMapper validates the configuration: sources (non-empty, known
// names, no duplicates) and an optional template.
//
// The template rewrites the value a source gave. Its placeholders are
// {user} (the part before '@', or the whole value if it has no '@'),
// {domain} (the part after '@'; a value without '@' then gives no identity
// from that source) and {value} (the whole value); e.g.
// "{user}@CORP.EXAMPLE.TEST" keeps the user and sets the realm. Braces appear
// only in placeholders; the template must contain {user} or {value} (else
// every certificate would map to the same user), and its text obeys the
// same rules as names: no control characters, '/' or '\'. An empty template
// uses the value as found.
func NewIdentityMapper(sources []string, template string) (*IdentityMapper, error) {
	if len(sources) == 0 {
		return nil, errors.New("kcd: identity: no sources (want upn, email or cn)")
	}
	seen := make(map[string]bool, len(sources))
	for _, s := range sources {
		switch s {
		case SourceUPN, SourceEmail, SourceCN:
		default:
			return nil, fmt.Errorf("kcd: identity: unknown source %q (want upn, email or cn)", s)
		}
		if seen[s] {
			return nil, fmt.Errorf("kcd: identity: source %q listed twice", s)
		}
		seen[s] = true
	}
	parts, err := parseTemplate(template)
	if err != nil {
		return nil, err
	}
	return &IdentityMapper{sources: append([]string(nil), sources...), template: parts}, nil
}

func parseTemplate(t string) ([]templatePart, error) {
	if t == "" {
		return nil, nil
	}
	if strings.ContainsAny(t, `/\`) || strings.ContainsFunc(t, unicode.IsControl) || !utf8.ValidString(t) {
		return nil, errors.New(`kcd: identity: template has a control character, '/' or '\'`)
	}
	var parts []templatePart
	hasUser := false
	for rest := t; rest != ""; {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			parts = append(parts, templatePart{literal: rest})
			break
		}
		if rest[open] == '}' {
			return nil, fmt.Errorf("kcd: identity: template %q has a '}' without '{'", t)
		}
		if open > 0 {
			parts = append(parts, templatePart{literal: rest[:open]})
		}
		field, after, ok := strings.Cut(rest[open+1:], "}")
		if !ok {
			return nil, fmt.Errorf("kcd: identity: template %q has an unclosed '{'", t)
		}
		switch field {
		case "user", "value":
			hasUser = true
		case "domain":
		default:
			return nil, fmt.Errorf("kcd: identity: template %q has unknown placeholder {%s} (want {user}, {domain} or {value})", t, field)
		}
		parts = append(parts, templatePart{field: field})
		rest = after
	}
	if !hasUser {
		return nil, fmt.Errorf("kcd: identity: template %q has neither {user} nor {value}", t)
	}
	return parts, nil
}

// Identity returns the user principal (e.g. "alice@corp.example.test") from
// the first source, in the configured order, that gives a valid name; the
// template, if any, is applied to that name, and a result that is not a
// valid name makes the source unusable so the next one is tried.
//
// Each source takes its first valid value: the first valid UPN otherName,
// the first valid rfc822Name, and the subject's common name (refused if the
// subject has several). UPNs and e-mail addresses must contain exactly one
// '@'. A common name may be a bare name ("alice"); without a template that
// is returned as is, and adding a realm to a name without one is the
// caller's concern.
//
// Otherwise the error wraps ErrNoIdentity.
func (m *IdentityMapper) Identity(cert *x509.Certificate) (string, error) {
	if cert == nil {
		return "", fmt.Errorf("%w: no certificate", ErrNoIdentity)
	}
	outcomes := make([]string, 0, len(m.sources))
	for _, source := range m.sources {
		value, seen := sourceValue(cert, source)
		if value != "" {
			if id, ok := m.apply(value); ok {
				return id, nil
			}
		}
		if seen {
			outcomes = append(outcomes, source+" unusable")
		} else {
			outcomes = append(outcomes, source+" absent")
		}
	}
	return "", fmt.Errorf("%w: %s", ErrNoIdentity, strings.Join(outcomes, ", "))
}

// sourceValue returns the source's first valid value, and whether the
// source had any value at all.
func sourceValue(cert *x509.Certificate, source string) (value string, seen bool) {
	switch source {
	case SourceUPN:
		return upnFromCertificate(cert)
	case SourceEmail:
		for _, e := range cert.EmailAddresses {
			if validUserName(e, true) {
				return e, true
			}
		}
		return "", len(cert.EmailAddresses) > 0
	case SourceCN:
		n := 0
		for _, atv := range cert.Subject.Names {
			if atv.Type.Equal(oidCommonName) {
				n++
			}
		}
		// With several CNs crypto/x509 reports the last: ambiguous, refused.
		if n == 1 && validUserName(cert.Subject.CommonName, false) {
			return cert.Subject.CommonName, true
		}
		return "", n > 0
	}
	return "", false
}

// apply rewrites a valid name with the template and checks the result.
func (m *IdentityMapper) apply(value string) (string, bool) {
	if m.template == nil {
		return value, true
	}
	user, domain, hasDomain := strings.Cut(value, "@")
	var b strings.Builder
	for _, p := range m.template {
		switch p.field {
		case "":
			b.WriteString(p.literal)
		case "user":
			b.WriteString(user)
		case "domain":
			if !hasDomain {
				return "", false
			}
			b.WriteString(domain)
		case "value":
			b.WriteString(value)
		}
	}
	id := b.String()
	return id, validUserName(id, false)
}

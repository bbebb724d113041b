package ewsproxy

import (
	"bytes"
	"encoding/asn1"
	"encoding/base64"
	"strings"
)

var (
	oidSPNEGO = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 2}
	oidNTLM   = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 2, 10}
)

var ntlmSignature = []byte("NTLMSSP\x00")

// negotiateIsNTLM reports whether the credentials of a Negotiate
// Authorization header carry NTLM rather than Kerberos: a bare NTLMSSP
// message (in any of the four base64 forms, since Windows is lenient), or
// SPNEGO (RFC 4178) whose NegTokenInit prefers NTLM or carries an NTLMSSP
// mechToken, or whose NegTokenResp selects NTLM or carries an NTLMSSP
// responseToken.
//
// A token that starts like SPNEGO but cannot be parsed counts as NTLM:
// Windows parses BER more leniently than this DER walk, so forwarding what
// we cannot read would let NTLM through in disguise; so does a token that
// is not base64 in any of its forms, which HTTP.sys might still decode.
// Anything else (a bare Kerberos AP-REQ, another mechanism) is Exchange's
// to refuse.
func negotiateIsNTLM(credentials string) bool {
	token, ok := decodeBase64(strings.TrimSpace(credentials))
	if !ok {
		return true
	}
	if bytes.HasPrefix(token, ntlmSignature) {
		return true
	}
	if len(token) == 0 {
		return false
	}
	switch token[0] {
	case 0x60: // [APPLICATION 0] InitialContextToken (RFC 2743 §3.1)
		var gss asn1.RawValue
		if rest, err := asn1.Unmarshal(token, &gss); err != nil || len(rest) != 0 ||
			gss.Class != asn1.ClassApplication || gss.Tag != 0 || !gss.IsCompound {
			return true
		}
		var mech asn1.ObjectIdentifier
		inner, err := asn1.Unmarshal(gss.Bytes, &mech)
		switch {
		case err != nil:
			return true
		case mech.Equal(oidNTLM):
			return true
		case mech.Equal(oidSPNEGO):
			return spnegoIsNTLM(inner)
		}
		return false // Kerberos or another mechanism
	case 0xa0, 0xa1: // NegotiationToken without the GSS-API framing
		return spnegoIsNTLM(token)
	}
	return false
}

// spnegoIsNTLM reads a NegotiationToken:
//
//	NegotiationToken ::= CHOICE { negTokenInit [0] NegTokenInit, negTokenResp [1] NegTokenResp }
//	NegTokenInit ::= SEQUENCE { mechTypes [0] SEQUENCE OF OID, reqFlags [1] ..., mechToken [2] OCTET STRING, ... }
//	NegTokenResp ::= SEQUENCE { negState [0] ..., supportedMech [1] OID, responseToken [2] OCTET STRING, ... }
//
// (Microsoft's NegTokenInit2 only adds fields after mechToken.)
func spnegoIsNTLM(der []byte) bool {
	var choice asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &choice); err != nil || len(rest) != 0 ||
		choice.Class != asn1.ClassContextSpecific || !choice.IsCompound || choice.Tag > 1 {
		return true
	}
	fields, ok := sequenceFields(choice.Bytes)
	if !ok {
		return true
	}
	// The mechanism is named in field [0] (mechTypes) of an init and in
	// field [1] (supportedMech) of a response: the choice's own tag.
	if f, present := fields[choice.Tag]; present {
		var mech asn1.ObjectIdentifier
		if choice.Tag == 0 {
			var mechs []asn1.ObjectIdentifier
			if rest, err := asn1.Unmarshal(f, &mechs); err != nil || len(rest) != 0 {
				return true
			}
			if len(mechs) > 0 {
				mech = mechs[0] // the preferred one, for which mechToken is
			}
		} else if rest, err := asn1.Unmarshal(f, &mech); err != nil || len(rest) != 0 {
			return true
		}
		if mech.Equal(oidNTLM) {
			return true
		}
	}
	if f, present := fields[2]; present {
		var tok []byte
		if rest, err := asn1.Unmarshal(f, &tok); err != nil || len(rest) != 0 {
			return true
		}
		if bytes.HasPrefix(tok, ntlmSignature) {
			return true
		}
	}
	return false
}

// sequenceFields returns the contents of each [n] EXPLICIT field of a DER
// SEQUENCE, by n; false if the framing is broken or a field repeats.
func sequenceFields(der []byte) (map[int][]byte, bool) {
	var seq asn1.RawValue
	if rest, err := asn1.Unmarshal(der, &seq); err != nil || len(rest) != 0 ||
		seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return nil, false
	}
	fields := map[int][]byte{}
	for b := seq.Bytes; len(b) > 0; {
		var f asn1.RawValue
		var err error
		if b, err = asn1.Unmarshal(b, &f); err != nil || f.Class != asn1.ClassContextSpecific || !f.IsCompound {
			return nil, false
		}
		if _, dup := fields[f.Tag]; dup {
			return nil, false
		}
		fields[f.Tag] = f.Bytes
	}
	return fields, true
}

// decodeBase64 accepts padded and unpadded base64, in the standard and
// the URL alphabet.
func decodeBase64(s string) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, true
		}
	}
	return nil, false
}

package kcd

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/testca"
)

func TestSIDFromCertificate(t *testing.T) {
	ca, err := testca.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	issue := func(sid string) *x509.Certificate {
		tc, err := ca.IssueClient(pkix.Name{CommonName: "Alice"}, "alice@corp.example.test", sid)
		if err != nil {
			t.Fatal(err)
		}
		return tc.Leaf
	}
	const sid = "S-1-5-21-3623811015-3361044348-30300820-1013"
	if got, ok := SIDFromCertificate(issue(sid)); !ok || got != sid {
		t.Errorf("SID %q (%v), want %q", got, ok, sid)
	}
	if got, ok := SIDFromCertificate(issue("")); ok {
		t.Errorf("a certificate without the extension gave %q", got)
	}
	for _, bad := range []string{"S-1-5-21-x", "alice", "S-1-5-21-1-2\n", "S-1"} {
		if got, ok := SIDFromCertificate(issue(bad)); ok {
			t.Errorf("SID %q accepted as %q", bad, got)
		}
	}

	// The layout AD certificate services write, by hand: SEQUENCE {
	// [0] { OID 1.3.6.1.4.1.311.25.2.1, [0] { OCTET STRING "S-1-…" } } }.
	handmade := append([]byte{0x30, 0x24, 0xa0, 0x22,
		0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x19, 0x02, 0x01,
		0xa0, 0x14, 0x04, 0x12}, "S-1-5-21-1-2-3-500"...)
	if got, ok := sidFromExtension(handmade); !ok || got != "S-1-5-21-1-2-3-500" {
		t.Errorf("hand-made extension: %q (%v)", got, ok)
	}

	// Malformed extensions.
	der, _ := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true})
	for name, ext := range map[string][]byte{
		"empty sequence": der,
		"not DER":        {0x30, 0x05, 0x01},
		"trailing bytes": append(append([]byte{}, der...), 0),
	} {
		if got, ok := sidFromExtension(ext); ok {
			t.Errorf("%s: SID %q", name, got)
		}
	}
}

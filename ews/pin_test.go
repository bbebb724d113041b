package ews

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"strings"
	"testing"
)

func TestParseFingerprint(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	lower := hex.EncodeToString(sum[:])
	upperColons := strings.ToUpper(strings.Join(splitPairs(lower), ":"))
	for _, in := range []string{
		"sha256:" + lower,
		"sha256:" + upperColons,
		"SHA256:" + upperColons,
		"  sha256:" + lower + "\n",
	} {
		f, err := ParseFingerprint(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if f.String() != "sha256:"+lower || f.IsZero() {
			t.Errorf("%q: canonical form %q", in, f)
		}
	}
	spki, err := ParseFingerprint("spki-sha256:" + upperColons)
	if err != nil || spki.String() != "spki-sha256:"+lower {
		t.Errorf("spki: %v, %v", spki, err)
	}
	cert, _ := ParseFingerprint("sha256:" + lower)
	if spki == cert {
		t.Error("an SPKI pin equals a certificate pin with the same digest")
	}
	if again, _ := ParseFingerprint("sha256:" + upperColons); again != cert {
		t.Error("equal fingerprints compare unequal")
	}
	for _, in := range []string{
		"", lower, "sha1:" + lower, "sha256:", "sha256:" + lower[:62], "sha256:" + lower + "00",
		"sha256:" + strings.Replace(lower, lower[:1], "g", 1), "spki:" + lower, "sha256 " + lower,
	} {
		if f, err := ParseFingerprint(in); err == nil {
			t.Errorf("%q accepted as %v", in, f)
		}
	}
	var zero Fingerprint
	if !zero.IsZero() || zero.String() != "" {
		t.Error("zero Fingerprint is not empty")
	}
}

func splitPairs(s string) []string {
	var out []string
	for i := 0; i < len(s); i += 2 {
		out = append(out, s[i:i+2])
	}
	return out
}

func TestFingerprintMatches(t *testing.T) {
	cert := &x509.Certificate{Raw: []byte("certificate DER"), RawSubjectPublicKeyInfo: []byte("spki DER")}
	certSum, spkiSum := sha256.Sum256(cert.Raw), sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	byCert, _ := ParseFingerprint("sha256:" + hex.EncodeToString(certSum[:]))
	bySPKI, _ := ParseFingerprint("spki-sha256:" + hex.EncodeToString(spkiSum[:]))
	crossed, _ := ParseFingerprint("sha256:" + hex.EncodeToString(spkiSum[:]))
	if !byCert.Matches(cert) || !bySPKI.Matches(cert) {
		t.Error("matching pins do not match")
	}
	if crossed.Matches(cert) || (Fingerprint{}).Matches(cert) {
		t.Error("a certificate pin matched the SPKI digest, or the zero pin matched")
	}
}

package testca_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/testca"
	"github.com/ensgate/ensgate/kcd"
)

func TestClientCertificateCarriesTheUPNAndSID(t *testing.T) {
	ca, err := testca.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	for _, upn := range []string{"alice@corp.example.test", ""} {
		sid := ""
		if upn != "" {
			sid = "S-1-5-21-1004336348-1177238915-682003330-1104"
		}
		tc, err := ca.IssueClient(pkix.Name{CommonName: "Alice"}, upn, sid)
		if err != nil {
			t.Fatal(err)
		}
		cert := tc.Leaf
		if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Fatalf("does not verify against the CA: %v", err)
		}
		got, ok := kcd.UPNFromCertificate(cert)
		if got != upn || ok != (upn != "") {
			t.Errorf("UPN %q (%v), want %q", got, ok, upn)
		}
		if got, ok := kcd.SIDFromCertificate(cert); got != sid || ok != (sid != "") {
			t.Errorf("SID %q (%v), want %q", got, ok, sid)
		}
	}
}

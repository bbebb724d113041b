// Package testca is a throwaway certificate authority for tests: server
// certificates for local TLS peers and client certificates (APNs
// certificate auth, Exchange certificate-based authentication).
package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority valid for a day.
type CA struct {
	Cert *x509.Certificate
	Pool *x509.CertPool // just Cert
	PEM  []byte         // Cert, PEM-encoded (for SSL_CERT_FILE)

	key *ecdsa.PrivateKey
}

// NewCA generates a CA valid for a day.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := Template(pkix.Name{CommonName: "ensgate test CA"})
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{
		Cert: cert,
		Pool: pool,
		PEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:  key,
	}, nil
}

// Template is a certificate template valid for a day, to pass to Issue.
func Template(subject pkix.Name) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
}

// IssueClient returns a client certificate for subject, as an AD
// certificate authority issues them for smart-card logon: a non-empty upn
// goes into the subject alternative name as Microsoft's UPN otherName, a
// non-empty sid into the strong-mapping extension (KB5014754).
func (ca *CA) IssueClient(subject pkix.Name, upn, sid string) (tls.Certificate, error) {
	tmpl := Template(subject)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	for _, ext := range []struct {
		id, nameType asn1.ObjectIdentifier
		value        string
		params       string
	}{
		{asn1.ObjectIdentifier{2, 5, 29, 17}, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 20, 2, 3}, upn, "utf8"},
		{asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 25, 2}, asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 25, 2, 1}, sid, ""},
	} {
		if ext.value == "" {
			continue
		}
		var value any = ext.value
		if ext.params == "" {
			value = []byte(ext.value) // an OCTET STRING
		}
		der, err := otherNames(ext.nameType, value, ext.params)
		if err != nil {
			return tls.Certificate{}, err
		}
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: ext.id, Value: der})
	}
	return ca.Issue(tmpl)
}

// otherNames is SEQUENCE { otherName { nameType, [0] value } }, the shape
// of both a subject alternative name with one UPN and AD's SID extension.
func otherNames(nameType asn1.ObjectIdentifier, value any, params string) ([]byte, error) {
	v, err := asn1.MarshalWithParams(value, params)
	if err != nil {
		return nil, err
	}
	other, err := asn1.Marshal(struct {
		Type  asn1.ObjectIdentifier
		Value asn1.RawValue
	}{
		nameType,
		asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: v}, // [0] EXPLICIT
	})
	if err != nil {
		return nil, err
	}
	// otherName is [0] IMPLICIT: the SEQUENCE tag becomes context 0.
	other[0] = 0xa0
	return asn1.Marshal([]asn1.RawValue{{FullBytes: other}})
}

// WritePEM writes cert and its PKCS#8 key to dir/name.pem and returns the path.
func WritePEM(dir, name string, cert tls.Certificate) (string, error) {
	key, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return "", err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})...)
	path := filepath.Join(dir, name+".pem")
	return path, os.WriteFile(path, out, 0o600)
}

// IssueServer returns a server certificate for 127.0.0.1, ::1 and
// localhost.
func (ca *CA) IssueServer() (tls.Certificate, error) {
	tmpl := Template(pkix.Name{CommonName: "localhost"})
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	tmpl.DNSNames = []string{"localhost"}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	return ca.Issue(tmpl)
}

// Issue signs tmpl for a new P-256 key; Leaf is the parsed certificate.
func (ca *CA) Issue(tmpl *x509.Certificate) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

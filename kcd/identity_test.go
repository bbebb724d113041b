package kcd

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// GeneralName encoders, written from RFC 5280 independently of the parser
// (RawValue for each tag, asn1.Marshal for the framing).

func contextName(tag int, compound bool, body []byte) asn1.RawValue {
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, IsCompound: compound, Bytes: body}
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	der, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// otherName is [0] { type-id OID, [0] EXPLICIT value }.
func otherName(t testing.TB, oid asn1.ObjectIdentifier, value asn1.RawValue) asn1.RawValue {
	explicit := contextName(0, true, mustMarshal(t, value))
	body := append(mustMarshal(t, oid), mustMarshal(t, explicit)...)
	return contextName(0, true, body)
}

func upnOfType(t testing.TB, tag int, s string) asn1.RawValue {
	return otherName(t, oidMicrosoftUPN, asn1.RawValue{Tag: tag, Bytes: []byte(s)})
}

func upnName(t testing.TB, s string) asn1.RawValue { return upnOfType(t, asn1.TagUTF8String, s) }
func emailName(s string) asn1.RawValue             { return contextName(1, false, []byte(s)) }
func dnsName(s string) asn1.RawValue               { return contextName(2, false, []byte(s)) }
func uriName(s string) asn1.RawValue               { return contextName(6, false, []byte(s)) }
func ipName(ip net.IP) asn1.RawValue               { return contextName(7, false, ip.To4()) }

func dirName(t testing.TB, cn string) asn1.RawValue {
	rdn := pkix.Name{CommonName: cn}.ToRDNSequence()
	return contextName(4, true, mustMarshal(t, rdn)) // [4] is EXPLICIT (a CHOICE)
}

func marshalSAN(t testing.TB, names ...asn1.RawValue) []byte {
	return mustMarshal(t, names) // SEQUENCE OF GeneralName
}

var testKey = sync.OnceValue(func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

// newCert makes a self-signed certificate whose SAN extension (if san is not
// nil) is exactly san, and checks that crypto/x509 parses it.
func newCert(t *testing.T, subject pkix.Name, san []byte) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      subject,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if san != nil {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: oidSubjectAltName, Value: san}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, testKey().Public(), testKey())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("crypto/x509 refuses the certificate: %v", err)
	}
	return cert
}

const alice = "alice@corp.example.test"

func TestIdentityUPNFromCertificate(t *testing.T) {
	otherType := otherName(t, asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 8, 9}, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte("x@y")})
	badOtherName := contextName(0, true, append(mustMarshal(t, oidMicrosoftUPN), mustMarshal(t, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(alice)})...)) // value not in [0] EXPLICIT
	cases := []struct {
		name  string
		names []asn1.RawValue // nil: no SAN extension
		want  string          // "": none
	}{
		{"upn alone", []asn1.RawValue{upnName(t, alice)}, alice},
		{"upn among other kinds", []asn1.RawValue{
			dnsName("host.example.test"), emailName("a@mail.example.test"), dirName(t, "Alice"),
			uriName("https://example.test/a"), ipName(net.IPv4(192, 0, 2, 1)), otherType, upnName(t, alice),
		}, alice},
		{"two upns: the first", []asn1.RawValue{upnName(t, alice), upnName(t, "bob@corp.example.test")}, alice},
		{"invalid upn skipped for a later valid one", []asn1.RawValue{upnName(t, "alice"), upnName(t, alice)}, alice},
		{"ia5 upn ignored", []asn1.RawValue{upnOfType(t, asn1.TagIA5String, alice)}, ""},
		{"ia5 upn then utf8 upn", []asn1.RawValue{upnOfType(t, asn1.TagIA5String, "bob@corp.example.test"), upnName(t, alice)}, alice},
		{"printable upn ignored", []asn1.RawValue{upnOfType(t, asn1.TagPrintableString, "alice")}, ""},
		{"empty upn", []asn1.RawValue{upnName(t, "")}, ""},
		{"upn without @", []asn1.RawValue{upnName(t, "alice")}, ""},
		{"upn with two @", []asn1.RawValue{upnName(t, "alice@corp@example.test")}, ""},
		{"upn with empty user", []asn1.RawValue{upnName(t, "@corp.example.test")}, ""},
		{"upn with empty domain", []asn1.RawValue{upnName(t, "alice@")}, ""},
		{"upn with newline", []asn1.RawValue{upnName(t, "alice@corp.example.test\nadmin")}, ""},
		{"upn with NUL", []asn1.RawValue{upnName(t, "alice@corp.example.test\x00.evil")}, ""},
		{"upn with C1 control", []asn1.RawValue{upnName(t, "alice\u0085@corp.example.test")}, ""},
		{"upn with slash", []asn1.RawValue{upnName(t, "krbtgt/CORP@corp.example.test")}, ""},
		{"upn with backslash", []asn1.RawValue{upnName(t, `corp\alice@corp.example.test`)}, ""},
		{"upn of invalid utf-8", []asn1.RawValue{upnName(t, "al\xffce@corp.example.test")}, ""},
		{"non-ascii upn", []asn1.RawValue{upnName(t, "jürgen@corp.example.test")}, "jürgen@corp.example.test"},
		{"malformed otherName, then email", []asn1.RawValue{badOtherName, emailName("a@mail.example.test")}, ""},
		{"other otherName type only", []asn1.RawValue{otherType}, ""},
		{"san without otherName", []asn1.RawValue{dnsName("host.example.test"), emailName("a@mail.example.test")}, ""},
		{"no san", nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var san []byte
			if tc.names != nil {
				san = marshalSAN(t, tc.names...)
			}
			cert := newCert(t, pkix.Name{CommonName: "Alice"}, san)
			got, ok := UPNFromCertificate(cert)
			if got != tc.want || ok != (tc.want != "") {
				t.Errorf("UPNFromCertificate = %q, %v; want %q", got, ok, tc.want)
			}
			if got, _ := UPNFromSAN(san); got != tc.want {
				t.Errorf("UPNFromSAN = %q; want %q", got, tc.want)
			}
			// crypto/x509 still reads the kinds it knows from our encoding.
			for _, n := range tc.names {
				if n.Class == asn1.ClassContextSpecific && n.Tag == 1 {
					if len(cert.EmailAddresses) != 1 || cert.EmailAddresses[0] != string(n.Bytes) {
						t.Errorf("EmailAddresses = %q; want [%q]", cert.EmailAddresses, n.Bytes)
					}
				}
			}
			if tc.name == "upn among other kinds" &&
				(len(cert.DNSNames) != 1 || len(cert.URIs) != 1 || len(cert.IPAddresses) != 1) {
				t.Errorf("x509 parsed DNS %q, URIs %v, IPs %v", cert.DNSNames, cert.URIs, cert.IPAddresses)
			}
		})
	}
	if got, ok := UPNFromCertificate(nil); ok || got != "" {
		t.Errorf("UPNFromCertificate(nil) = %q, %v", got, ok)
	}
}

func TestIdentityUPNFromSANMalformed(t *testing.T) {
	good := marshalSAN(t, upnName(t, alice))
	if got, ok := UPNFromSAN(good); !ok || got != alice {
		t.Fatalf("control: UPNFromSAN = %q, %v", got, ok)
	}
	// upn wrapped with a [0] whose length runs past its sequence
	overlong := bytes.Clone(good)
	overlong[3]++
	cases := map[string][]byte{
		"nil":                  nil,
		"empty sequence":       {0x30, 0x00},
		"not a sequence":       mustMarshal(t, asn1.RawValue{Tag: asn1.TagSet, IsCompound: true, Bytes: good[2:]}),
		"trailing data":        append(bytes.Clone(good), 0x00),
		"truncated":            good[:len(good)-1],
		"inner length too big": overlong,
		"indefinite length":    append([]byte{0x30, 0x80}, append(good[2:], 0, 0)...),
		"upn then garbage":     append([]byte{0x30, byte(len(good) - 2 + 2)}, append(good[2:], 0xa0, 0x05)...),
		// A UPN's otherName body under the wrong tag, class or form.
		"primitive [0]":      marshalSAN(t, contextName(0, false, upnName(t, alice).Bytes)),
		"ediPartyName [5]":   marshalSAN(t, contextName(5, true, upnName(t, alice).Bytes)),
		"universal sequence": marshalSAN(t, asn1.RawValue{Tag: asn1.TagSequence, IsCompound: true, Bytes: upnName(t, alice).Bytes}),
		"application [0]":    marshalSAN(t, asn1.RawValue{Class: asn1.ClassApplication, IsCompound: true, Bytes: upnName(t, alice).Bytes}),
		"value in application [0]": marshalSAN(t, contextName(0, true, append(mustMarshal(t, oidMicrosoftUPN),
			mustMarshal(t, asn1.RawValue{Class: asn1.ClassApplication, IsCompound: true, Bytes: mustMarshal(t, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(alice)})})...))),
		"value tagged [1]": marshalSAN(t, contextName(0, true, append(mustMarshal(t, oidMicrosoftUPN),
			mustMarshal(t, contextName(1, true, mustMarshal(t, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(alice)})))...))),
		"value primitive [0]": marshalSAN(t, contextName(0, true, append(mustMarshal(t, oidMicrosoftUPN),
			mustMarshal(t, contextName(0, false, mustMarshal(t, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(alice)})))...))),
		"otherName, no value": marshalSAN(t, contextName(0, true, mustMarshal(t, oidMicrosoftUPN))),
		"otherName, two values": marshalSAN(t, contextName(0, true, append(upnName(t, alice).Bytes,
			mustMarshal(t, contextName(0, true, mustMarshal(t, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(alice)})))...))),
		"explicit wraps two values": marshalSAN(t, contextName(0, true, append(mustMarshal(t, oidMicrosoftUPN),
			mustMarshal(t, contextName(0, true, bytes.Repeat(mustMarshal(t, asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(alice)}), 2)))...))),
		// DER strings are primitive; this one's bytes would read as a UPN.
		"constructed utf8": marshalSAN(t, otherName(t, oidMicrosoftUPN, asn1.RawValue{Tag: asn1.TagUTF8String, IsCompound: true, Bytes: []byte(alice)})),
	}
	for name, der := range cases {
		if got, ok := UPNFromSAN(der); ok || got != "" {
			t.Errorf("%s: UPNFromSAN(%x) = %q, %v; want none", name, der, got, ok)
		}
	}
}

func TestIdentityMapperSources(t *testing.T) {
	both := newCert(t, pkix.Name{CommonName: "Alice"}, marshalSAN(t, upnName(t, alice), emailName("alice.smith@mail.example.test")))
	emailOnly := newCert(t, pkix.Name{CommonName: "Alice"}, marshalSAN(t, dnsName("host.example.test"), emailName("alice.smith@mail.example.test")))
	cnOnly := newCert(t, pkix.Name{CommonName: "alice"}, nil)
	nothing := newCert(t, pkix.Name{Organization: []string{"Example"}}, nil)
	// Personal data that must stay out of errors.
	secret := "mallory.secret"
	unusable := newCert(t, pkix.Name{CommonName: secret + "/x"},
		marshalSAN(t, upnName(t, secret), emailName(secret+"@a@b")))
	twoCNs := newCert(t, pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
		{Type: oidCommonName, Value: "alice"}, {Type: oidCommonName, Value: "mallory"}}}, nil)
	cases := []struct {
		name    string
		sources []string
		cert    *x509.Certificate
		want    string
		wantErr string // substring of the ErrNoIdentity error
	}{
		{"upn first", []string{"upn", "email"}, both, alice, ""},
		{"email first", []string{"email", "upn"}, both, "alice.smith@mail.example.test", ""},
		{"only email", []string{"upn", "email", "cn"}, emailOnly, "alice.smith@mail.example.test", ""},
		{"only cn", []string{"upn", "email", "cn"}, cnOnly, "alice", ""},
		{"cn first", []string{"cn", "upn"}, both, "Alice", ""},
		{"cn not configured", []string{"upn", "email"}, cnOnly, "", ": upn absent, email absent"},
		{"nothing", []string{"upn", "email", "cn"}, nothing, "", ": upn absent, email absent, cn absent"},
		{"unusable values", []string{"upn", "email", "cn"}, unusable, "", ": upn unusable, email unusable, cn unusable"},
		{"two cns are ambiguous", []string{"cn"}, twoCNs, "", ": cn unusable"},
		{"nil certificate", []string{"upn"}, nil, "", "no certificate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := NewIdentityMapper(tc.sources, "")
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Identity(tc.cert)
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("Identity = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if !errors.Is(err, ErrNoIdentity) || got != "" || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Identity = %q, %v; want ErrNoIdentity with %q", got, err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "mallory") {
				t.Errorf("the error leaks the certificate's names: %v", err)
			}
		})
	}
}

func TestIdentityTemplate(t *testing.T) {
	upn := newCert(t, pkix.Name{CommonName: "alice"}, marshalSAN(t, upnName(t, alice)))
	cn := newCert(t, pkix.Name{CommonName: "alice"}, nil)
	cnWithAt := newCert(t, pkix.Name{CommonName: "alice@corp"}, nil)
	cases := []struct {
		template string
		sources  []string
		cert     *x509.Certificate
		want     string // "": ErrNoIdentity
	}{
		{"", []string{"upn"}, upn, alice},
		{"{value}", []string{"upn"}, upn, alice},
		{"{user}@CORP.EXAMPLE.TEST", []string{"upn"}, upn, "alice@CORP.EXAMPLE.TEST"},
		{"{user}@CORP.EXAMPLE.TEST", []string{"cn"}, cn, "alice@CORP.EXAMPLE.TEST"},
		{"{user}@CORP.EXAMPLE.TEST", []string{"cn"}, cnWithAt, "alice@CORP.EXAMPLE.TEST"},
		{"{user}@{domain}", []string{"upn"}, upn, alice},
		{"{user}.ext@{domain}", []string{"upn"}, upn, "alice.ext@corp.example.test"},
		{"{user}", []string{"upn"}, upn, "alice"},
		{"{value}@CORP.EXAMPLE.TEST", []string{"cn"}, cn, "alice@CORP.EXAMPLE.TEST"},
		// A CN without '@' has no {domain}: that source gives nothing.
		{"{user}@{domain}", []string{"cn"}, cn, ""},
		{"{user}.{domain}", []string{"cn"}, cn, ""},
		// The result must be a valid name ("alice@corp.example.test@CORP"
		// is not), else the next source is tried.
		{"{value}@CORP.EXAMPLE.TEST", []string{"upn"}, upn, ""},
		{"{value}@CORP.EXAMPLE.TEST", []string{"upn", "cn"}, upn, "alice@CORP.EXAMPLE.TEST"},
		{"{domain}-{user}", []string{"upn"}, upn, "corp.example.test-alice"},
	}
	for _, tc := range cases {
		m, err := NewIdentityMapper(tc.sources, tc.template)
		if err != nil {
			t.Fatalf("%q: %v", tc.template, err)
		}
		got, err := m.Identity(tc.cert)
		if tc.want == "" {
			if !errors.Is(err, ErrNoIdentity) {
				t.Errorf("%q %v: Identity = %q, %v; want ErrNoIdentity", tc.template, tc.sources, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q %v: Identity = %q, %v; want %q", tc.template, tc.sources, got, err, tc.want)
		}
	}
}

func TestIdentityMapperConfig(t *testing.T) {
	bad := []struct {
		sources  []string
		template string
		want     string
	}{
		{nil, "", "no sources"},
		{[]string{}, "", "no sources"},
		{[]string{"dns"}, "", `unknown source "dns"`},
		{[]string{"UPN"}, "", `unknown source "UPN"`},
		{[]string{""}, "", `unknown source ""`},
		{[]string{"upn", "email", "upn"}, "", `"upn" listed twice`},
		{[]string{"upn"}, "{user", "unclosed"},
		{[]string{"upn"}, "user}@X", "without '{'"},
		{[]string{"upn"}, "{usr}@X", "unknown placeholder {usr}"},
		{[]string{"upn"}, "{}@X", "unknown placeholder {}"},
		{[]string{"upn"}, "{{user}}", "unknown placeholder {{user}"},
		{[]string{"upn"}, "{User}@X", "unknown placeholder {User}"},
		{[]string{"upn"}, "admin@CORP", "neither {user} nor {value}"},
		{[]string{"upn"}, "admin@{domain}", "neither {user} nor {value}"},
		{[]string{"upn"}, "host/{user}", "'/'"},
		{[]string{"upn"}, `CORP\{user}`, "'/'"},
		{[]string{"upn"}, "{user}@X\n", "control character"},
	}
	for _, tc := range bad {
		m, err := NewIdentityMapper(tc.sources, tc.template)
		if err == nil || m != nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewIdentityMapper(%q, %q) = %v, %v; want an error with %q", tc.sources, tc.template, m, err, tc.want)
		}
	}

	// The mapper keeps its own copy of the sources.
	sources := []string{"cn"}
	m, err := NewIdentityMapper(sources, "")
	if err != nil {
		t.Fatal(err)
	}
	sources[0] = "upn"
	if got, err := m.Identity(newCert(t, pkix.Name{CommonName: "alice"}, nil)); err != nil || got != "alice" {
		t.Errorf("after changing the caller's slice: Identity = %q, %v", got, err)
	}
}

func TestIdentityConcurrent(t *testing.T) {
	m, err := NewIdentityMapper([]string{"upn", "cn"}, "{user}@CORP.EXAMPLE.TEST")
	if err != nil {
		t.Fatal(err)
	}
	cert := newCert(t, pkix.Name{CommonName: "bob"}, marshalSAN(t, upnName(t, alice)))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				if got, err := m.Identity(cert); err != nil || got != "alice@CORP.EXAMPLE.TEST" {
					t.Errorf("Identity = %q, %v", got, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// openSSLSAN is the SAN extension value of a certificate made by OpenSSL
// 3.0 with subjectAltName=otherName:1.3.6.1.4.1.311.20.2.3;UTF8:alice@corp.example.test,
// email:alice@mail.example.test,DNS:host.example.test (a fuzz seed and
// the expected encoding).
const openSSLSAN = "3055a027060a2b060104018237140203a0190c17616c69636540636f72702e6578616d706c652e746573748117616c696365406d61696c2e6578616d706c652e746573748211686f73742e6578616d706c652e74657374"

// TestIdentityOpenSSL proves the parser, and the test encoder, against
// certificates from an independent encoder.
func TestIdentityOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("openssl not installed")
	}
	run := func(san string) *x509.Certificate {
		t.Helper()
		dir := t.TempDir()
		certFile := filepath.Join(dir, "cert.pem")
		cmd := exec.CommandContext(t.Context(), openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
			"-nodes", "-keyout", filepath.Join(dir, "key.pem"), "-out", certFile, "-days", "1", "-subj", "/CN=Alice",
			"-addext", "subjectAltName="+san)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("openssl: %v\n%s", err, out)
		}
		data, err := os.ReadFile(certFile)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(data)
		if block == nil {
			t.Fatalf("openssl wrote no PEM: %q", data)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}

	cert := run("otherName:1.3.6.1.4.1.311.20.2.3;UTF8:" + alice + ",email:alice@mail.example.test,DNS:host.example.test")
	if got, ok := UPNFromCertificate(cert); !ok || got != alice {
		t.Errorf("UPNFromCertificate = %q, %v; want %q", got, ok, alice)
	}
	if len(cert.EmailAddresses) != 1 || cert.EmailAddresses[0] != "alice@mail.example.test" {
		t.Errorf("EmailAddresses = %q", cert.EmailAddresses)
	}
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidSubjectAltName) {
			ours := marshalSAN(t, upnName(t, alice), emailName("alice@mail.example.test"), dnsName("host.example.test"))
			if !bytes.Equal(ext.Value, ours) {
				t.Errorf("OpenSSL's SAN %x\ndiffers from the test encoder's %x", ext.Value, ours)
			}
			if hex.EncodeToString(ext.Value) != openSSLSAN {
				t.Errorf("OpenSSL's SAN %x differs from openSSLSAN", ext.Value)
			}
		}
	}
	m, err := NewIdentityMapper([]string{"email", "upn"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := m.Identity(cert); err != nil || got != "alice@mail.example.test" {
		t.Errorf("Identity(email, upn) = %q, %v", got, err)
	}

	// msUPN is OpenSSL's name for the OID; an IA5String UPN is ignored.
	cert = run("otherName:msUPN;IA5STRING:bob@corp.example.test,otherName:msUPN;UTF8:" + alice)
	if got, ok := UPNFromCertificate(cert); !ok || got != alice {
		t.Errorf("after an IA5String UPN: UPNFromCertificate = %q, %v; want %q", got, ok, alice)
	}
}

func FuzzUPNFromSAN(f *testing.F) {
	seed, err := hex.DecodeString(openSSLSAN)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add(marshalSAN(f, upnName(f, alice)))
	f.Add(marshalSAN(f, dnsName("host.example.test"), upnOfType(f, asn1.TagIA5String, "bob@corp.example.test"),
		upnName(f, "jürgen@corp.example.test"), emailName("a@mail.example.test"), dirName(f, "Alice")))
	f.Add(marshalSAN(f, upnName(f, "alice"), upnName(f, "a\n@b")))
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		upn, ok := UPNFromSAN(der)
		if ok != (upn != "") {
			t.Fatalf("UPNFromSAN = %q, %v", upn, ok)
		}
		if !ok {
			return
		}
		if !validUserName(upn, true) {
			t.Fatalf("UPNFromSAN returned an invalid name %q", upn)
		}
		// The UPN survives re-encoding, alone or after other names.
		for _, again := range [][]byte{
			marshalSAN(t, upnName(t, upn)),
			marshalSAN(t, dnsName("host.example.test"), upnOfType(t, asn1.TagIA5String, "x@y"), upnName(t, upn)),
		} {
			if got, ok := UPNFromSAN(again); !ok || got != upn {
				t.Fatalf("re-encoded %q: UPNFromSAN = %q, %v", upn, got, ok)
			}
		}
	})
}

package apnsfake

import (
	"crypto/x509/pkix"

	"github.com/ensgate/ensgate/internal/testenv/testca"
)

// IssueClient writes dir/apns-<topic>.pem holding an APNs client
// certificate for topic (in the subject's UID, as Apple's) and its PKCS#8
// key, issued by ca.
func IssueClient(ca *testca.CA, dir, topic string) (path string, err error) {
	cert, err := ca.IssueClient(pkix.Name{
		CommonName: "Apple Push Services: " + topic,
		ExtraNames: []pkix.AttributeTypeAndValue{{Type: oidUID, Value: topic}},
	}, "", "")
	if err != nil {
		return "", err
	}
	return testca.WritePEM(dir, "apns-"+topic, cert)
}

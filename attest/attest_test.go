package attest_test

import (
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/attest"
)

// getItem is the body of one of ENS's attested calls.
const getItem = `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/>` +
	`<s:Body><m:GetItem xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"/></s:Body></s:Envelope>`

func TestAttestationExpiresAndBindsEverything(t *testing.T) {
	now := time.Now()
	a := attest.Attestation{Secret: []byte("s"), Now: func() time.Time { return now }}
	request := func(method, target, auth, body string) (*http.Request, []byte) {
		r := httptest.NewRequest(method, target, strings.NewReader(body))
		if auth != "" {
			r.Header.Set("Authorization", auth)
		}
		return r, []byte(body)
	}
	r, body := request("POST", "/EWS/Exchange.asmx", "Basic YWxpY2U6cHc=", getItem)
	v := a.SignRequest(7, []string{"a,b", "c;d", "é"}, r, body)
	tenant, ids, err := a.Verify(v, r, body)
	if err != nil || tenant != 7 || strings.Join(ids, "|") != "a,b|c;d|é" {
		t.Fatalf("verify = %d %q %v", tenant, ids, err)
	}
	for name, bad := range map[string]string{
		"other tenant": strings.Replace(v, ";7;", ";8;", 1),
		"truncated":    v[:len(v)-2],
		"empty":        "",
		"as v1":        strings.Replace(v, "v2;", "v1;", 1),
	} {
		if _, _, err := a.Verify(bad, r, body); err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	// Replayed with any other request, it is worthless.
	for name, other := range map[string][4]string{
		"other body":          {"POST", "/EWS/Exchange.asmx", "Basic YWxpY2U6cHc=", strings.Replace(getItem, "GetItem", "FindItem", 2)},
		"other path":          {"POST", "/EWS/Exchange2.asmx", "Basic YWxpY2U6cHc=", getItem},
		"other credentials":   {"POST", "/EWS/Exchange.asmx", "Basic Ym9iOnB3", getItem},
		"without credentials": {"POST", "/EWS/Exchange.asmx", "", getItem},
		"other method":        {"PUT", "/EWS/Exchange.asmx", "Basic YWxpY2U6cHc=", getItem},
	} {
		r, body := request(other[0], other[1], other[2], other[3])
		if _, _, err := a.Verify(v, r, body); err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	for _, age := range []time.Duration{61 * time.Second, -61 * time.Second} {
		later := attest.Attestation{Secret: []byte("s"), Now: func() time.Time { return now.Add(age) }}
		if _, _, err := later.Verify(v, r, body); err == nil {
			t.Errorf("an attestation verified %v later", age)
		}
	}
	// Signer is what ENS hands to the ews client (ews.WithRequestSigner).
	signed, _ := request("POST", "/EWS/Exchange.asmx", "Basic YWxpY2U6cHc=", getItem)
	a.Signer(7, []string{"a"})(signed, body)
	if _, ids, err := a.Verify(signed.Header.Get(attest.DevicesHeader), signed, body); err != nil || len(ids) != 1 {
		t.Errorf("Signer: %q %v", ids, err)
	}
	// The unbound v1 form is gone: a v1 header, even correctly signed
	// over its head alone, is refused.
	if _, _, err := a.Verify(strings.Replace(v, "v2;", "v1;", 1), r, body); err == nil {
		t.Error("a v1 attestation verified")
	}
}

// The accepted-devices answer round-trips any id, and an empty answer
// (no device accepted) is an empty list, not one empty id.
func TestIDListsRoundTrip(t *testing.T) {
	for _, ids := range [][]string{nil, {"phone"}, {"a,b", "c;d", "é", "100%", " "}} {
		got, err := attest.SplitIDs(attest.JoinIDs(ids))
		if err != nil || !slices.Equal(got, ids) {
			t.Errorf("SplitIDs(JoinIDs(%q)) = %q, %v", ids, got, err)
		}
	}
	if _, err := attest.SplitIDs("good,%zz"); err == nil {
		t.Error("a malformed escape was accepted")
	}
}

package ewssim

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

func TestHostileXMLRefused(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	for name, doc := range map[string]string{
		"internal entity": `<?xml version="1.0"?><!DOCTYPE lol [<!ENTITY lol "lol">]>` + string(soapRequest(`<m:GetFolder>&lol;</m:GetFolder>`))[len(`<?xml version="1.0" encoding="utf-8"?>`):],
		"external entity": `<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><x>&xxe;</x>`,
		"doctype only":    `<!DOCTYPE html>` + string(soapRequest(getInboxOp))[len(`<?xml version="1.0" encoding="utf-8"?>`):],
		"undeclared":      string(soapRequest(`<m:GetFolder>&undeclared;</m:GetFolder>`)),
		"not XML":         "hello",
		"SOAP 1.2":        strings.ReplaceAll(string(soapRequest(getInboxOp)), "http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope"),
	} {
		resp, b := post(t, ts.EWSURL, alice, alicePW, []byte(doc))
		if resp.StatusCode != http.StatusInternalServerError || one(t, b, "ResponseCode") != "ErrorSchemaValidation" {
			t.Errorf("%s: HTTP %d %s", name, resp.StatusCode, b)
		}
		if bytes.Contains(b, []byte("root:")) {
			t.Errorf("%s: file content leaked", name)
		}
	}
	if c := ts.Counters(); c.Requests["GetFolder"] != 0 {
		t.Errorf("a hostile document was processed as GetFolder: %v", c.Requests)
	}
}

func TestBodyLimit(t *testing.T) {
	ts := Start(t, Config{Users: testUsers(), MaxBodyBytes: 2048})
	big := soapRequest(`<m:GetFolder>` + strings.Repeat(" ", 4096) + `</m:GetFolder>`)
	if resp, _ := post(t, ts.EWSURL, alice, alicePW, big); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized body: HTTP %d", resp.StatusCode)
	}
	callEWS(t, ts, getInboxOp, http.StatusOK)
}

func TestRoutingAndNamespaces(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	// Any case of the path, and any prefixes (here a default namespace).
	defaultNS := `<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>
<GetFolder xmlns="http://schemas.microsoft.com/exchange/services/2006/messages">
<FolderShape><BaseShape xmlns="http://schemas.microsoft.com/exchange/services/2006/types">Default</BaseShape></FolderShape>
<FolderIds><DistinguishedFolderId xmlns="http://schemas.microsoft.com/exchange/services/2006/types" Id="inbox"/></FolderIds>
</GetFolder></Body></Envelope>`
	for _, path := range []string{"/ews/exchange.asmx", "/EWS/EXCHANGE.ASMX"} {
		resp, b := post(t, ts.URL+path, alice, alicePW, []byte(defaultNS))
		if resp.StatusCode != http.StatusOK || one(t, b, "DisplayName") != "Inbox" {
			t.Errorf("%s: HTTP %d %s", path, resp.StatusCode, b)
		}
	}
	// The operation must be in the messages namespace.
	wrongNS := strings.Replace(defaultNS, "2006/messages", "2006/other", 1)
	if resp, b := post(t, ts.EWSURL, alice, alicePW, []byte(wrongNS)); resp.StatusCode != http.StatusInternalServerError || one(t, b, "ResponseCode") != "ErrorSchemaValidation" {
		t.Errorf("operation in a foreign namespace: HTTP %d %s", resp.StatusCode, b)
	}
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/EWS/Other.asmx", http.StatusNotFound},
		{http.MethodPost, "/", http.StatusNotFound},
		{http.MethodGet, EWSPath, http.StatusMethodNotAllowed},
	} {
		req, _ := http.NewRequest(tc.method, ts.URL+tc.path, nil)
		req.SetBasicAuth(alice, alicePW)
		if resp, _ := do(t, req); resp.StatusCode != tc.want {
			t.Errorf("%s %s: HTTP %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
}

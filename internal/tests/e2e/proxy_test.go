package e2e

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/ensgate/ensgate/internal/testenv/exchangelib"
	"github.com/ensgate/ensgate/internal/testenv/pgtest"
)

const getFolder = `<?xml version="1.0" encoding="utf-8"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">
<s:Header><t:RequestServerVersion Version="Exchange2013_SP1"/></s:Header>
<s:Body><m:GetFolder><m:FolderShape><t:BaseShape>Default</t:BaseShape></m:FolderShape>
<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder></s:Body></s:Envelope>`

// ewsCall posts GetFolder through the gateway as a device would.
func ewsCall(t *testing.T, url, deviceID, authorization string) (*http.Response, string) {
	t.Helper()
	return postGetFolder(t, http.DefaultClient, url, deviceID, authorization)
}

// postGetFolder posts GetFolder with c, naming the device (if any) in
// X-Device-Id.
func postGetFolder(t testing.TB, c *http.Client, url, deviceID, authorization string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(getFolder))
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	if deviceID != "" {
		req.Header.Set("X-Device-Id", deviceID)
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func TestProxyEnforcesComplianceOnEveryNode(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	db := []string{"DATABASE_URL=" + dbURL}
	for _, args := range [][]string{
		{"ens", "migrate"},
		{"ens", "tenant", "create", "--name", "contoso"},
		{"ens", "device", "unblock", "--tenant", "contoso", "--device", "dev-ok"},
		{"ens", "device", "block", "--tenant", "contoso", "--device", "dev-blocked"},
		{"ens", "device", "remove", "--tenant", "contoso", "--device", "dev-wiped"},
	} {
		if r := cli(t, db, args...); r.code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	sim := ewssim.Start(t, ewssim.Config{Users: []ewssim.User{{Address: "alice@contoso.test", Password: "pw"}}})
	envA, baseA := gatewayEnv(t, dbURL, sim.URL)
	envB, baseB := gatewayEnv(t, dbURL, sim.URL)
	startGateway(t, envA)
	startGateway(t, envB)
	waitFor(t, baseA+"/api/ens/alive", 200, 30*time.Second).Body.Close()
	waitFor(t, baseB+"/api/ens/alive", 200, 30*time.Second).Body.Close()
	basic := "Basic YWxpY2VAY29udG9zby50ZXN0OnB3" // alice@contoso.test:pw
	ews := "/EWS/Exchange.asmx"

	reached := func() int64 { return sim.Counters().Requests["GetFolder"] }
	resp, body := ewsCall(t, baseA+ews, "dev-ok", basic)
	if resp.StatusCode != 200 || !strings.Contains(body, "UnreadCount") || reached() != 1 {
		t.Fatalf("compliant device: %d, %d upstream calls: %.200s", resp.StatusCode, reached(), body)
	}
	for _, dev := range []string{"dev-blocked", "dev-wiped", "stranger", ""} {
		resp, body := ewsCall(t, baseA+ews, dev, basic)
		if resp.StatusCode != 403 || !strings.Contains(body, "ErrorAccessDenied") {
			t.Errorf("device %q: %d %.200s", dev, resp.StatusCode, body)
		}
	}
	if n := reached(); n != 1 {
		t.Errorf("refused devices reached Exchange: %d GetFolder calls, want 1", n)
	}

	// Challenges a client cannot complete are hidden; Basic stays.
	resp, _ = ewsCall(t, baseA+"/ews/exchange.asmx", "dev-ok", "")
	if got := resp.Header.Values("WWW-Authenticate"); resp.StatusCode != 401 || len(got) != 1 || !strings.HasPrefix(got[0], "Basic ") {
		t.Errorf("upstream 401 through the proxy: %d, challenges %q", resp.StatusCode, got)
	}
	// NTLM is refused at the gateway.
	before := sim.Counters().Auth
	resp, body = ewsCall(t, baseA+ews, "dev-ok", "NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAKAGFKAAAADw==")
	if got := resp.Header.Values("WWW-Authenticate"); resp.StatusCode != 401 || len(got) != 1 || !strings.HasPrefix(got[0], "Basic ") || !strings.Contains(body, "NTLM") {
		t.Errorf("NTLM request: %d, challenges %q, %q", resp.StatusCode, got, body)
	}
	if after := sim.Counters().Auth; after["ntlm_refused"] != before["ntlm_refused"] {
		t.Error("the NTLM request reached Exchange")
	}

	// A block made with the CLI (a third process) reaches both gateways.
	start := time.Now()
	if r := cli(t, db, "ens", "device", "block", "--tenant", "contoso", "--device", "dev-ok"); r.code != 0 {
		t.Fatalf("block: %+v", r)
	}
	for _, base := range []string{baseB, baseA} {
		for {
			resp, _ := ewsCall(t, base+ews, "dev-ok", basic)
			if resp.StatusCode == 403 {
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("%s still lets the blocked device through after 5 s", base)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	took := time.Since(start)
	t.Logf("block enforced by both gateways %v after the CLI started", took)
	if took > 1500*time.Millisecond { // the CLI's own start-up is in this figure
		t.Errorf("block took %v to reach both gateways, want about a second", took)
	}
}

// TestExchangelibThroughTheProxy: a real EWS client we did not write reads
// an Inbox through bin/ensgate's /EWS when its device is compliant, and is
// refused once the device is blocked.
func TestExchangelibThroughTheProxy(t *testing.T) {
	exchangelib.Require(t)
	dbURL := pgtest.NewDatabase(t)
	db := []string{"DATABASE_URL=" + dbURL}
	for _, args := range [][]string{{"ens", "migrate"}, {"ens", "tenant", "create", "--name", "contoso"},
		{"ens", "device", "unblock", "--tenant", "contoso", "--device", "phone-7"}} {
		if r := cli(t, db, args...); r.code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	sim := ewssim.Start(t, ewssim.Config{Users: []ewssim.User{{Address: "alice@contoso.test", Password: "pw"}}})
	sim.Deliver("alice@contoso.test", ewssim.Mail{From: "carol@fabrikam.test", FromName: "Carol", Subject: "Through the gateway", Body: "hello"})
	env, base := gatewayEnv(t, dbURL, sim.URL)
	startGateway(t, env)
	waitFor(t, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()

	inbox, err := exchangelib.Read(t, base+"/EWS/Exchange.asmx", "alice@contoso.test", "pw", "--header", "X-Device-Id=phone-7")
	if err != nil {
		t.Fatal(err)
	}
	if inbox.Unread != 1 || len(inbox.Messages) != 1 || inbox.Messages[0].Subject != "Through the gateway" {
		t.Fatalf("inbox through the proxy: %+v", inbox)
	}
	if c := sim.Counters().Requests; c["FindItem"] == 0 || c["GetItem"] == 0 {
		t.Errorf("the client's requests did not reach Exchange: %v", c)
	}

	if r := cli(t, db, "ens", "device", "block", "--tenant", "contoso", "--device", "phone-7"); r.code != 0 {
		t.Fatalf("block: %+v", r)
	}
	time.Sleep(500 * time.Millisecond) // well over the measured propagation
	if _, err := exchangelib.Read(t, base+"/EWS/Exchange.asmx", "alice@contoso.test", "pw", "--header", "X-Device-Id=phone-7"); err == nil {
		t.Fatal("the blocked device still read its Inbox through the proxy")
	}
}

// Large and compressed bodies pass the proxy byte for byte, both ways.
func TestProxyPassesLargeAndCompressedBodiesUntouched(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	for _, args := range [][]string{{"ens", "migrate"}, {"ens", "tenant", "create", "--name", "contoso"},
		{"ens", "device", "unblock", "--tenant", "contoso", "--device", "phone"}} {
		if r := cli(t, []string{"DATABASE_URL=" + dbURL}, args...); r.code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	answer := bytes.Repeat([]byte("\x1f\x8b compressed-looking bytes "), 400_000) // ~11 MB, sent as-is
	var upload []byte
	exchange := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upload, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.Write(answer)
	}))
	defer exchange.Close()
	env, base := gatewayEnv(t, dbURL, exchange.URL)
	startGateway(t, env)
	waitFor(t, base+"/api/ens/alive", 200, 30*time.Second).Body.Close()

	body := getFolder[:len(getFolder)-len("</s:Body></s:Envelope>")] + strings.Repeat("<attachment>0123456789abcdef</attachment>", 150_000) + "</s:Body></s:Envelope>"
	req, _ := http.NewRequest("POST", base+"/EWS/Exchange.asmx", strings.NewReader(body))
	req.Header.Set("X-Device-Id", "phone")
	req.Header.Set("Accept-Encoding", "gzip")
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" || !bytes.Equal(got, answer) {
		t.Errorf("answer: %d, encoding %q, %d of %d bytes equal=%v", resp.StatusCode, resp.Header.Get("Content-Encoding"),
			len(got), len(answer), bytes.Equal(got, answer))
	}
	if string(upload) != body {
		t.Errorf("the %d-byte request reached Exchange as %d bytes", len(body), len(upload))
	}
}

package ewssim

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beevik/etree"
	"github.com/ensgate/ensgate/internal/testenv/ewsschema"
)

const (
	alice    = "alice@example.com"
	alicePW  = "alice-password"
	aliceTok = "alice-token"
	bob      = "bob@example.com"
	bobPW    = "bob-password"
)

func testUsers() []User {
	return []User{
		{Address: alice, Password: alicePW, Token: aliceTok, DisplayName: "Alice Example"},
		{Address: bob, Password: bobPW},
	}
}

// sample reads one of the shared EWS samples.
func sample(t testing.TB, name string) []byte {
	t.Helper()
	dir, err := ewsschema.SamplesDir()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// soapRequest wraps an operation (written with the m: and t: prefixes) in
// a request envelope using other prefixes for the SOAP namespace, so the
// simulator's namespace handling is exercised.
func soapRequest(op string) []byte {
	return []byte(`<?xml version="1.0" encoding="utf-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"
  xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">
<soapenv:Header><t:RequestServerVersion Version="Exchange2013_SP1"/></soapenv:Header>
<soapenv:Body>` + op + `</soapenv:Body></soapenv:Envelope>`)
}

func subscribeOp(callback string, freq int, watermark string) string {
	wm := ""
	if watermark != "" {
		wm = "<t:Watermark>" + watermark + "</t:Watermark>"
	}
	return `<m:Subscribe><m:PushSubscriptionRequest>
<t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds>
<t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType></t:EventTypes>` + wm + `
<t:StatusFrequency>` + strconv.Itoa(freq) + `</t:StatusFrequency><t:URL>` + callback + `</t:URL>
</m:PushSubscriptionRequest></m:Subscribe>`
}

func getItemOp(ids ...string) string {
	var b strings.Builder
	b.WriteString(`<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>
<t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="message:From"/>
<t:FieldURI FieldURI="item:Preview"/><t:FieldURI FieldURI="item:DateTimeReceived"/>
</t:AdditionalProperties></m:ItemShape><m:ItemIds>`)
	for _, id := range ids {
		b.WriteString(`<t:ItemId Id="` + id + `"/>`)
	}
	b.WriteString(`</m:ItemIds></m:GetItem>`)
	return b.String()
}

const getInboxOp = `<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape>
<t:AdditionalProperties><t:FieldURI FieldURI="folder:UnreadCount"/><t:FieldURI FieldURI="folder:TotalCount"/></t:AdditionalProperties>
</m:FolderShape><m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>`

// post sends an EWS request with Basic credentials for user/password.
func post(t testing.TB, url, user, password string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	if user != "" {
		req.SetBasicAuth(user, password)
	}
	return do(t, req)
}

func do(t testing.TB, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// callEWS posts op as alice and expects HTTP status want.
func callEWS(t testing.TB, ts *TestServer, op string, want int) []byte {
	t.Helper()
	resp, b := post(t, ts.EWSURL, alice, alicePW, soapRequest(op))
	if resp.StatusCode != want {
		t.Fatalf("HTTP %d, want %d: %s", resp.StatusCode, want, b)
	}
	return b
}

// find parses doc and returns the texts of every element with the local
// name, in document order.
func find(t testing.TB, doc []byte, local string) []string {
	t.Helper()
	d := etree.NewDocument()
	if err := d.ReadFromBytes(doc); err != nil {
		t.Fatalf("unparsable XML: %v\n%s", err, doc)
	}
	var out []string
	for _, e := range d.FindElements("//" + local) {
		out = append(out, strings.TrimSpace(e.Text()))
	}
	return out
}

func one(t testing.TB, doc []byte, local string) string {
	t.Helper()
	v := find(t, doc, local)
	if len(v) != 1 {
		t.Fatalf("want one %s, found %d in\n%s", local, len(v), doc)
	}
	return v[0]
}

// notification is one SendNotification the fake listener received.
type notification struct {
	at     time.Time
	header http.Header
	body   []byte
}

// listener is a fake ENS callback endpoint. answer decides each reply.
type listener struct {
	t      testing.TB
	srv    *httptest.Server
	got    chan notification
	mu     sync.Mutex
	answer func(n int) (status int, subscriptionStatus string)
	count  int
}

func newListener(t testing.TB, answer func(n int) (int, string)) *listener {
	l := &listener{t: t, got: make(chan notification, 100), answer: answer}
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		l.mu.Lock()
		l.count++
		status, result := l.answer(l.count)
		l.mu.Unlock()
		l.got <- notification{at: time.Now(), header: r.Header.Clone(), body: b}
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.WriteHeader(status)
		if result != "" {
			io.WriteString(w, `<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:SendNotificationResult xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:SubscriptionStatus>`+result+`</m:SubscriptionStatus></m:SendNotificationResult></s:Body></s:Envelope>`)
		}
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func answerOK(int) (int, string) { return http.StatusOK, "OK" }

// next waits for the next notification.
func (l *listener) next(timeout time.Duration) notification {
	l.t.Helper()
	select {
	case n := <-l.got:
		return n
	case <-time.After(timeout):
		l.t.Fatalf("no notification within %v", timeout)
		return notification{}
	}
}

// nextEvents waits for the next notification that is not a status ping.
func (l *listener) nextEvents(timeout time.Duration) notification {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := l.next(time.Until(deadline))
		if !bytes.Contains(n.body, []byte("StatusEvent>")) {
			return n
		}
	}
}

// none asserts that nothing is posted for d.
func (l *listener) none(d time.Duration) {
	l.t.Helper()
	select {
	case n := <-l.got:
		l.t.Fatalf("unexpected notification:\n%s", n.body)
	case <-time.After(d):
	}
}

// subscribe creates a push subscription for alice and returns its id.
func subscribe(t testing.TB, ts *TestServer, callback string, freq int) string {
	t.Helper()
	b := callEWS(t, ts, subscribeOp(callback, freq, ""), http.StatusOK)
	if code := one(t, b, "ResponseCode"); code != "NoError" {
		t.Fatalf("Subscribe: %s\n%s", code, b)
	}
	return one(t, b, "SubscriptionId")
}

// eventKinds lists the event element names of a notification.
func eventKinds(t testing.TB, body []byte) []string {
	t.Helper()
	d := etree.NewDocument()
	if err := d.ReadFromBytes(body); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range d.FindElements("//Notification/*") {
		switch e.Tag {
		case "SubscriptionId", "PreviousWatermark", "MoreEvents":
		default:
			out = append(out, e.Tag)
		}
	}
	return out
}

// findAttr returns attribute attr of every element with the local name.
func findAttr(t testing.TB, doc []byte, local, attr string) []string {
	t.Helper()
	d := etree.NewDocument()
	if err := d.ReadFromBytes(doc); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range d.FindElements("//" + local) {
		out = append(out, e.SelectAttrValue(attr, ""))
	}
	return out
}

// eventually polls cond for up to two seconds: the simulator updates its
// state after the listener has answered, so a test may look too early.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

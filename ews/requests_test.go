package ews

import (
	"strings"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/ewsschema"
)

// Every message the package writes validates against the official schema.
func TestBuiltMessagesValidateAgainstSchema(t *testing.T) {
	one := 1
	docs := map[string][]byte{}
	for _, v := range []string{DefaultServerVersion, "Exchange2010_SP2", "V2018_01_08"} {
		docs["subscribe-"+v] = must(BuildSubscribe(v, "alice@contoso.test", SubscribeRequest{URL: "https://ens.example.com/api/ens/notify?id=1&f=abc", StatusFrequency: 30}))
		docs["getitem-"+v] = must(BuildGetItem(v, ItemID{ID: "AAMkAGItem1=", ChangeKey: "CQAAAA=="}))
		docs["getinbox-"+v] = must(BuildGetInbox(v, "alice@contoso.test"))
		docs["verifymailbox-"+v] = must(BuildVerifyMailbox(v, "alice@contoso.test"))
	}
	docs["subscribe-watermark"] = must(BuildSubscribe(DefaultServerVersion, "", SubscribeRequest{URL: "http://h/x", StatusFrequency: 1440, Watermark: "AQAAAE0N=="}))
	docs["subscribe-min"] = must(BuildSubscribe(DefaultServerVersion, "", SubscribeRequest{URL: "http://h/x", StatusFrequency: 1}))
	docs["getitem-no-changekey"] = must(BuildGetItem(DefaultServerVersion, ItemID{ID: "AAMk<&>\""}))
	docs["result-ok"] = must(BuildSendNotificationResult(SubscriptionOK))
	docs["result-unsubscribe"] = must(BuildSendNotificationResult(SubscriptionUnsubscribe))
	for name, n := range map[string]*Notification{"sendnotification-all-events": allEventsNotification(&one)} {
		docs[name] = BuildSendNotification(n)
	}
	ewsschema.Check(t, docs)
}

// The builders produce the documented samples, up to prefixes and whitespace.
func TestBuiltRequestsMatchSamples(t *testing.T) {
	for _, tc := range []struct {
		sample string
		built  []byte
		err    error
	}{
		{sample: "01-subscribe-push.request.xml", built: must(BuildSubscribe(DefaultServerVersion, "", SubscribeRequest{
			URL: "https://ens.example.com/ens/notify/v1/eyJ0b2tlbiI6Ii4uLiJ9", StatusFrequency: 30}))},
		{sample: "11-getfolder-inbox.request.xml", built: must(BuildGetInbox(DefaultServerVersion, ""))},
		{sample: "05-sendnotificationresult-ok.listener-to-exchange.xml", built: must(BuildSendNotificationResult(SubscriptionOK))},
		{sample: "06-sendnotificationresult-unsubscribe.listener-to-exchange.xml", built: must(BuildSendNotificationResult(SubscriptionUnsubscribe))},
	} {
		want, got := canonical(t, sample(t, tc.sample)), canonical(t, tc.built)
		if want != got {
			t.Errorf("%s: built message differs\nwant:\n%s\ngot:\n%s", tc.sample, want, got)
		}
	}
}

// must unwraps a builder's result; builders fail only on bad input, which
// these tests do not give.
func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestSubscribeWatermarkBeforeStatusFrequency(t *testing.T) {
	b := must(BuildSubscribe(DefaultServerVersion, "", SubscribeRequest{URL: "https://h/x", StatusFrequency: 5, Watermark: "WM"}))
	s := string(b)
	if i, j := strings.Index(s, "<t:Watermark>WM</t:Watermark>"), strings.Index(s, "<t:StatusFrequency>5<"); i < 0 || j < 0 || i > j {
		t.Fatalf("watermark missing or misplaced:\n%s", s)
	}
}

func TestBuildRejectsInvalidInput(t *testing.T) {
	secretURL := "https://ens.example.com/api/ens/notify?f=SECRETKEY"
	long := secretURL + strings.Repeat("a", MaxCallbackURLLength)
	for name, tc := range map[string]struct {
		version string
		req     SubscribeRequest
	}{
		"frequency 0":        {DefaultServerVersion, SubscribeRequest{URL: secretURL, StatusFrequency: 0}},
		"frequency 1441":     {DefaultServerVersion, SubscribeRequest{URL: secretURL, StatusFrequency: 1441}},
		"negative frequency": {DefaultServerVersion, SubscribeRequest{URL: secretURL, StatusFrequency: -5}},
		"url too long":       {DefaultServerVersion, SubscribeRequest{URL: long, StatusFrequency: 30}},
		"relative url":       {DefaultServerVersion, SubscribeRequest{URL: "/notify?f=SECRETKEY", StatusFrequency: 30}},
		"ftp url":            {DefaultServerVersion, SubscribeRequest{URL: "ftp://h/?f=SECRETKEY", StatusFrequency: 30}},
		"control in url":     {DefaultServerVersion, SubscribeRequest{URL: "https://h/\n?f=SECRETKEY", StatusFrequency: 30}},
		"bad watermark":      {DefaultServerVersion, SubscribeRequest{URL: secretURL, StatusFrequency: 30, Watermark: "a\x00b"}},
		"unknown version":    {"Exchange2099", SubscribeRequest{URL: secretURL, StatusFrequency: 30}},
	} {
		_, err := BuildSubscribe(tc.version, "", tc.req)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if strings.Contains(err.Error(), "SECRETKEY") {
			t.Errorf("%s: error quotes the callback URL: %v", name, err)
		}
	}
	if _, err := BuildGetItem(DefaultServerVersion, ItemID{}); err == nil {
		t.Error("GetItem without an id accepted")
	}
	if _, err := BuildGetItem(DefaultServerVersion, ItemID{ID: "x", ChangeKey: "\x01"}); err == nil {
		t.Error("GetItem with a control character accepted")
	}
	if _, err := BuildGetInbox("2013", ""); err == nil {
		t.Error("unknown server version accepted")
	}
	if _, err := BuildSendNotificationResult("Maybe"); err == nil {
		t.Error("unknown SubscriptionStatus accepted")
	}
	// Boundaries are inclusive.
	if _, err := BuildSubscribe(DefaultServerVersion, "", SubscribeRequest{URL: "https://h/" + strings.Repeat("a", MaxCallbackURLLength-len("https://h/")), StatusFrequency: 1440}); err != nil {
		t.Errorf("URL of exactly %d characters refused: %v", MaxCallbackURLLength, err)
	}
}

// Requests for a mailbox name it, so Exchange checks that the caller may
// open it; without one they act on the logged-in user's own mailbox.
func TestRequestsNameTheMailbox(t *testing.T) {
	named := string(must(BuildSubscribe(DefaultServerVersion, "alice@contoso.test", SubscribeRequest{URL: "https://h/x", StatusFrequency: 5})))
	inbox := `<t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>alice@contoso.test</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>`
	if !strings.Contains(named, inbox) {
		t.Errorf("Subscribe does not name the mailbox:\n%s", named)
	}
	if got := string(must(BuildGetInbox(DefaultServerVersion, "alice@contoso.test"))); !strings.Contains(got, inbox) {
		t.Errorf("GetFolder does not name the mailbox:\n%s", got)
	}
	verify := string(must(BuildVerifyMailbox(DefaultServerVersion, "alice@contoso.test")))
	if !strings.Contains(verify, `<m:FolderIds><t:DistinguishedFolderId Id="inbox"/>`+inbox+`</m:FolderIds>`) {
		t.Errorf("VerifyMailbox does not ask for the own and the named Inbox:\n%s", verify)
	}
	for _, bad := range []string{"a\nb@x", strings.Repeat("a", 321)} {
		if _, err := BuildGetInbox(DefaultServerVersion, bad); err == nil {
			t.Errorf("mailbox %.20q accepted", bad)
		}
	}
	if _, err := BuildVerifyMailbox(DefaultServerVersion, ""); err == nil {
		t.Error("VerifyMailbox without a mailbox accepted")
	}
}

// GetItem asks for the item's folder and arrival beside what a push shows,
// and for nothing else (no body, no attachments).
func TestGetItemAsksForFolderAndArrival(t *testing.T) {
	got := string(must(BuildGetItem(DefaultServerVersion, ItemID{ID: "AAMkAGItem1="})))
	for _, want := range []string{"item:ParentFolderId", "item:DateTimeReceived", "item:Subject", "message:From", "item:Preview"} {
		if !strings.Contains(got, `FieldURI="`+want+`"`) {
			t.Errorf("GetItem does not ask for %s", want)
		}
	}
	if strings.Count(got, "<t:FieldURI") != 5 || !strings.Contains(got, "<t:BaseShape>IdOnly</t:BaseShape>") {
		t.Errorf("GetItem asks for more than it needs:\n%s", got)
	}
}

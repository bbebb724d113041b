package ewssim

import (
	"net/http"
	"slices"
	"testing"
	"time"
)

func inboxOf(address string) string {
	return `<t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>` + address + `</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>`
}

func getFolderOp(folders ...string) string {
	op := `<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>`
	for _, f := range folders {
		op += f
	}
	return op + `</m:FolderIds></m:GetFolder>`
}

// A mailbox named in a request is opened only by its owner and the
// delegates it granted access; Exchange answers ErrorNonExistentMailbox for
// an unknown address and ErrorFolderNotFound for a mailbox the caller may
// not open.
func TestNamedMailboxNeedsAccess(t *testing.T) {
	ts := Start(t, Config{Users: append(testUsers(), User{Address: "carol@example.com", Password: "carol-password"})})
	b := callEWS(t, ts, getFolderOp(inboxID, inboxOf("ALICE@example.com"), inboxOf(bob), inboxOf("nobody@example.com")), http.StatusOK)
	if got := find(t, b, "ResponseCode"); !slices.Equal(got, []string{"NoError", "NoError", "ErrorFolderNotFound", "ErrorNonExistentMailbox"}) {
		t.Fatalf("response codes %v", got)
	}
	ids := findAttr(t, b, "FolderId", "Id")
	if len(ids) != 2 || ids[0] != ids[1] {
		t.Fatalf("alice's own Inbox and the Inbox named alice@ are not one folder: %v", ids)
	}

	// Bob grants alice access: she opens his Inbox, another folder than hers.
	if err := ts.GrantAccess(bob, alice); err != nil {
		t.Fatal(err)
	}
	b = callEWS(t, ts, getFolderOp(inboxID, inboxOf(bob)), http.StatusOK)
	if got := find(t, b, "ResponseCode"); !slices.Equal(got, []string{"NoError", "NoError"}) {
		t.Fatalf("delegate: response codes %v", got)
	}
	if ids := findAttr(t, b, "FolderId", "Id"); ids[0] == ids[1] {
		t.Fatal("a delegate's view of bob's Inbox has alice's Inbox id")
	}
	// Carol was granted nothing.
	resp, b := post(t, ts.EWSURL, "carol@example.com", "carol-password", soapRequest(getFolderOp(inboxOf(bob))))
	if resp.StatusCode != http.StatusOK || one(t, b, "ResponseCode") != "ErrorFolderNotFound" {
		t.Fatalf("carol opened bob's Inbox: %d %s", resp.StatusCode, b)
	}
}

// Subscribe acts on the mailbox its folder names: another user's Inbox is
// refused, and a delegate's subscription reports the owner's mail.
func TestSubscribeOnNamedMailbox(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	l := newListener(t, answerOK)
	op := func(mailbox string) string {
		return `<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds>` + inboxOf(mailbox) + `</t:FolderIds>
<t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes>
<t:StatusFrequency>30</t:StatusFrequency><t:URL>` + l.srv.URL + `</t:URL></m:PushSubscriptionRequest></m:Subscribe>`
	}
	if got := one(t, callEWS(t, ts, op(bob), http.StatusOK), "ResponseCode"); got != "ErrorFolderNotFound" {
		t.Fatalf("alice subscribed bob's Inbox: %s", got)
	}
	if got := one(t, callEWS(t, ts, op("nobody@example.com"), http.StatusOK), "ResponseCode"); got != "ErrorNonExistentMailbox" {
		t.Fatalf("unknown mailbox: %s", got)
	}
	if err := ts.GrantAccess(bob, alice); err != nil {
		t.Fatal(err)
	}
	if got := one(t, callEWS(t, ts, op(bob), http.StatusOK), "ResponseCode"); got != "NoError" {
		t.Fatalf("delegate subscription: %s", got)
	}
	subs := ts.Subscriptions()
	if len(subs) != 1 || subs[0].User != bob {
		t.Fatalf("subscriptions %+v, want one on bob's mailbox", subs)
	}
	if _, err := ts.Deliver(bob, Mail{From: "x@example.com", Subject: "s", Body: "b"}); err != nil {
		t.Fatal(err)
	}
	if kinds := eventKinds(t, l.nextEvents(5*time.Second).body); !slices.Contains(kinds, "NewMailEvent") {
		t.Fatalf("events %v", kinds)
	}
}

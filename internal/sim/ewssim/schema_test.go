package ewssim

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/internal/testenv/ewsschema"
)

// TestEveryMessageValidates collects one of each response and notification
// kind the simulator produces and validates them all against the official
// schema in one xmllint run.
func TestEveryMessageValidates(t *testing.T) {
	ts := Start(t, Config{Users: testUsers(), ClockScale: 20 * time.Millisecond})
	l := newListener(t, answerOK)
	docs := map[string][]byte{}

	allEvents := `<m:Subscribe><m:PushSubscriptionRequest SubscribeToAllFolders="false">
<t:FolderIds><t:DistinguishedFolderId Id="inbox"/></t:FolderIds>
<t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType>
<t:EventType>DeletedEvent</t:EventType><t:EventType>ModifiedEvent</t:EventType></t:EventTypes>
<t:StatusFrequency>1</t:StatusFrequency><t:URL>` + l.srv.URL + `/notify</t:URL>
</m:PushSubscriptionRequest></m:Subscribe>`
	docs["subscribe"] = callEWS(t, ts, allEvents, http.StatusOK)

	status := l.next(2 * time.Second)
	if got := eventKinds(t, status.body); !slices.Equal(got, []string{"StatusEvent"}) {
		t.Fatalf("first notification of an idle subscription: %v", got)
	}
	docs["notification-status"] = status.body

	it, err := ts.Deliver(alice, Mail{From: "carol@example.net", FromName: "Carol <C&O>", Subject: "Q3 & Q4 <report>", Body: "Hello\n  team,   see attached."})
	if err != nil {
		t.Fatal(err)
	}
	newMail := l.nextEvents(2 * time.Second)
	docs["notification-newmail"] = newMail.body

	docs["getitem"] = callEWS(t, ts, getItemOp(it.ID), http.StatusOK)
	docs["getitem-all"] = callEWS(t, ts, `<m:GetItem><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape>
<m:ItemIds><t:ItemId Id="`+it.ID+`" ChangeKey="`+it.ChangeKey+`"/></m:ItemIds></m:GetItem>`, http.StatusOK)
	docs["getitem-notfound"] = callEWS(t, ts, getItemOp("AAMkAGUnknown="), http.StatusOK)
	docs["getitem-mixed"] = callEWS(t, ts, getItemOp(it.ID, "AAMkAGUnknown="), http.StatusOK)
	docs["getfolder"] = callEWS(t, ts, getInboxOp, http.StatusOK)
	docs["getfolder-all"] = callEWS(t, ts, `<m:GetFolder><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape>
<m:FolderIds><t:DistinguishedFolderId Id="inbox"/><t:DistinguishedFolderId Id="calendar"/></m:FolderIds></m:GetFolder>`, http.StatusOK)

	docs["getfolder-hierarchy"] = callEWS(t, ts, `<m:GetFolder><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape>
<m:FolderIds><t:DistinguishedFolderId Id="root"/><t:DistinguishedFolderId Id="msgfolderroot"/></m:FolderIds></m:GetFolder>`, http.StatusOK)
	docs["finditem"] = callEWS(t, ts, `<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>AllProperties</t:BaseShape></m:ItemShape>
<m:IndexedPageItemView MaxEntriesReturned="10" Offset="0" BasePoint="Beginning"/>
<m:SortOrder><t:FieldOrder Order="Descending"><t:FieldURI FieldURI="item:DateTimeReceived"/></t:FieldOrder></m:SortOrder>
<m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/><t:DistinguishedFolderId Id="calendar"/></m:ParentFolderIds></m:FindItem>`, http.StatusOK)
	docs["convertid"] = callEWS(t, ts, `<m:ConvertId DestinationFormat="EntryId"><m:SourceIds><t:AlternateId Id="DUMMY" Format="EwsId" Mailbox="DUMMY"/></m:SourceIds></m:ConvertId>`, http.StatusOK)

	if err := ts.MarkRead(alice, it.ID, true); err != nil {
		t.Fatal(err)
	}
	docs["notification-modified"] = l.nextEvents(2 * time.Second).body
	if err := ts.DeleteItem(alice, it.ID); err != nil {
		t.Fatal(err)
	}
	docs["notification-deleted"] = l.nextEvents(2 * time.Second).body

	docs["unsubscribe"] = callEWS(t, ts, `<m:Unsubscribe><m:SubscriptionId>`+one(t, docs["subscribe"], "SubscriptionId")+`</m:SubscriptionId></m:Unsubscribe>`, http.StatusOK)
	docs["subscribe-badurl"] = callEWS(t, ts, subscribeOp("ftp://example.com/x", 5, ""), http.StatusOK)
	docs["subscribe-badwatermark"] = callEWS(t, ts, subscribeOp(l.srv.URL, 5, "AQAAAA=="), http.StatusOK)
	docs["fault-unknown-op"] = callEWS(t, ts, `<m:CreateItem/>`, http.StatusInternalServerError)
	docs["fault-schema"] = callEWS(t, ts, `<m:GetItem/>`, http.StatusInternalServerError)
	if _, err := ts.InjectFault(Fault{Kind: FaultServerBusy, Count: 1, BackOff: 297749 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	docs["fault-serverbusy"] = callEWS(t, ts, getInboxOp, http.StatusInternalServerError)

	ewsschema.Check(t, docs)

	// Spot checks that the documents say what their names claim.
	for name, doc := range docs {
		// Exchange's answers carry ServerVersionInfo (clients read their
		// server's version from it); its faults and notifications do not.
		want := 1
		if strings.HasPrefix(name, "fault-") || strings.HasPrefix(name, "notification-") {
			want = 0
		}
		if got := len(find(t, doc, "ServerVersionInfo")); got != want {
			t.Errorf("%s: %d ServerVersionInfo headers, want %d", name, got, want)
		}
	}
	if got := eventKinds(t, docs["notification-newmail"]); !slices.Equal(got, []string{"CreatedEvent", "NewMailEvent", "ModifiedEvent"}) {
		t.Errorf("new mail notification carries %v", got)
	}
	if got := eventKinds(t, docs["notification-modified"]); !slices.Equal(got, []string{"ModifiedEvent", "ModifiedEvent"}) {
		t.Errorf("mark-read notification carries %v", got)
	}
	if got := one(t, docs["notification-modified"], "UnreadCount"); got != "0" {
		t.Errorf("folder ModifiedEvent UnreadCount = %s, want 0", got)
	}
	if got := eventKinds(t, docs["notification-deleted"]); !slices.Equal(got, []string{"DeletedEvent", "ModifiedEvent"}) {
		t.Errorf("delete notification carries %v", got)
	}
	for name, code := range map[string]string{
		"getitem-notfound": "ErrorItemNotFound", "unsubscribe": "ErrorSubscriptionNotFound",
		"subscribe-badurl": "ErrorInvalidPushSubscriptionUrl", "subscribe-badwatermark": "ErrorInvalidWatermark",
		"fault-serverbusy": "ErrorServerBusy", "fault-unknown-op": "ErrorInvalidRequest", "fault-schema": "ErrorSchemaValidation",
	} {
		if got := one(t, docs[name], "ResponseCode"); got != code {
			t.Errorf("%s: ResponseCode %s, want %s", name, got, code)
		}
	}
	if got := find(t, docs["getitem-mixed"], "ResponseCode"); !slices.Equal(got, []string{"NoError", "ErrorItemNotFound"}) {
		t.Errorf("GetItem of a found and a missing item: %v", got)
	}
	if got := find(t, docs["finditem"], "ResponseCode"); !slices.Equal(got, []string{"NoError", "ErrorFolderNotFound"}) {
		t.Errorf("FindItem in inbox and calendar: %v", got)
	}
	if got := find(t, docs["convertid"], "ResponseCode"); !slices.Equal(got, []string{"ErrorInvalidIdMalformed"}) {
		t.Errorf("ConvertId: %v", got)
	}
	if got := find(t, docs["getfolder-all"], "ResponseCode"); !slices.Equal(got, []string{"NoError", "ErrorFolderNotFound"}) {
		t.Errorf("GetFolder of inbox and calendar: %v", got)
	}
}

// TestServerBusyMatchesSample checks the ServerBusy fault has the same
// element structure as Exchange's (sample 13), not just a valid one.
func TestServerBusyMatchesSample(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	ts.InjectFault(Fault{Kind: FaultServerBusy, Count: 1, BackOff: 1234 * time.Millisecond})
	got := callEWS(t, ts, getInboxOp, http.StatusInternalServerError)
	want := sample(t, "13-error-serverbusy.soapfault-http500.xml")
	for _, local := range []string{"faultcode", "faultstring", "ResponseCode", "Message"} {
		if g, w := find(t, got, local), find(t, want, local); !slices.Equal(g, w) {
			t.Errorf("%s = %q, sample has %q", local, g, w)
		}
	}
	if v := one(t, got, "Value"); v != "1234" {
		t.Errorf("BackOffMilliseconds = %s, want 1234", v)
	}
}

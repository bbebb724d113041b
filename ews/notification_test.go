package ews

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// allEventsNotification has one event of every type, with every field its
// type allows.
func allEventsNotification(unread *int) *Notification {
	ts := time.Date(2024, 5, 1, 9, 15, 2, 0, time.UTC)
	item := ItemID{ID: "AAMkItem=", ChangeKey: "CQAAAA=="}
	folder := FolderID{ID: "AAMkFolder=", ChangeKey: "AQAAAA=="}
	parent := FolderID{ID: "AAMkInbox="}
	return &Notification{
		SubscriptionID:    "FwB0ZXN0",
		PreviousWatermark: "WM0",
		MoreEvents:        true,
		Events: []Event{
			{Type: StatusEvent, Watermark: "WM1"},
			{Type: NewMailEvent, Watermark: "WM2", TimeStamp: ts, ItemID: item, ParentFolderID: parent},
			{Type: CreatedEvent, TimeStamp: ts, ItemID: item, ParentFolderID: parent},
			{Type: ModifiedEvent, Watermark: "WM3", TimeStamp: ts, FolderID: folder, ParentFolderID: parent, UnreadCount: unread},
			{Type: DeletedEvent, Watermark: "WM4", TimeStamp: ts, ItemID: item, ParentFolderID: parent},
			{Type: MovedEvent, Watermark: "WM5", TimeStamp: ts, ItemID: item, ParentFolderID: parent, OldItemID: ItemID{ID: "old"}, OldParentFolderID: folder},
			{Type: CopiedEvent, Watermark: "WM6", TimeStamp: ts, FolderID: folder, ParentFolderID: parent, OldFolderID: FolderID{ID: "oldf"}, OldParentFolderID: parent},
			{Type: FreeBusyChangedEvent, Watermark: "WM7", TimeStamp: ts, ItemID: item, ParentFolderID: parent},
		},
	}
}

func TestParseSendNotificationNewMail(t *testing.T) {
	n, err := ParseSendNotification(bytes.NewReader(sample(t, "04-sendnotification-newmail.exchange-to-listener.xml")))
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2024, 5, 1, 9, 15, 2, 0, time.UTC)
	want := &Notification{
		SubscriptionID:    "FwB0ZXN0LW1haWwyLm1zZnQudmlydHVhbBAAAABzUd2ea9nSRZxccnlZiYGL",
		PreviousWatermark: "AQAAAE0NHLpGbA9HjwSmPXXJyw5oakMAAAAAAAE=",
		Events: []Event{
			{Type: CreatedEvent, Watermark: "AQAAAE0NHLpGbA9HjwSmPXXJyw5pakMAAAAAAAE=", TimeStamp: ts,
				ItemID: ItemID{"AAMkAGItem1=", "CQAAAA=="}, ParentFolderID: FolderID{"AAMkAGInbox=", "AQAAAA=="}},
			{Type: NewMailEvent, Watermark: "AQAAAE0NHLpGbA9HjwSmPXXJyw5qakMAAAAAAAE=", TimeStamp: ts,
				ItemID: ItemID{"AAMkAGItem1=", "CQAAAA=="}, ParentFolderID: FolderID{"AAMkAGInbox=", "AQAAAA=="}},
		},
	}
	if !reflect.DeepEqual(n, want) {
		t.Fatalf("got %+v\nwant %+v", n, want)
	}
}

func TestParseSendNotificationStatus(t *testing.T) {
	n, err := ParseSendNotification(bytes.NewReader(sample(t, "03-sendnotification-status.exchange-to-listener.xml")))
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Events) != 1 || n.Events[0].Type != StatusEvent || n.Events[0].Watermark != "AQAAAE0NHLpGbA9HjwSmPXXJyw5oakMAAAAAAAE=" ||
		!n.Events[0].TimeStamp.IsZero() || n.MoreEvents || n.PreviousWatermark != "AQAAAE0NHLpGbA9HjwSmPXXJyw5makMAAAAAAAE=" {
		t.Fatalf("got %+v", n)
	}
}

// A real Exchange Online capture: folder and item ModifiedEvents.
func TestParseSendNotificationExchangeOnlineCapture(t *testing.T) {
	n, err := ParseSendNotification(bytes.NewReader(sample(t, "exo-sendnotification-modified.rooms-doc.xml")))
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Events) != 2 || n.Events[0].Type != ModifiedEvent || n.Events[1].Type != ModifiedEvent {
		t.Fatalf("events: %+v", n.Events)
	}
	item, folder := n.Events[0], n.Events[1]
	if !strings.HasPrefix(item.ItemID.ID, "AQMkAGYzNDgzOTU5") || item.ItemID.ChangeKey != "DwAAAA==" || item.FolderID.ID != "" {
		t.Errorf("item event: %+v", item)
	}
	if !strings.HasPrefix(folder.FolderID.ID, "AQMkAGYzNDgzOTU5") || folder.FolderID.ChangeKey != "AgAAAA==" || folder.ItemID.ID != "" {
		t.Errorf("folder event: %+v", folder)
	}
	if !item.TimeStamp.Equal(time.Date(2020, 12, 3, 11, 3, 50, 0, time.UTC)) || folder.ParentFolderID.ChangeKey != "AQAAAA==" {
		t.Errorf("timestamp or parent: %+v", folder)
	}
}

// Prefixes do not matter, namespaces do.
func TestParseSendNotificationAnyPrefix(t *testing.T) {
	orig := string(sample(t, "04-sendnotification-newmail.exchange-to-listener.xml"))
	want, err := parseSendNotification([]byte(orig))
	if err != nil {
		t.Fatal(err)
	}
	variants := map[string]string{
		"soap": strings.ReplaceAll(orig, "soap11", "soap"),
		"s":    strings.ReplaceAll(orig, "soap11", "s"),
		"x-all": strings.NewReplacer("soap11", "a", "xmlns:m=", "xmlns:b=", "xmlns:t=", "xmlns:c=",
			"<m:", "<b:", "</m:", "</b:", "<t:", "<c:", "</t:", "</c:").Replace(orig),
		// SOAP in the default namespace; EWS prefixes unchanged.
		"default": strings.ReplaceAll(strings.ReplaceAll(orig, "soap11:", ""), "xmlns:soap11=", "xmlns="),
		// Everything in default namespaces, redeclared per element.
		"all-default": `<Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><Body>
			<SendNotification xmlns="http://schemas.microsoft.com/exchange/services/2006/messages"><ResponseMessages>
			<SendNotificationResponseMessage ResponseClass="Success"><ResponseCode>NoError</ResponseCode><Notification>
			<SubscriptionId xmlns="http://schemas.microsoft.com/exchange/services/2006/types">FwB0ZXN0LW1haWwyLm1zZnQudmlydHVhbBAAAABzUd2ea9nSRZxccnlZiYGL</SubscriptionId>
			<PreviousWatermark xmlns="http://schemas.microsoft.com/exchange/services/2006/types">AQAAAE0NHLpGbA9HjwSmPXXJyw5oakMAAAAAAAE=</PreviousWatermark>
			<MoreEvents xmlns="http://schemas.microsoft.com/exchange/services/2006/types">0</MoreEvents>
			<CreatedEvent xmlns="http://schemas.microsoft.com/exchange/services/2006/types"><Watermark>AQAAAE0NHLpGbA9HjwSmPXXJyw5pakMAAAAAAAE=</Watermark>
			<TimeStamp>2024-05-01T11:15:02+02:00</TimeStamp><ItemId Id="AAMkAGItem1=" ChangeKey="CQAAAA=="/><ParentFolderId Id="AAMkAGInbox=" ChangeKey="AQAAAA=="/></CreatedEvent>
			<NewMailEvent xmlns="http://schemas.microsoft.com/exchange/services/2006/types"><Watermark>AQAAAE0NHLpGbA9HjwSmPXXJyw5qakMAAAAAAAE=</Watermark>
			<TimeStamp>2024-05-01T09:15:02</TimeStamp><ItemId Id="AAMkAGItem1=" ChangeKey="CQAAAA=="/><ParentFolderId Id="AAMkAGInbox=" ChangeKey="AQAAAA=="/></NewMailEvent>
			</Notification></SendNotificationResponseMessage></ResponseMessages></SendNotification></Body></Envelope>`,
		// Unknown elements and attributes anywhere are ignored.
		"extras": strings.NewReplacer(
			"<soap11:Body>", `<soap11:Body x:future="1" xmlns:x="urn:x">`,
			"<t:MoreEvents>", "<t:Future>ignored</t:Future><x:Other xmlns:x='urn:x'/><t:MoreEvents>",
			"<t:TimeStamp>", "<!-- comment --><t:Extra/><t:TimeStamp>",
		).Replace(orig),
	}
	for name, doc := range variants {
		got, err := parseSendNotification([]byte(doc))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for i := range got.Events {
			if !got.Events[i].TimeStamp.Equal(want.Events[i].TimeStamp) {
				t.Errorf("%s: event %d timestamp %v", name, i, got.Events[i].TimeStamp)
			}
			got.Events[i].TimeStamp = want.Events[i].TimeStamp
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v\nwant %+v", name, got, want)
		}
	}
}

func TestParseSendNotificationStrict(t *testing.T) {
	orig := string(sample(t, "04-sendnotification-newmail.exchange-to-listener.xml"))
	status := string(sample(t, "03-sendnotification-status.exchange-to-listener.xml"))
	cases := map[string]string{
		"soap 1.2 envelope": strings.Replace(orig, "http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope", 1),
		"wrong ews namespace": strings.Replace(orig, `xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"`,
			`xmlns:m="http://schemas.microsoft.com/exchange/services/2006/typesX"`, 1),
		"undeclared prefix":  strings.Replace(orig, `xmlns:soap11="http://schemas.xmlsoap.org/soap/envelope/"`, "", 1),
		"no body":            strings.NewReplacer("<soap11:Body>", "<soap11:Bod>", "</soap11:Body>", "</soap11:Bod>").Replace(orig),
		"other operation":    strings.ReplaceAll(orig, "m:SendNotification>", "m:GetEvents>"),
		"no subscription id": strings.NewReplacer("<t:SubscriptionId>", "<t:SubscriptionIdX>", "</t:SubscriptionId>", "</t:SubscriptionIdX>").Replace(orig),
		"empty subscription": strings.Replace(status, "FwB0ZXN0LW1haWwyLm1zZnQudmlydHVhbBAAAABzUd2ea9nSRZxccnlZiYGL", " ", 1),
		"no events":          strings.Replace(status, "t:StatusEvent>", "t:UnknownEvent>", 2),
		"no timestamp":       strings.Replace(orig, "<t:TimeStamp>2024-05-01T09:15:02Z</t:TimeStamp>", "", 1),
		"bad timestamp":      strings.Replace(orig, "2024-05-01T09:15:02Z", "yesterday", 1),
		"year out of range":  strings.Replace(orig, "2024-05-01T09:15:02Z", "0000-01-01T00:00:00+01:00", 1),
		"no item id":         strings.Replace(orig, `<t:ItemId Id="AAMkAGItem1=" ChangeKey="CQAAAA=="/>`, "", 1),
		"empty item id":      strings.Replace(orig, `Id="AAMkAGItem1="`, `Id=""`, 1),
		"bad MoreEvents":     strings.Replace(orig, "<t:MoreEvents>false", "<t:MoreEvents>nope", 1),
		"error class":        strings.Replace(orig, `ResponseClass="Success"`, `ResponseClass="Error"`, 1),
		"unknown class":      strings.Replace(orig, `ResponseClass="Success"`, `ResponseClass="Fine"`, 1),
		"not xml":            "hello",
		"empty":              "",
		"truncated":          orig[:len(orig)/2],
		"trailing garbage":   orig + "<x/>",
	}
	for name, doc := range cases {
		_, err := parseSendNotification([]byte(doc))
		var re *ResponseError
		if !errors.Is(err, ErrMalformed) && !errors.As(err, &re) {
			t.Errorf("%s: want ErrMalformed or *ResponseError, got %v", name, err)
		}
	}
}

func TestBuildSendNotificationRoundTrip(t *testing.T) {
	seven := 7
	for name, n := range map[string]*Notification{
		"all events":  allEventsNotification(&seven),
		"no unread":   allEventsNotification(nil),
		"status only": {SubscriptionID: "S", Events: []Event{{Type: StatusEvent}}},
	} {
		got, err := parseSendNotification(BuildSendNotification(n))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(got, n) {
			t.Errorf("%s: round trip\n got %+v\nwant %+v", name, got, n)
		}
	}
}

func TestParseSendNotificationSizeLimit(t *testing.T) {
	orig := sample(t, "03-sendnotification-status.exchange-to-listener.xml")
	// Whitespace padding keeps the document valid: only the size is wrong.
	padded := append(bytes.Clone(orig), bytes.Repeat([]byte(" "), MaxNotificationSize-len(orig))...)
	if _, err := ParseSendNotification(bytes.NewReader(padded)); err != nil {
		t.Fatalf("document of exactly MaxNotificationSize refused: %v", err)
	}
	if _, err := ParseSendNotification(bytes.NewReader(append(padded, ' '))); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized document: want ErrTooLarge, got %v", err)
	}
}

func TestParseSendNotificationResult(t *testing.T) {
	for file, want := range map[string]SubscriptionStatus{
		"05-sendnotificationresult-ok.listener-to-exchange.xml":          SubscriptionOK,
		"06-sendnotificationresult-unsubscribe.listener-to-exchange.xml": SubscriptionUnsubscribe,
	} {
		got, err := ParseSendNotificationResult(sample(t, file))
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v", file, got, err)
		}
	}
	bad := strings.Replace(string(sample(t, "05-sendnotificationresult-ok.listener-to-exchange.xml")), ">OK<", ">Later<", 1)
	if _, err := ParseSendNotificationResult([]byte(bad)); !errors.Is(err, ErrMalformed) {
		t.Errorf("unknown status: want ErrMalformed, got %v", err)
	}
}

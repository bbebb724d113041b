package ews

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// Every shared sample is parsed by the parser for its kind, with its
// content checked. A sample added to the directory fails this test until it
// is given a check here.
func TestEverySampleParses(t *testing.T) {
	checks := map[string]func(t *testing.T, data []byte){
		"01-subscribe-push.request.xml":  requestOp("Subscribe"),
		"07-unsubscribe.request.xml":     requestOp("Unsubscribe"),
		"09-getitem.request.xml":         requestOp("GetItem"),
		"11-getfolder-inbox.request.xml": requestOp("GetFolder"),
		"02-subscribe.response.xml": func(t *testing.T, data []byte) {
			s, err := ParseSubscribeResponse(data)
			if err != nil || s.ID != "FwB0ZXN0LW1haWwyLm1zZnQudmlydHVhbBAAAABzUd2ea9nSRZxccnlZiYGL" || s.Watermark != "AQAAAE0NHLpGbA9HjwSmPXXJyw5makMAAAAAAAE=" {
				t.Errorf("got %+v, %v", s, err)
			}
		},
		"03-sendnotification-status.exchange-to-listener.xml":            notification(StatusEvent),
		"04-sendnotification-newmail.exchange-to-listener.xml":           notification(CreatedEvent, NewMailEvent),
		"exo-sendnotification-modified.rooms-doc.xml":                    notification(ModifiedEvent, ModifiedEvent),
		"05-sendnotificationresult-ok.listener-to-exchange.xml":          result(SubscriptionOK),
		"06-sendnotificationresult-unsubscribe.listener-to-exchange.xml": result(SubscriptionUnsubscribe),
		"08-unsubscribe-error.response.xml": func(t *testing.T, data []byte) {
			_, err := responseMessage(data, "UnsubscribeResponse", "UnsubscribeResponseMessage")
			var re *ResponseError
			if !errors.Is(err, ErrSubscriptionNotFound) || !errors.As(err, &re) || re.Class != "Error" ||
				re.Message != "The specified subscription was not found." {
				t.Errorf("got %#v", err)
			}
		},
		"10-getitem.response.xml": func(t *testing.T, data []byte) {
			item, err := ParseGetItemResponse(data)
			if err != nil {
				t.Fatal(err)
			}
			want := Item{
				ID:               ItemID{ID: "AAMkAGItem1=", ChangeKey: "CQAAAA=="},
				Subject:          "Quarterly report",
				From:             Mailbox{Name: "Alice Example", EmailAddress: "alice@example.com"},
				Preview:          "Hi team, please find attached the quarterly report",
				DateTimeReceived: time.Date(2024, 5, 1, 9, 15, 0, 0, time.UTC),
			}
			if *item != want {
				t.Errorf("got %+v", item)
			}
		},
		"12-getfolder-inbox.response.xml": func(t *testing.T, data []byte) {
			f, err := ParseGetFolderResponse(data)
			if err != nil || f.UnreadCount != 7 || f.TotalCount != nil || f.ID != (FolderID{"AAMkAGInbox=", "AQAAABYAAAA="}) {
				t.Errorf("got %+v, %v", f, err)
			}
		},
		"13-error-serverbusy.soapfault-http500.xml": func(t *testing.T, data []byte) {
			_, err := ParseGetItemResponse(data)
			var re *ResponseError
			if !errors.Is(err, ErrServerBusy) || !errors.As(err, &re) || re.Class != ClassFault ||
				re.BackOff != 297749*time.Millisecond || re.Message == "" {
				t.Errorf("got %#v", err)
			}
		},
		"14-getitem-error-itemnotfound.response.xml": func(t *testing.T, data []byte) {
			_, err := ParseGetItemResponse(data)
			var re *ResponseError
			if !errors.Is(err, ErrItemNotFound) || !errors.As(err, &re) || re.Code != "ErrorItemNotFound" || re.BackOff != 0 {
				t.Errorf("got %#v", err)
			}
		},
	}
	for name, data := range samples(t) {
		check, ok := checks[name]
		if !ok {
			t.Errorf("sample %s has no check", name)
			continue
		}
		t.Run(name, func(t *testing.T) { check(t, data) })
	}
}

// requestOp checks that a request sample is an envelope whose body holds
// m:{op}.
func requestOp(op string) func(*testing.T, []byte) {
	return func(t *testing.T, data []byte) {
		body, err := parseEnvelope(data)
		if err != nil {
			t.Fatal(err)
		}
		if child(body, NamespaceMessages, op) == nil {
			t.Errorf("no m:%s in the body", op)
		}
	}
}

func notification(types ...EventType) func(*testing.T, []byte) {
	return func(t *testing.T, data []byte) {
		n, err := ParseSendNotification(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if n.SubscriptionID == "" || n.PreviousWatermark == "" || len(n.Events) != len(types) {
			t.Fatalf("got %+v", n)
		}
		for i, ev := range n.Events {
			if ev.Type != types[i] || ev.Watermark == "" {
				t.Errorf("event %d: %+v", i, ev)
			}
		}
	}
}

func result(want SubscriptionStatus) func(*testing.T, []byte) {
	return func(t *testing.T, data []byte) {
		if got, err := ParseSendNotificationResult(data); err != nil || got != want {
			t.Errorf("got %q, %v", got, err)
		}
	}
}

package ews

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// seed adds every shared sample, and a few hand-made variants, to f.
func seed(f *testing.F) {
	for _, b := range samples(f) {
		f.Add(b)
	}
	one := 1
	f.Add(BuildSendNotification(allEventsNotification(&one)))
	f.Add([]byte(billionLaughs + "<x>&lol9;</x>"))
}

// checkParseError asserts that a parser failed in one of its documented ways.
func checkParseError(t *testing.T, err error) {
	t.Helper()
	var re *ResponseError
	switch {
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrDTD), errors.Is(err, ErrTooLarge):
	case errors.As(err, &re):
		if re.Code == "" || re.Class == "" || re.BackOff < 0 {
			t.Fatalf("incomplete ResponseError %#v", re)
		}
	default:
		t.Fatalf("undocumented error %T: %v", err, err)
	}
}

// A successful parse has its required fields and survives
// BuildSendNotification and a second parse unchanged.
func FuzzParseSendNotification(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseSendNotification(bytes.NewReader(data))
		if err != nil {
			checkParseError(t, err)
			return
		}
		if n.SubscriptionID == "" || len(n.Events) == 0 {
			t.Fatalf("required fields missing: %+v", n)
		}
		for _, ev := range n.Events {
			if _, ok := eventKinds[ev.Type]; !ok {
				t.Fatalf("unknown event type %q", ev.Type)
			}
			if ev.Type != StatusEvent && (ev.TimeStamp.IsZero() || (ev.ItemID.ID == "") == (ev.FolderID.ID == "")) {
				t.Fatalf("event lacks a timestamp or exactly one id: %+v", ev)
			}
		}
		again, err := parseSendNotification(BuildSendNotification(n))
		if err != nil {
			t.Fatalf("re-serialised notification does not parse: %v", err)
		}
		for i := range n.Events {
			if !n.Events[i].TimeStamp.Equal(again.Events[i].TimeStamp) {
				t.Fatalf("event %d: timestamp %v became %v", i, n.Events[i].TimeStamp, again.Events[i].TimeStamp)
			}
			again.Events[i].TimeStamp = n.Events[i].TimeStamp
		}
		if !reflect.DeepEqual(n, again) {
			t.Fatalf("round trip changed the notification\n got %+v\nwant %+v", again, n)
		}
	})
}

// The response parsers never panic, fail only in documented ways, and a
// success carries the fields callers rely on.
func FuzzParseResponses(f *testing.F) {
	seed(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if s, err := ParseSubscribeResponse(data); err != nil {
			checkParseError(t, err)
		} else if s.ID == "" {
			t.Fatalf("subscription without id: %+v", s)
		}
		if item, err := ParseGetItemResponse(data); err != nil {
			checkParseError(t, err)
		} else if item.ID.ID == "" || (!item.DateTimeReceived.IsZero() && item.DateTimeReceived.Year() > 9999) {
			t.Fatalf("item without id or with an odd date: %+v", item)
		}
		if folder, err := ParseGetFolderResponse(data); err != nil {
			checkParseError(t, err)
		} else if folder.UnreadCount < 0 || (folder.TotalCount != nil && *folder.TotalCount < 0) {
			t.Fatalf("negative counts: %+v", folder)
		}
		if status, err := ParseSendNotificationResult(data); err != nil {
			checkParseError(t, err)
		} else if _, err := BuildSendNotificationResult(status); err != nil {
			t.Fatalf("parsed status %q cannot be written back", status)
		}
	})
}

// Any accepted fingerprint prints in a canonical form that parses back to
// the same value.
func FuzzParseFingerprint(f *testing.F) {
	f.Add("sha256:" + "AB:cd" + string(bytes.Repeat([]byte("0"), 60)))
	f.Add("spki-sha256:" + string(bytes.Repeat([]byte("f"), 64)))
	f.Add("sha256:")
	f.Fuzz(func(t *testing.T, s string) {
		fp, err := ParseFingerprint(s)
		if err != nil {
			return
		}
		again, err := ParseFingerprint(fp.String())
		if err != nil || again != fp || fp.IsZero() {
			t.Fatalf("%q -> %q -> %v, %v", s, fp, again, err)
		}
	})
}

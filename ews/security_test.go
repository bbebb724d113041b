package ews

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

const billionLaughs = `<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
`

const externalEntity = `<?xml version="1.0"?>
<!DOCTYPE foo [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> <!ENTITY % ext SYSTEM "http://127.0.0.1:1/evil.dtd"> %ext; ]>
`

// hostileDocuments returns valid-looking messages of each kind with a
// DTD-based attack grafted in.
func hostileDocuments(t *testing.T) map[string][]byte {
	notif := string(sample(t, "04-sendnotification-newmail.exchange-to-listener.xml"))
	notif = notif[strings.Index(notif, "<soap11:Envelope"):] // drop the XML declaration
	item := string(sample(t, "10-getitem.response.xml"))
	item = item[strings.Index(item, "<s:Envelope"):]
	return map[string][]byte{
		"notification billion laughs": []byte(billionLaughs + strings.Replace(notif, "AQAAAE0NHLpGbA9HjwSmPXXJyw5oakMAAAAAAAE=", "&lol9;", 1)),
		"notification xxe":            []byte(externalEntity + strings.Replace(notif, "AQAAAE0NHLpGbA9HjwSmPXXJyw5oakMAAAAAAAE=", "&xxe;", 1)),
		"getitem billion laughs":      []byte(billionLaughs + strings.Replace(item, "Quarterly report", "&lol9;", 1)),
		"getitem xxe":                 []byte(externalEntity + strings.Replace(item, "Quarterly report", "&xxe;", 1)),
		"doctype without entities":    []byte("<!DOCTYPE Envelope>\n" + notif),
		// encoding/xml also accepts directives inside elements.
		"doctype inside body": []byte(strings.Replace(notif, "<soap11:Body>", `<soap11:Body><!DOCTYPE x [<!ENTITY a "b">]>`, 1)),
	}
}

// DTDs are refused outright, quickly, by every parser; nothing is expanded
// or fetched.
func TestDTDRejected(t *testing.T) {
	for name, doc := range hostileDocuments(t) {
		start := time.Now()
		_, err1 := ParseSendNotification(bytes.NewReader(doc))
		_, err2 := ParseGetItemResponse(doc)
		_, err3 := ParseSubscribeResponse(doc)
		_, err4 := ParseGetFolderResponse(doc)
		_, err5 := ParseSendNotificationResult(doc)
		for i, err := range []error{err1, err2, err3, err4, err5} {
			if !errors.Is(err, ErrDTD) {
				t.Errorf("%s, parser %d: want ErrDTD, got %v", name, i+1, err)
			}
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: took %v", name, d)
		}
	}
	if !strings.Contains(ErrDTD.Error(), "DOCTYPE") {
		t.Errorf("ErrDTD should say what was refused: %q", ErrDTD)
	}
}

// Without a DTD an entity reference cannot be defined, and the decoder knows
// only the predefined five: the reference is a syntax error, not expanded.
func TestUndeclaredEntityNotExpanded(t *testing.T) {
	doc := strings.Replace(string(sample(t, "10-getitem.response.xml")), "Quarterly report", "&xxe;", 1)
	if _, err := ParseGetItemResponse([]byte(doc)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("want ErrMalformed, got %v", err)
	}
	// The predefined entities and character references still work.
	doc = strings.Replace(string(sample(t, "10-getitem.response.xml")), "Quarterly report", "Q&amp;A &#x263A;", 1)
	item, err := ParseGetItemResponse([]byte(doc))
	if err != nil || item.Subject != "Q&A ☺" {
		t.Fatalf("got %+v, %v", item, err)
	}
}

// Deep nesting is cut off by the depth limit rather than building a tree.
func TestDeepNestingRejected(t *testing.T) {
	notif := string(sample(t, "03-sendnotification-status.exchange-to-listener.xml"))
	deep := strings.Repeat("<x:a xmlns:x='urn:x'>", 10000) + strings.Repeat("</x:a>", 10000)
	doc := strings.Replace(notif, "<t:MoreEvents>", deep+"<t:MoreEvents>", 1)
	if _, err := parseSendNotification([]byte(doc)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("want ErrMalformed, got %v", err)
	}
}

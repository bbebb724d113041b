package ewssim

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// findItemOp asks for Subject and Body (which FindItem never returns) of a
// folder's items, paged and sorted as given; view and order may be empty.
func findItemOp(folder, view, order string) string {
	if order != "" {
		order = `<m:SortOrder><t:FieldOrder Order="` + order + `"><t:FieldURI FieldURI="item:DateTimeReceived"/></t:FieldOrder></m:SortOrder>`
	}
	return `<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>
<t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="item:Body"/></t:AdditionalProperties></m:ItemShape>` +
		view + order + `<m:ParentFolderIds>` + folder + `</m:ParentFolderIds></m:FindItem>`
}

func indexedView(max, offset int, basePoint string) string {
	return `<m:IndexedPageItemView MaxEntriesReturned="` + strconv.Itoa(max) + `" Offset="` + strconv.Itoa(offset) + `" BasePoint="` + basePoint + `"/>`
}

const inboxID = `<t:DistinguishedFolderId Id="inbox"/>`

// deliverThree fills alice's Inbox with mails "1", "2", "3", received in
// that order.
func deliverThree(t *testing.T, ts *TestServer) {
	t.Helper()
	at := time.Now().Add(-time.Hour)
	for i, subject := range []string{"1", "2", "3"} {
		if _, err := ts.Deliver(alice, Mail{From: "carol@example.net", Subject: subject, Body: "body " + subject, Received: at.Add(time.Duration(i) * time.Minute)}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFindItemSortsAndPages(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	deliverThree(t, ts)
	for _, tc := range []struct {
		name, view, order string
		subjects          []string
		next              string // IndexedPagingOffset
		last              string // IncludesLastItemInRange
	}{
		{"no view: newest first", "", "", []string{"3", "2", "1"}, "3", "true"},
		{"first page", indexedView(2, 0, "Beginning"), "Descending", []string{"3", "2"}, "2", "false"},
		{"second page", indexedView(2, 2, "Beginning"), "Descending", []string{"1"}, "3", "true"},
		{"past the end", indexedView(2, 5, "Beginning"), "Descending", nil, "3", "true"},
		{"ascending", indexedView(2, 0, "Beginning"), "Ascending", []string{"1", "2"}, "2", "false"},
		{"from the end", indexedView(2, 0, "End"), "Descending", []string{"2", "1"}, "2", "false"},
		{"from the end, next", indexedView(2, 2, "End"), "Descending", []string{"3"}, "3", "true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := callEWS(t, ts, findItemOp(inboxID, tc.view, tc.order), http.StatusOK)
			if code := one(t, b, "ResponseCode"); code != "NoError" {
				t.Fatalf("ResponseCode %s", code)
			}
			if got := find(t, b, "Subject"); !slices.Equal(got, tc.subjects) {
				t.Errorf("subjects %v, want %v", got, tc.subjects)
			}
			if strings.Contains(string(b), "<t:Body") {
				t.Errorf("FindItem returned bodies:\n%s", b)
			}
			attrs := map[string]string{"IndexedPagingOffset": tc.next, "TotalItemsInView": "3", "IncludesLastItemInRange": tc.last}
			for attr, want := range attrs {
				if got := findAttr(t, b, "RootFolder", attr); !slices.Equal(got, []string{want}) {
					t.Errorf("%s = %v, want %s", attr, got, want)
				}
			}
		})
	}
}

func TestFindItemFoldersAndRefusals(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	deliverThree(t, ts)

	// The Inbox's parent has no items; another folder is not found.
	b := callEWS(t, ts, findItemOp(`<t:DistinguishedFolderId Id="msgfolderroot"/><t:DistinguishedFolderId Id="calendar"/>`, "", ""), http.StatusOK)
	if got := find(t, b, "ResponseCode"); !slices.Equal(got, []string{"NoError", "ErrorFolderNotFound"}) {
		t.Errorf("msgfolderroot and calendar: %v", got)
	}
	if got := findAttr(t, b, "RootFolder", "TotalItemsInView"); !slices.Equal(got, []string{"0"}) {
		t.Errorf("msgfolderroot TotalItemsInView %v, want [0]", got)
	}
	// The simulator has no associated (hidden) items.
	assoc := callEWS(t, ts, `<m:FindItem Traversal="Associated"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>
<m:ParentFolderIds>`+inboxID+`</m:ParentFolderIds></m:FindItem>`, http.StatusOK)
	if got := find(t, assoc, "ItemId"); len(got) != 0 {
		t.Errorf("associated items: %d", len(got))
	}

	for name, op := range map[string]string{
		"restriction": `<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>
<m:Restriction><t:Exists><t:FieldURI FieldURI="item:Subject"/></t:Exists></m:Restriction><m:ParentFolderIds>` + inboxID + `</m:ParentFolderIds></m:FindItem>`,
		"sort by subject": `<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>
<m:SortOrder><t:FieldOrder Order="Ascending"><t:FieldURI FieldURI="item:Subject"/></t:FieldOrder></m:SortOrder><m:ParentFolderIds>` + inboxID + `</m:ParentFolderIds></m:FindItem>`,
	} {
		if got := one(t, callEWS(t, ts, op, http.StatusInternalServerError), "ResponseCode"); got != "ErrorInvalidRequest" {
			t.Errorf("%s: %s, want ErrorInvalidRequest", name, got)
		}
	}
	for name, op := range map[string]string{
		"no folder":       findItemOp("", "", ""),
		"negative offset": findItemOp(inboxID, indexedView(2, -1, "Beginning"), ""),
		"zero max":        findItemOp(inboxID, indexedView(0, 0, "Beginning"), ""),
		"bad base point":  findItemOp(inboxID, indexedView(2, 0, "Middle"), ""),
	} {
		if got := one(t, callEWS(t, ts, op, http.StatusInternalServerError), "ResponseCode"); got != "ErrorSchemaValidation" {
			t.Errorf("%s: %s, want ErrorSchemaValidation", name, got)
		}
	}
}

// TestFolderHierarchy checks root → msgfolderroot → inbox, as clients that
// look up "root" first (exchangelib) walk it.
func TestFolderHierarchy(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	getAll := func(ids string) []byte {
		return callEWS(t, ts, `<m:GetFolder><m:FolderShape><t:BaseShape>AllProperties</t:BaseShape></m:FolderShape>
<m:FolderIds>`+ids+`</m:FolderIds></m:GetFolder>`, http.StatusOK)
	}
	b := getAll(`<t:DistinguishedFolderId Id="root"/><t:DistinguishedFolderId Id="msgfolderroot"/>` + inboxID)
	if got := find(t, b, "ResponseCode"); !slices.Equal(got, []string{"NoError", "NoError", "NoError"}) {
		t.Fatalf("GetFolder root, msgfolderroot, inbox: %v", got)
	}
	ids := findAttr(t, b, "FolderId", "Id")
	// root has no parent; each other folder's parent is the one before.
	if got := findAttr(t, b, "ParentFolderId", "Id"); !slices.Equal(got, ids[:2]) {
		t.Errorf("parents %v, want %v", got, ids[:2])
	}
	if got := find(t, b, "DisplayName"); !slices.Equal(got, []string{"Top of Information Store", "Inbox"}) {
		t.Errorf("display names %v", got)
	}
	if got := find(t, b, "ChildFolderCount"); !slices.Equal(got, []string{"1", "1", "0"}) {
		t.Errorf("child folder counts %v", got)
	}
	// By FolderId too, and a DistinguishedFolderId of the user's own
	// mailbox (exchangelib names it) but not of another one.
	b = getAll(`<t:FolderId Id="` + ids[0] + `"/><t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>ALICE@example.com</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>` +
		`<t:DistinguishedFolderId Id="inbox"><t:Mailbox><t:EmailAddress>` + bob + `</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>`)
	if got := find(t, b, "ResponseCode"); !slices.Equal(got, []string{"NoError", "NoError", "ErrorFolderNotFound"}) {
		t.Errorf("root by id, own inbox, bob's inbox: %v", got)
	}
	// Only the Inbox can be subscribed to.
	b = callEWS(t, ts, `<m:Subscribe><m:PushSubscriptionRequest><t:FolderIds><t:DistinguishedFolderId Id="msgfolderroot"/></t:FolderIds>
<t:EventTypes><t:EventType>NewMailEvent</t:EventType></t:EventTypes><t:StatusFrequency>5</t:StatusFrequency><t:URL>http://127.0.0.1:1/</t:URL>
</m:PushSubscriptionRequest></m:Subscribe>`, http.StatusOK)
	if got := one(t, b, "ResponseCode"); got != "ErrorFolderNotFound" {
		t.Errorf("Subscribe to msgfolderroot: %s", got)
	}
}

// TestConvertIdVersionProbe checks the answer to exchangelib's version probe:
// an error per id, and ServerVersionInfo in the header.
func TestConvertIdVersionProbe(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	b := callEWS(t, ts, `<m:ConvertId DestinationFormat="EntryId"><m:SourceIds>
<t:AlternateId Id="DUMMY" Format="EwsId" Mailbox="DUMMY"/><t:AlternateId Id="X" Format="EwsId" Mailbox="`+alice+`"/>
</m:SourceIds></m:ConvertId>`, http.StatusOK)
	if got := find(t, b, "ResponseCode"); !slices.Equal(got, []string{"ErrorInvalidIdMalformed", "ErrorInvalidIdMalformed"}) {
		t.Errorf("ConvertId: %v", got)
	}
	if got := findAttr(t, b, "ServerVersionInfo", "MajorVersion"); !slices.Equal(got, []string{"15"}) {
		t.Errorf("ServerVersionInfo MajorVersion %v", got)
	}
	if got := one(t, callEWS(t, ts, `<m:ConvertId DestinationFormat="EntryId"/>`, http.StatusInternalServerError), "ResponseCode"); got != "ErrorSchemaValidation" {
		t.Errorf("ConvertId without ids: %s", got)
	}
}

package graphsim

import (
	"net/url"
	"sort"
	"strings"
	"testing"
)

func TestMeAndInbox(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	info, _ := ts.UserInfo(alice)
	resp, me := call(t, ts, at, "GET", "/me", nil)
	if resp.StatusCode != 200 || me["id"] != info.ID || me["mail"] != alice || me["userPrincipalName"] != alice {
		t.Fatalf("/me: %d %v", resp.StatusCode, me)
	}
	m1, _ := ts.Deliver(alice, Mail{From: "carol@example.com", Subject: "one", Body: "first"})
	ts.Deliver(alice, Mail{From: "carol@example.com", Subject: "two", Body: "second"})
	ts.MarkRead(alice, m1.ID, true)
	for _, p := range []string{"/me/mailFolders('inbox')", "/me/mailFolders/inbox", "/me/mailFolders('Inbox')", "/users/" + info.ID + "/mailFolders/inbox", "/me/mailFolders/" + url.PathEscape(info.InboxID)} {
		resp, f := call(t, ts, at, "GET", p, nil)
		if resp.StatusCode != 200 || f["id"] != info.InboxID || f["unreadItemCount"] != float64(1) || f["totalItemCount"] != float64(2) {
			t.Errorf("%s: %d %v", p, resp.StatusCode, f)
		}
	}
	resp, f := call(t, ts, at, "GET", "/me/mailFolders/inbox?$select=unreadItemCount", nil)
	if resp.StatusCode != 200 || len(f) != 3 || f["unreadItemCount"] != float64(1) || f["id"] == nil {
		t.Errorf("$select on folder: %v", f)
	}
	// Another user's mailbox is not reachable with a delegated token.
	if resp, v := call(t, ts, at, "GET", "/users/"+bob+"/mailFolders/inbox", nil); resp.StatusCode != 403 || errCode(v) != "ErrorAccessDenied" {
		t.Errorf("bob's inbox: %d %v", resp.StatusCode, v)
	}
	if resp, _ := call(t, ts, at, "GET", "/me/mailFolders/sentitems", nil); resp.StatusCode != 404 {
		t.Errorf("other folder: %d", resp.StatusCode)
	}
	if c := ts.Counters(); c.Requests[alice] != 9 || c.Operations["mailFolder"] != 6 || c.Operations["me"] != 1 {
		t.Errorf("counters %v %v", c.Requests, c.Operations)
	}
}

func TestGetMessageSelect(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	m, _ := ts.Deliver(alice, Mail{From: "Carol@Example.com", FromName: "Carol", Subject: "Lunch", Body: "  Shall   we\n go?  "})
	for _, p := range []string{"/me/messages/", "/me/mailFolders('inbox')/messages/", "/users/" + alice + "/messages/"} {
		resp, v := call(t, ts, at, "GET", p+url.PathEscape(m.ID)+"?$select=from,subject,bodyPreview,receivedDateTime,isRead", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %v", p, resp.StatusCode, v)
		}
		var keys []string
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		want := "@odata.context @odata.etag bodyPreview from id isRead receivedDateTime subject"
		if strings.Join(keys, " ") != want {
			t.Errorf("%s: keys %v", p, keys)
		}
		from := v["from"].(map[string]any)["emailAddress"].(map[string]any)
		if v["subject"] != "Lunch" || v["bodyPreview"] != "Shall we go?" || from["address"] != "carol@example.com" || from["name"] != "Carol" || v["isRead"] != false {
			t.Errorf("%s: %v", p, v)
		}
		if !strings.Contains(v["@odata.context"].(string), "messages(from,subject,bodyPreview,receivedDateTime,isRead)/$entity") {
			t.Errorf("context %v", v["@odata.context"])
		}
	}
	// Without $select: everything but uniqueBody.
	_, v := call(t, ts, at, "GET", "/me/messages/"+m.ID, nil)
	if v["body"] == nil || v["parentFolderId"] == nil || v["uniqueBody"] != nil || v["sender"] == nil {
		t.Errorf("full message %v", v)
	}
	// An unknown property is a 400.
	if resp, v := call(t, ts, at, "GET", "/me/messages/"+m.ID+"?$select=subject,nonsense", nil); resp.StatusCode != 400 || errCode(v) != "RequestBroker--ParseUri" {
		t.Errorf("bad $select: %d %v", resp.StatusCode, v)
	}
	// Mail.ReadBasic reads no preview.
	basic := getToken(t, ts, alice, "Mail.ReadBasic", "offline_access")
	_, v = call(t, ts, basic, "GET", "/me/messages/"+m.ID+"?$select=subject,bodyPreview", nil)
	if v["subject"] != "Lunch" || v["bodyPreview"] != nil {
		t.Errorf("Mail.ReadBasic: %v", v)
	}
	// No mail scope: 403.
	none := getToken(t, ts, alice, "User.Read", "offline_access")
	if resp, _ := call(t, ts, none, "GET", "/me/messages/"+m.ID, nil); resp.StatusCode != 403 {
		t.Errorf("User.Read only: %d", resp.StatusCode)
	}
	// Deleted: 404 ErrorItemNotFound.
	if err := ts.DeleteMessage(alice, m.ID); err != nil {
		t.Fatal(err)
	}
	resp, v := call(t, ts, at, "GET", "/me/messages/"+m.ID+"?$select=subject", nil)
	e, _ := v["error"].(map[string]any)
	if resp.StatusCode != 404 || errCode(v) != "ErrorItemNotFound" || e["message"] != "The specified object was not found in the store." || e["innerError"] == nil {
		t.Errorf("deleted: %d %v", resp.StatusCode, v)
	}
}

// deltaRound follows nextLinks to the deltaLink, returning every item.
func deltaRound(t *testing.T, ts *TestServer, at, start string, pageSize string) (items []map[string]any, pages int, deltaLink string) {
	t.Helper()
	next := start
	for next != "" {
		resp, v := call(t, ts, at, "GET", next, nil, "Prefer", "odata.maxpagesize="+pageSize)
		if resp.StatusCode != 200 {
			t.Fatalf("delta %s: %d %v", next, resp.StatusCode, v)
		}
		pages++
		for _, it := range v["value"].([]any) {
			items = append(items, it.(map[string]any))
		}
		next, _ = v["@odata.nextLink"].(string)
		if next == "" {
			deltaLink, _ = v["@odata.deltaLink"].(string)
			if deltaLink == "" {
				t.Fatalf("a last page without deltaLink: %v", v)
			}
		} else if v["@odata.deltaLink"] != nil {
			t.Fatalf("a page with both links: %v", v)
		}
		if pages > 50 {
			t.Fatal("delta does not end")
		}
	}
	return items, pages, deltaLink
}

func TestDeltaPagingAndChanges(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	var ids []string
	for i := range 5 {
		m, _ := ts.Deliver(alice, Mail{From: "x@example.com", Subject: "s" + string(rune('0'+i)), Body: "b"})
		ids = append(ids, m.ID)
	}
	items, pages, dl := deltaRound(t, ts, at, "/me/mailFolders('inbox')/messages/delta?$select=subject,from", "2")
	if len(items) != 5 || pages != 3 {
		t.Fatalf("first round: %d items in %d pages", len(items), pages)
	}
	for _, it := range items {
		if it["subject"] == nil || it["id"] == nil || it["bodyPreview"] != nil || it["isRead"] != nil {
			t.Errorf("$select not applied (or not carried by the skiptoken): %v", it)
		}
	}
	if !strings.Contains(dl, "$deltatoken=") {
		t.Fatalf("deltaLink %q", dl)
	}
	// Nothing changed: an empty round.
	items, _, dl = deltaRound(t, ts, at, dl, "2")
	if len(items) != 0 {
		t.Fatalf("no changes, got %v", items)
	}
	// One read, one deleted, one new.
	ts.MarkRead(alice, ids[1], true)
	ts.DeleteMessage(alice, ids[3])
	nm, _ := ts.Deliver(alice, Mail{From: "y@example.com", Subject: "new", Body: "b"})
	items, _, dl = deltaRound(t, ts, at, dl, "10")
	got := map[string]map[string]any{}
	for _, it := range items {
		got[it["id"].(string)] = it
	}
	if len(items) != 3 || got[ids[1]] == nil || got[nm.ID]["subject"] != "new" {
		t.Fatalf("second round: %v", items)
	}
	if rm, _ := got[ids[3]]["@removed"].(map[string]any); rm["reason"] != "deleted" {
		t.Errorf("deletion: %v", got[ids[3]])
	}
	// Delta tokens can be expired: 410 SyncStateNotFound.
	ts.ExpireDeltaTokens(alice)
	if resp, v := call(t, ts, at, "GET", dl, nil); resp.StatusCode != 410 || errCode(v) != "SyncStateNotFound" {
		t.Errorf("expired delta token: %d %v", resp.StatusCode, v)
	}
	// Another user's token is refused.
	bt := getToken(t, ts, bob)
	_, _, bdl := deltaRound(t, ts, bt, "/me/mailFolders/inbox/messages/delta", "5")
	_, tok, _ := strings.Cut(bdl, "$deltatoken=")
	if resp, _ := call(t, ts, at, "GET", "/me/mailFolders/inbox/messages/delta?$deltatoken="+tok, nil); resp.StatusCode != 400 {
		t.Errorf("bob's delta token with alice's access token: %d", resp.StatusCode)
	}
}

func TestDeltaChangeTypeCreated(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	m, _ := ts.Deliver(alice, Mail{From: "x@example.com", Subject: "old"})
	_, _, dl := deltaRound(t, ts, at, "/me/mailFolders/inbox/messages/delta?changeType=created", "10")
	ts.MarkRead(alice, m.ID, true)
	n, _ := ts.Deliver(alice, Mail{From: "x@example.com", Subject: "new"})
	items, _, _ := deltaRound(t, ts, at, dl, "10")
	if len(items) != 1 || items[0]["id"] != n.ID {
		t.Fatalf("created only: %v", items)
	}
}

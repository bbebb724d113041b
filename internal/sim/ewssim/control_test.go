package ewssim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"
)

// ctl calls the control API and decodes a JSON answer into out (if any).
func ctl(t testing.TB, ts *TestServer, token, method, path string, in any, want int, out any) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, ts.URL+path, body)
	if token != "" {
		req.Header.Set("X-Sim-Token", token)
	}
	resp, b := do(t, req)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: HTTP %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

func TestControlAPI(t *testing.T) {
	const tok = "sim-secret"
	ts := Start(t, Config{ControlToken: tok})
	c := func(method, path string, in any, want int, out any) {
		t.Helper()
		ctl(t, ts, tok, method, path, in, want, out)
	}

	// The guard.
	ctl(t, ts, "", http.MethodGet, "/_sim/health", nil, http.StatusForbidden, nil)
	ctl(t, ts, "wrong", http.MethodGet, "/_sim/counters", nil, http.StatusForbidden, nil)
	c(http.MethodGet, "/_sim/health", nil, http.StatusOK, nil)
	c(http.MethodGet, "/_sim/nothing", nil, http.StatusNotFound, nil)

	// Users.
	c(http.MethodPost, "/_sim/users", User{Address: "Dave@Example.com", Password: "pw1", Token: "tok1"}, http.StatusCreated, nil)
	c(http.MethodPost, "/_sim/users", User{Address: "dave@example.com"}, http.StatusConflict, nil)
	c(http.MethodPost, "/_sim/users", map[string]string{"address": "x@example.com", "bogus": "field"}, http.StatusBadRequest, nil)
	var users []User
	c(http.MethodGet, "/_sim/users", nil, http.StatusOK, &users)
	if len(users) != 1 || users[0].Address != "dave@example.com" || users[0].Password != "" || users[0].Token != "" {
		t.Errorf("users %+v (secrets must not be listed)", users)
	}
	const dave = "/_sim/users/dave@example.com"

	// Mail, read flag, deletion; checked through EWS too.
	var it Item
	c(http.MethodPost, dave+"/mail", Mail{From: "erin@example.net", FromName: "Erin", Subject: "Hi", Body: "Hello Dave"}, http.StatusCreated, &it)
	if it.ID == "" || it.Preview != "Hello Dave" {
		t.Fatalf("delivered %+v", it)
	}
	c(http.MethodPost, "/_sim/users/nobody@example.com/mail", Mail{Subject: "x"}, http.StatusNotFound, nil)
	resp, b := post(t, ts.EWSURL, "dave@example.com", "pw1", soapRequest(getItemOp(it.ID)))
	if resp.StatusCode != http.StatusOK || one(t, b, "Subject") != "Hi" || one(t, b, "Name") != "Erin" {
		t.Errorf("GetItem of delivered mail: %s", b)
	}
	var list struct {
		Unread int    `json:"unreadCount"`
		Total  int    `json:"totalCount"`
		Items  []Item `json:"items"`
	}
	c(http.MethodGet, dave+"/items", nil, http.StatusOK, &list)
	if list.Unread != 1 || list.Total != 1 || list.Items[0].ID != it.ID {
		t.Errorf("items %+v", list)
	}
	itemPath := dave + "/items/" + url.PathEscape(it.ID)
	c(http.MethodPut, itemPath+"/read", map[string]bool{"read": true}, http.StatusNoContent, nil)
	_, b = post(t, ts.EWSURL, "dave@example.com", "pw1", soapRequest(getInboxOp))
	if one(t, b, "UnreadCount") != "0" || one(t, b, "TotalCount") != "1" {
		t.Errorf("GetFolder after mark-read: %s", b)
	}
	c(http.MethodDelete, itemPath, nil, http.StatusNoContent, nil)
	c(http.MethodDelete, itemPath, nil, http.StatusNotFound, nil)

	// Credentials.
	c(http.MethodPut, dave+"/password", map[string]string{"password": "pw2"}, http.StatusNoContent, nil)
	if resp, _ := post(t, ts.EWSURL, "dave@example.com", "pw1", soapRequest(getInboxOp)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("old password after change: HTTP %d", resp.StatusCode)
	}
	c(http.MethodPut, dave+"/token", map[string]string{"token": "tok2"}, http.StatusNoContent, nil)
	c(http.MethodDelete, dave+"/token", nil, http.StatusNoContent, nil)
	if resp, _ := ewsWith(t, ts, "Bearer tok2"); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("revoked token: HTTP %d", resp.StatusCode)
	}

	// Faults.
	var created struct{ ID string }
	c(http.MethodPost, "/_sim/faults", map[string]any{"kind": "ServerBusy", "operation": "GetFolder", "count": 1, "backOffMs": 2500}, http.StatusCreated, &created)
	c(http.MethodPost, "/_sim/faults", map[string]any{"kind": "Delay"}, http.StatusBadRequest, nil)
	var faults []map[string]any
	c(http.MethodGet, "/_sim/faults", nil, http.StatusOK, &faults)
	if len(faults) != 1 || faults[0]["id"] != created.ID || faults[0]["backOffMs"] != 2500.0 {
		t.Errorf("faults %v", faults)
	}
	_, b = post(t, ts.EWSURL, "dave@example.com", "pw2", soapRequest(getInboxOp))
	if one(t, b, "Value") != "2500" {
		t.Errorf("injected ServerBusy: %s", b)
	}
	c(http.MethodPost, "/_sim/faults", map[string]any{"kind": "Unavailable"}, http.StatusCreated, &created)
	c(http.MethodDelete, "/_sim/faults/"+created.ID, nil, http.StatusNoContent, nil)
	c(http.MethodDelete, "/_sim/faults/"+created.ID, nil, http.StatusNotFound, nil)
	c(http.MethodPost, "/_sim/faults", map[string]any{"kind": "Unavailable"}, http.StatusCreated, nil)
	c(http.MethodDelete, "/_sim/faults", nil, http.StatusNoContent, nil)
	c(http.MethodGet, "/_sim/faults", nil, http.StatusOK, &faults)
	if len(faults) != 0 {
		t.Errorf("faults after clearing: %v", faults)
	}

	// Subscriptions and counters.
	l := newListener(t, answerOK)
	resp, b = post(t, ts.EWSURL, "dave@example.com", "pw2", soapRequest(subscribeOp(l.srv.URL, 30, "")))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("Subscribe: %s", b)
	}
	var subs []SubscriptionInfo
	c(http.MethodGet, "/_sim/subscriptions", nil, http.StatusOK, &subs)
	if len(subs) != 1 || subs[0].ID != one(t, b, "SubscriptionId") || subs[0].State != StateActive || subs[0].StatusFrequency != 30 {
		t.Errorf("subscriptions %+v", subs)
	}
	var counters Counters
	c(http.MethodGet, "/_sim/counters", nil, http.StatusOK, &counters)
	if counters.Requests["GetItem"] != 1 || counters.Requests["GetFolder"] != 2 || counters.Faults["ServerBusy"] != 1 || counters.Delivered != 1 {
		t.Errorf("counters %+v", counters)
	}
	c(http.MethodDelete, "/_sim/counters", nil, http.StatusNoContent, nil)
	var after Counters
	c(http.MethodGet, "/_sim/counters", nil, http.StatusOK, &after)
	if len(after.Requests) != 0 || after.Delivered != 0 {
		t.Errorf("counters after reset %+v", after)
	}
}

// TestControlNotReachableAsEWS: control requests are never EWS and EWS
// credentials do not open the control API.
func TestControlNotReachableAsEWS(t *testing.T) {
	ts := Start(t, Config{Users: testUsers(), ControlToken: "t"})
	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/_sim/users", nil)
	req.SetBasicAuth(alice, alicePW)
	req.Header.Set("Authorization", "Bearer "+aliceTok)
	if resp, _ := do(t, req); resp.StatusCode != http.StatusForbidden {
		t.Errorf("EWS bearer token opened the control API: HTTP %d", resp.StatusCode)
	}
	if resp, _ := post(t, ts.URL+"/EWS/_sim/users", alice, alicePW, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("control path under /EWS: HTTP %d", resp.StatusCode)
	}
}

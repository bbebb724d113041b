package graphsim

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestSubscriptionHandshakeOnBothURLs(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	l, lc := newListener(t), newListener(t)
	out := subscribe(t, ts, at, subBody(l, lc, t0.Add(3*24*time.Hour)))
	if len(l.validations) != 1 || len(lc.validations) != 1 {
		t.Fatalf("validations: %d on the notification URL, %d on the lifecycle URL", len(l.validations), len(lc.validations))
	}
	// The token arrives URL-decoded (spaces and colons) and is opaque.
	if tok := l.validations[0]; !strings.Contains(tok, "Validation: Testing client application reachability") {
		t.Errorf("validation token %q", tok)
	}
	if out["id"] == "" || out["clientState"] != "secret-state" || out["changeType"] != "created" ||
		out["lifecycleNotificationUrl"] != lc.URL+"/lifecycle" || out["applicationId"] != DefaultClientID ||
		out["expirationDateTime"] != "2026-10-04T09:00:00.0000000Z" || out["notificationUrl"] != l.URL+"/notify?x=1" {
		t.Errorf("subscription %v", out)
	}
	if c := ts.Counters(); c.SubscriptionsCreated != 1 || c.ValidationsSent != 2 {
		t.Errorf("counters %+v", c)
	}
	// GET, list and DELETE.
	id := out["id"].(string)
	if resp, v := call(t, ts, at, "GET", "/subscriptions/"+id, nil); resp.StatusCode != 200 || v["id"] != id {
		t.Errorf("GET: %d %v", resp.StatusCode, v)
	}
	if _, v := call(t, ts, at, "GET", "/subscriptions", nil); len(v["value"].([]any)) != 1 {
		t.Errorf("list: %v", v)
	}
	bt := getToken(t, ts, bob)
	if resp, _ := call(t, ts, bt, "DELETE", "/subscriptions/"+id, nil); resp.StatusCode != 404 {
		t.Errorf("bob deletes alice's subscription: %d", resp.StatusCode)
	}
	if resp, _ := call(t, ts, at, "DELETE", "/subscriptions/"+id, nil); resp.StatusCode != 204 {
		t.Errorf("DELETE: %d", resp.StatusCode)
	}
	if resp, _ := call(t, ts, at, "GET", "/subscriptions/"+id, nil); resp.StatusCode != 404 {
		t.Errorf("GET after delete: %d", resp.StatusCode)
	}
}

func TestSubscriptionValidationFailures(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	cases := map[string]func(w http.ResponseWriter, tok string){
		"404": func(w http.ResponseWriter, tok string) { http.NotFound(w, nil) },
		"wrong token": func(w http.ResponseWriter, tok string) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, "nope")
		},
		"encoded token": func(w http.ResponseWriter, tok string) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, strings.ReplaceAll(tok, " ", "+"))
		},
		"json": func(w http.ResponseWriter, tok string) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, tok)
		},
		"slow": func(w http.ResponseWriter, tok string) {
			time.Sleep(700 * time.Millisecond) // ValidationTimeout is 500 ms here
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, tok)
		},
	}
	for name, answer := range cases {
		for _, lifecycle := range []bool{false, true} {
			good, bad := newListener(t), newListener(t)
			bad.set(func(l *listener) { l.validate = answer })
			body := subBody(bad, nil, t0.Add(time.Hour))
			if lifecycle {
				body = subBody(good, bad, t0.Add(time.Hour))
			}
			resp, v := call(t, ts, at, "POST", "/subscriptions", body)
			e, _ := v["error"].(map[string]any)
			if msg, _ := e["message"].(string); resp.StatusCode != 400 || errCode(v) != "InvalidRequest" || !strings.HasPrefix(msg, "Subscription validation request failed.") {
				t.Errorf("%s (lifecycle %v): %d %v", name, lifecycle, resp.StatusCode, v)
			}
		}
	}
	if n := len(ts.Subscriptions()); n != 0 {
		t.Errorf("%d subscriptions after failed validations", n)
	}
	if c := ts.Counters(); c.ValidationsFailed != 10 || c.SubscriptionsCreated != 0 {
		t.Errorf("counters %+v", c)
	}
}

func TestSubscriptionRequestChecks(t *testing.T) {
	ts := frozen(t, func(c *Config) { c.AllowHTTP = false })
	at := getToken(t, ts, alice)
	l := newListener(t) // http: refused without AllowHTTP
	info, _ := ts.UserInfo(bob)
	for name, mod := range map[string]func(b map[string]any){
		"http":              func(b map[string]any) {},
		"no changeType":     func(b map[string]any) { delete(b, "changeType") },
		"bad changeType":    func(b map[string]any) { b["changeType"] = "created,moved" },
		"too far":           func(b map[string]any) { b["expirationDateTime"] = t0.Add(10081 * time.Minute).Format(time.RFC3339) },
		"past":              func(b map[string]any) { b["expirationDateTime"] = t0.Add(-time.Minute).Format(time.RFC3339) },
		"long clientState":  func(b map[string]any) { b["clientState"] = strings.Repeat("k", 129) },
		"calendar resource": func(b map[string]any) { b["resource"] = "me/events" },
		"resource data":     func(b map[string]any) { b["includeResourceData"] = true },
		"bob's inbox":       func(b map[string]any) { b["resource"] = "users/" + info.ID + "/mailFolders('inbox')/messages" },
	} {
		b := subBody(l, nil, t0.Add(time.Hour))
		if name != "http" {
			b["notificationUrl"] = strings.Replace(l.URL, "http:", "https:", 1)
		}
		mod(b)
		resp, v := call(t, ts, at, "POST", "/subscriptions", b)
		want := 400
		if name == "bob's inbox" {
			want = 403
		}
		if resp.StatusCode != want || v["error"] == nil {
			t.Errorf("%s: %d %v", name, resp.StatusCode, v)
		}
	}
	if len(l.validations) != 0 {
		t.Errorf("validation sent for refused requests")
	}
}

func TestSubscriptionResourceSpellingsAndLimit(t *testing.T) {
	ts := frozen(t, func(c *Config) { c.MaxSubscriptionsPerMailbox = 5 })
	at := getToken(t, ts, alice)
	info, _ := ts.UserInfo(alice)
	l := newListener(t)
	for _, res := range []string{"me/mailFolders('inbox')/messages", "/me/mailfolders('Inbox')/messages", "me/mailFolders/inbox/messages",
		"users/" + info.ID + "/mailFolders('inbox')/messages", "users/" + alice + "/messages"} {
		b := subBody(l, nil, t0.Add(10080*time.Minute))
		b["resource"] = res
		subscribe(t, ts, at, b)
	}
	resp, v := call(t, ts, at, "POST", "/subscriptions", subBody(l, nil, t0.Add(time.Hour)))
	if resp.StatusCode != 403 || v["error"] == nil {
		t.Errorf("6th subscription: %d %v", resp.StatusCode, v)
	}
}

func TestSubscriptionExpiresAndRenews(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	l := newListener(t)
	id := subscribe(t, ts, at, subBody(l, nil, t0.Add(2*time.Hour)))["id"].(string)
	ts.Advance(90 * time.Minute)
	// Renew with a fresh token: two more days.
	at2 := getToken(t, ts, alice)
	exp := ts.Now().Add(48 * time.Hour)
	resp, v := call(t, ts, at2, "PATCH", "/subscriptions/"+id, map[string]any{"expirationDateTime": exp.Format(time.RFC3339)})
	if resp.StatusCode != 200 || v["expirationDateTime"] != subTime(exp) {
		t.Fatalf("PATCH: %d %v", resp.StatusCode, v)
	}
	if resp, _ := call(t, ts, at2, "PATCH", "/subscriptions/"+id, map[string]any{"expirationDateTime": ts.Now().Add(8 * 24 * time.Hour).Format(time.RFC3339)}); resp.StatusCode != 400 {
		t.Errorf("PATCH beyond 10080 minutes: %d", resp.StatusCode)
	}
	ts.Advance(47 * time.Hour)
	if len(ts.Subscriptions()) != 1 {
		t.Fatal("renewed subscription gone early")
	}
	ts.Advance(time.Hour)
	if len(ts.Subscriptions()) != 0 {
		t.Fatal("subscription outlived its expirationDateTime")
	}
	if c := ts.Counters(); c.SubscriptionsRenewed != 1 || c.SubscriptionsExpired != 1 {
		t.Errorf("counters %+v", c)
	}
	// No notification once expired.
	ts.Deliver(alice, Mail{From: "x@example.com", Subject: "late"})
	ts.Settle()
	if n := len(l.notifications()); n != 0 {
		t.Errorf("%d notifications after expiry", n)
	}
}

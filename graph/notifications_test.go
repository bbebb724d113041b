package graph_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/graph"
)

// A change and a lifecycle notification in one POST, as the docs show
// them (concepts/change-notifications-lifecycle-events.md, webhooks).
const mixed = `{"value":[
 {"subscriptionId":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07","subscriptionExpirationDateTime":"2026-10-03T11:00:00.0000000Z",
  "changeType":"created","resource":"Users/u1@t1/Messages/AAMkAD1=","clientState":"cs",
  "resourceData":{"@odata.type":"#Microsoft.Graph.Message","@odata.id":"Users/u1@t1/Messages/AAMkAD1=","@odata.etag":"W/\"CQ\"","id":"AAMkAD1="},
  "tenantId":"84bd8158-6d4d-4958-8b9f-9d6445542f95"},
 {"subscriptionId":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07","subscriptionExpirationDateTime":"2026-10-03T11:00:00-08:00",
  "tenantId":"84bd8158-6d4d-4958-8b9f-9d6445542f95","clientState":"cs","lifecycleEvent":"reauthorizationRequired"}
]}`

func TestParseNotifications(t *testing.T) {
	ns, err := graph.ParseNotifications([]byte(mixed))
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 2 {
		t.Fatalf("%d notifications", len(ns))
	}
	c, l := ns[0], ns[1]
	if c.ChangeType != graph.Created || c.ResourceData.ID != "AAMkAD1=" || c.ResourceData.ODataType != "#Microsoft.Graph.Message" ||
		c.ClientState != "cs" || c.Lifecycle() || !c.SubscriptionExpiration.Equal(time.Date(2026, 10, 3, 11, 0, 0, 0, time.UTC)) {
		t.Errorf("change: %+v", c)
	}
	if !l.Lifecycle() || l.LifecycleEvent != graph.ReauthorizationRequired || !l.SubscriptionExpiration.Equal(time.Date(2026, 10, 3, 19, 0, 0, 0, time.UTC)) {
		t.Errorf("lifecycle: %+v", l)
	}
	// Outlook's older capitalised names parse too (encoding/json matches
	// names case-insensitively); a null clientState is empty.
	ns, err = graph.ParseNotifications([]byte(`{"value":[{"SubscriptionId":"s","ChangeType":"updated","clientState":null}]}`))
	if err != nil || ns[0].SubscriptionID != "s" || ns[0].ChangeType != graph.Updated || ns[0].ClientState != "" {
		t.Errorf("got %+v, %v", ns, err)
	}
	// An empty batch is well-formed.
	if ns, err := graph.ParseNotifications([]byte(`{"value":[]}`)); err != nil || len(ns) != 0 {
		t.Errorf("empty: %v, %v", ns, err)
	}
}

func TestParseNotificationsRefuses(t *testing.T) {
	item := func(extra string) string {
		return `{"value":[{"subscriptionId":"s","changeType":"created"` + extra + `}]}`
	}
	many := `{"value":[` + strings.TrimSuffix(strings.Repeat(`{"subscriptionId":"s","changeType":"created"},`, graph.MaxNotifications+1), ",") + `]}`
	for name, body := range map[string]string{
		"empty":              ``,
		"not JSON":           `value=1`,
		"truncated":          `{"value":[{"subscriptionId":"s"`,
		"trailing data":      item("") + `{}`,
		"no value":           `{"values":[]}`,
		"value not an array": `{"value":{}}`,
		"item not an object": `{"value":[1]}`,
		"null item":          `{"value":[null]}`,
		"no subscription id": `{"value":[{"changeType":"created"}]}`,
		"neither kind":       `{"value":[{"subscriptionId":"s"}]}`,
		"both kinds":         item(`,"lifecycleEvent":"missed"`),
		"long clientState":   item(`,"clientState":"` + strings.Repeat("x", graph.MaxClientState+1) + `"`),
		"long resource":      item(`,"resource":"` + strings.Repeat("x", 5000) + `"`),
		"long id":            item(`,"resourceData":{"id":"` + strings.Repeat("x", 5000) + `"}`),
		"long tenant":        item(`,"tenantId":"` + strings.Repeat("x", 500) + `"`),
		"bad expiration":     item(`,"subscriptionExpirationDateTime":"tomorrow"`),
		"wrong type":         item(`,"clientState":5`),
		"too many":           many,
		"too large":          `{"value":[],"pad":"` + strings.Repeat("x", graph.MaxNotificationBody) + `"}`,
	} {
		if ns, err := graph.ParseNotifications([]byte(body)); err == nil {
			t.Errorf("%s: accepted (%d notifications)", name, len(ns))
		} else if strings.Contains(err.Error(), "xxxx") {
			t.Errorf("%s: error quotes the body: %v", name, err)
		}
	}
}

func TestValidationToken(t *testing.T) {
	const tok = "Validation: Testing client application reachability for subscription Request-Id: 1+2&3"
	r := httptest.NewRequest("POST", "/api/ens/graph/notify?x=1&validationToken=Validation%3A+Testing+client+application+reachability+for+subscription+Request-Id%3A+1%2B2%263", nil)
	got, ok := graph.ValidationToken(r)
	if !ok || got != tok {
		t.Fatalf("got %q %v, want the decoded token", got, ok)
	}
	w := httptest.NewRecorder()
	graph.AnswerValidation(w, got)
	if w.Code != 200 || w.Body.String() != tok || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		t.Errorf("answer %d %q %q", w.Code, w.Header().Get("Content-Type"), w.Body.String())
	}
	for _, u := range []string{"/n", "/n?validationToken=", "/n?validationtoken=x", "/n?validationToken=" + strings.Repeat("a", 5000)} {
		if _, ok := graph.ValidationToken(httptest.NewRequest("POST", u, nil)); ok {
			t.Errorf("%s: taken for a validation request", u)
		}
	}
}

func FuzzParseNotifications(f *testing.F) {
	for _, s := range []string{mixed, `{"value":[]}`, `{"value":[null]}`, `{"value":[{"subscriptionId":"s","changeType":"created","resourceData":{"id":"x"}}]}`, `[]`, `{`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ns, err := graph.ParseNotifications(b)
		if err != nil {
			if ns != nil {
				t.Fatal("notifications with an error")
			}
			return
		}
		if len(ns) > graph.MaxNotifications {
			t.Fatalf("%d notifications", len(ns))
		}
		for _, n := range ns {
			if n.SubscriptionID == "" || (n.ChangeType == "") == (n.LifecycleEvent == "") || len([]rune(n.ClientState)) > graph.MaxClientState {
				t.Fatalf("accepted %+v", n)
			}
		}
	})
}

package graph_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/graph"
	"github.com/ensgate/ensgate/internal/sim/graphsim"
	"github.com/ensgate/ensgate/oauth"
)

const (
	alice   = "alice@contoso.test"
	subject = "Quarterly numbers, confidential"
)

// env is a simulator, a client with a recording transport, and alice's
// access token (redeemed through package oauth, as ENS will).
type env struct {
	ts    *graphsim.TestServer
	c     *graph.Client
	rec   *recorder
	token string
	// secrets must never appear in an error string.
	secrets []string
}

func setup(t *testing.T, scopes ...string) *env {
	t.Helper()
	ts := graphsim.Start(t, graphsim.Config{
		Users:       []graphsim.User{{Address: alice, UPN: "alice.upn@contoso.test", DisplayName: "Alice"}},
		FrozenClock: true, AllowHTTP: true,
		ValidationTimeout: 2 * time.Second, DeliveryTimeout: 2 * time.Second,
	})
	rt, err := ts.MintRefreshToken(alice, graphsim.DefaultClientID, scopes...)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := oauth.Endpoint{TokenURL: ts.TokenURL, ClientID: graphsim.DefaultClientID}.Refresh(context.Background(), rt)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{base: http.DefaultTransport}
	return &env{
		ts: ts, c: graph.New(ts.URL, &http.Client{Transport: rec}), rec: rec, token: tok.AccessToken,
		secrets: []string{tok.AccessToken, rt, alice, "alice.upn", subject, "bob@example.com"},
	}
}

// clean fails the test if err's string carries a secret.
func (e *env) clean(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range e.secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("error string %q carries %q", err.Error(), s)
		}
	}
}

// recorder records each request's URL and each answer's body.
type recorder struct {
	base http.RoundTripper
	mu   sync.Mutex
	urls []string
	body [][]byte
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(b))
	r.mu.Lock()
	r.urls = append(r.urls, req.URL.String())
	r.body = append(r.body, b)
	r.mu.Unlock()
	return resp, nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.urls)
}

func (r *recorder) last() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.body[len(r.body)-1]
}

func (e *env) deliver(t *testing.T, subj string) graphsim.Message {
	t.Helper()
	m, err := e.ts.Deliver(alice, graphsim.Mail{From: "bob@example.com", FromName: "Bob", Subject: subj, Body: "Hello  there,\nsee attached."})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMe(t *testing.T) {
	e := setup(t)
	u, err := e.c.Me(context.Background(), e.token)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := e.ts.UserInfo(alice)
	if u.ID != info.ID || u.Mail != alice || u.UserPrincipalName != "alice.upn@contoso.test" {
		t.Errorf("got %+v, want id %s, mail %s and the UPN", u, info.ID, alice)
	}
}

func TestInbox(t *testing.T) {
	e := setup(t)
	a := e.deliver(t, "one")
	e.deliver(t, "two")
	e.deliver(t, "three")
	if err := e.ts.MarkRead(alice, a.ID, true); err != nil {
		t.Fatal(err)
	}
	f, err := e.c.Inbox(context.Background(), e.token)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := e.ts.UserInfo(alice)
	if f.ID != info.InboxID || f.UnreadItemCount != 2 || f.TotalItemCount != 3 {
		t.Errorf("got %+v, want the Inbox with 2 unread of 3", f)
	}
}

// keys returns the non-annotation keys of a JSON object.
func keys(t *testing.T, b []byte) []string {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	var out []string
	for k := range v {
		if !strings.HasPrefix(k, "@") {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func TestMessageSelect(t *testing.T) {
	e := setup(t)
	sent := e.deliver(t, subject)
	ctx := context.Background()

	m, err := e.c.Message(ctx, e.token, sent.ID, graph.FieldSubject, graph.FieldFrom, graph.FieldBodyPreview, graph.FieldReceivedDateTime)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != sent.ID || m.Subject != subject || m.From != (graph.Address{Name: "Bob", Address: "bob@example.com"}) ||
		m.BodyPreview != "Hello there, see attached." || !m.ReceivedDateTime.Equal(sent.Received) {
		t.Errorf("got %+v", m)
	}
	if got, want := keys(t, e.rec.last()), []string{"bodyPreview", "from", "id", "receivedDateTime", "subject"}; !slices.Equal(got, want) {
		t.Errorf("answer has %v, want only the selected %v", got, want)
	}

	// No fields: metadata only, no content.
	m, err = e.c.Message(ctx, e.token, sent.ID)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "" || m.From.Address != "" || m.BodyPreview != "" || m.ReceivedDateTime.IsZero() || m.ParentFolderID == "" || m.IsRead {
		t.Errorf("default selection: got %+v, want metadata only", m)
	}
	if got, want := keys(t, e.rec.last()), []string{"id", "isRead", "parentFolderId", "receivedDateTime"}; !slices.Equal(got, want) {
		t.Errorf("answer has %v, want %v", got, want)
	}

	// A field name that is not one is refused before any call.
	n := e.rec.count()
	if _, err := e.c.Message(ctx, e.token, sent.ID, "subject&$expand=attachments"); err == nil || e.rec.count() != n {
		t.Errorf("bad field: err %v, %d calls made", err, e.rec.count()-n)
	}
}

func TestMessageReadBasic(t *testing.T) {
	e := setup(t, "Mail.ReadBasic", "offline_access")
	sent := e.deliver(t, subject)
	m, err := e.c.Message(context.Background(), e.token, sent.ID, graph.FieldSubject, graph.FieldBodyPreview)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != subject || m.BodyPreview != "" {
		t.Errorf("Mail.ReadBasic: got subject %t, preview %q; want the subject and no preview", m.Subject == subject, m.BodyPreview)
	}
}

func TestMessageNotFound(t *testing.T) {
	e := setup(t)
	sent := e.deliver(t, subject)
	if err := e.ts.DeleteMessage(alice, sent.ID); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.Message(context.Background(), e.token, sent.ID, graph.FieldSubject)
	if !errors.Is(err, graph.ErrNotFound) {
		t.Fatalf("got %v, want ErrNotFound", err)
	}
	var ae *graph.APIError
	if !errors.As(err, &ae) || ae.Status != 404 || ae.Code != "ErrorItemNotFound" {
		t.Errorf("got %#v", ae)
	}
	e.clean(t, err)
}

func TestUnauthorized(t *testing.T) {
	e := setup(t)
	if err := e.ts.ExpireAccessTokens(alice); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.Me(context.Background(), e.token)
	if !errors.Is(err, graph.ErrUnauthorized) {
		t.Fatalf("got %v, want ErrUnauthorized", err)
	}
	var ae *graph.APIError
	if !errors.As(err, &ae) || ae.Code != "InvalidAuthenticationToken" {
		t.Errorf("got %#v", ae)
	}
	e.clean(t, err)
	if _, err := e.c.Inbox(context.Background(), ""); !errors.Is(err, graph.ErrUnauthorized) {
		t.Errorf("no token: got %v", err)
	}
}

func TestThrottled(t *testing.T) {
	e := setup(t)
	if _, err := e.ts.Throttle(alice, 1, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.Inbox(context.Background(), e.token)
	var te *graph.ThrottledError
	if !errors.As(err, &te) || te.Status != 429 || te.RetryAfter != 30*time.Second || te.Code != "ApplicationThrottled" {
		t.Fatalf("got %v, want 429 with Retry-After 30s", err)
	}
	e.clean(t, err)
	if _, err := e.c.Inbox(context.Background(), e.token); err != nil {
		t.Fatalf("after the fault: %v", err)
	}

	// 503 with Retry-After is throttling too.
	if _, err := e.ts.InjectFault(graphsim.Fault{User: alice, Count: 1, Status: 503, RetryAfter: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.Me(context.Background(), e.token)
	if !errors.As(err, &te) || te.Status != 503 || te.RetryAfter != 5*time.Second {
		t.Fatalf("got %v, want 503 with Retry-After 5s", err)
	}
	// 500 is not.
	if _, err := e.ts.InjectFault(graphsim.Fault{User: alice, Count: 1, Status: 500, Code: "InternalServerError", Message: "boom for " + alice}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.Me(context.Background(), e.token)
	var ae *graph.APIError
	if errors.As(err, &te) || !errors.As(err, &ae) || ae.Status != 500 {
		t.Fatalf("got %v, want an APIError 500", err)
	}
	e.clean(t, err)
}

// listener answers Graph's validation requests with the package's helpers
// and keeps the raw notification bodies.
type listener struct {
	*httptest.Server
	mu          sync.Mutex
	validations int
	bodies      [][]byte
}

func newListener(t *testing.T) *listener {
	l := &listener{}
	l.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tok, ok := graph.ValidationToken(r); ok {
			l.mu.Lock()
			l.validations++
			l.mu.Unlock()
			graph.AnswerValidation(w, tok)
			return
		}
		b, _ := io.ReadAll(r.Body)
		l.mu.Lock()
		l.bodies = append(l.bodies, b)
		l.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(l.Close)
	return l
}

func (l *listener) take() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bodies
	l.bodies = nil
	return b
}

func TestSubscriptionLifecycle(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	notify, lifecycle := newListener(t), newListener(t)
	state := strings.Repeat("k", graph.MaxClientState)
	exp := e.ts.Now().Add(24 * time.Hour).Truncate(time.Second)

	sub, err := e.c.CreateSubscription(ctx, e.token, graph.SubscriptionRequest{
		NotificationURL: notify.URL + "/api/ens/graph/notify", LifecycleNotificationURL: lifecycle.URL + "/api/ens/graph/lifecycle",
		ClientState: state, Expiration: exp,
	})
	if err != nil {
		t.Fatal(err)
	}
	if sub.ID == "" || !sub.Expiration.Equal(exp) || sub.Resource != graph.DefaultResource {
		t.Errorf("got %+v, want an id, expiration %v and the Inbox", sub, exp)
	}
	if notify.validations != 1 || lifecycle.validations != 1 {
		t.Errorf("validations: notify %d, lifecycle %d; want 1 each", notify.validations, lifecycle.validations)
	}

	// A change notification, as Graph sends it.
	msg := e.deliver(t, subject)
	e.ts.Settle()
	bodies := notify.take()
	if len(bodies) != 1 {
		t.Fatalf("%d notification POSTs, want 1", len(bodies))
	}
	ns, err := graph.ParseNotifications(bodies[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 1 {
		t.Fatalf("%d notifications, want 1", len(ns))
	}
	n := ns[0]
	if n.SubscriptionID != sub.ID || n.ClientState != state || n.ChangeType != graph.Created || n.ResourceData.ID != msg.ID ||
		n.TenantID != e.ts.TenantID() || !n.SubscriptionExpiration.Equal(exp) || n.Lifecycle() || !strings.Contains(n.Resource, msg.ID) {
		t.Errorf("got %+v", n)
	}

	// Lifecycle notifications through the same parser.
	if err := e.ts.Lifecycle(sub.ID, graphsim.Missed); err != nil {
		t.Fatal(err)
	}
	if err := e.ts.Lifecycle(sub.ID, graphsim.ReauthorizationRequired); err != nil {
		t.Fatal(err)
	}
	e.ts.Settle()
	var events []string
	for _, b := range lifecycle.take() {
		ns, err := graph.ParseNotifications(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range ns {
			if n.SubscriptionID != sub.ID || n.ClientState != state || !n.Lifecycle() || n.ChangeType != "" {
				t.Errorf("lifecycle notification %+v", n)
			}
			events = append(events, n.LifecycleEvent)
		}
	}
	if !slices.Equal(events, []string{graph.Missed, graph.ReauthorizationRequired}) {
		t.Errorf("lifecycle events %v", events)
	}

	// Reauthorize answers the challenge.
	if err := e.c.Reauthorize(ctx, e.token, sub.ID); err != nil {
		t.Fatal(err)
	}
	if info := e.ts.Subscriptions()[0]; info.NeedsReauthorization {
		t.Errorf("still needs reauthorization after Reauthorize")
	}

	// Renew moves the expiration.
	exp2 := e.ts.Now().Add(graph.MaxExpiration - time.Minute).Truncate(time.Second)
	renewed, err := e.c.RenewSubscription(ctx, e.token, sub.ID, exp2)
	if err != nil {
		t.Fatal(err)
	}
	if renewed.ID != sub.ID || !renewed.Expiration.Equal(exp2) || !e.ts.Subscriptions()[0].Expires.Equal(exp2) {
		t.Errorf("renewed: %+v, want expiration %v", renewed, exp2)
	}
	// Past Graph's limit: a 400 from Graph.
	_, err = e.c.RenewSubscription(ctx, e.token, sub.ID, e.ts.Now().Add(graph.MaxExpiration+time.Hour))
	var ae *graph.APIError
	if !errors.As(err, &ae) || ae.Status != 400 {
		t.Errorf("renewal past the limit: got %v, want a 400", err)
	}
	e.clean(t, err)

	// Delete; then it is gone.
	if err := e.c.DeleteSubscription(ctx, e.token, sub.ID); err != nil {
		t.Fatal(err)
	}
	if len(e.ts.Subscriptions()) != 0 {
		t.Error("subscription still there after delete")
	}
	for name, err := range map[string]error{
		"delete":      e.c.DeleteSubscription(ctx, e.token, sub.ID),
		"reauthorize": e.c.Reauthorize(ctx, e.token, sub.ID),
	} {
		if !errors.Is(err, graph.ErrNotFound) {
			t.Errorf("%s after delete: got %v, want ErrNotFound", name, err)
		}
	}
	if _, err := e.c.RenewSubscription(ctx, e.token, sub.ID, exp2); !errors.Is(err, graph.ErrNotFound) {
		t.Errorf("renew after delete: got %v, want ErrNotFound", err)
	}
}

func TestCreateSubscriptionRefusals(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	notify := newListener(t)
	exp := e.ts.Now().Add(time.Hour)
	n := e.rec.count()
	for name, req := range map[string]graph.SubscriptionRequest{
		"long clientState": {NotificationURL: notify.URL, ClientState: strings.Repeat("é", graph.MaxClientState+1), Expiration: exp},
		"no URL":           {Expiration: exp},
		"no expiration":    {NotificationURL: notify.URL},
		"bad change type":  {NotificationURL: notify.URL, Expiration: exp, ChangeTypes: []string{"moved"}},
	} {
		if _, err := e.c.CreateSubscription(ctx, e.token, req); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if e.rec.count() != n {
		t.Errorf("%d calls made for requests refused locally", e.rec.count()-n)
	}

	// A listener that does not answer the validation: Graph refuses.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusForbidden) }))
	defer bad.Close()
	_, err := e.c.CreateSubscription(ctx, e.token, graph.SubscriptionRequest{NotificationURL: bad.URL, Expiration: exp, ClientState: "s"})
	var ae *graph.APIError
	if !errors.As(err, &ae) || ae.Status != 400 {
		t.Errorf("failed validation: got %v, want a 400", err)
	}
	e.clean(t, err)
}

func ids(ms []graph.Message) []string {
	var out []string
	for _, m := range ms {
		id := m.ID
		if m.Removed {
			id = "-" + id
		}
		out = append(out, id)
	}
	return out
}

func TestDelta(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	var sent []string
	for i := range 5 {
		sent = append(sent, e.deliver(t, "m"+string(rune('0'+i))).ID)
	}
	e.c.MaxPageSize = 2

	n := e.rec.count()
	changes, link, err := e.c.Delta(ctx, e.token, "", graph.FieldIsRead, graph.FieldReceivedDateTime)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(changes); !slices.Equal(got, sent) {
		t.Errorf("initial round: %v, want %v", got, sent)
	}
	if calls := e.rec.count() - n; calls != 3 {
		t.Errorf("initial round took %d pages, want 3 of at most 2", calls)
	}
	if link == "" {
		t.Fatal("no delta link")
	}
	for _, c := range changes {
		if c.ReceivedDateTime.IsZero() || c.Subject != "" {
			t.Errorf("selection not applied: %+v", c)
		}
	}

	// Nothing new: an empty round.
	changes, link, err = e.c.Delta(ctx, e.token, link)
	if err != nil || len(changes) != 0 {
		t.Fatalf("quiet round: %v, %v", ids(changes), err)
	}

	// A new message, a deletion and a read-state change.
	fresh := e.deliver(t, "new").ID
	if err := e.ts.DeleteMessage(alice, sent[0]); err != nil {
		t.Fatal(err)
	}
	if err := e.ts.MarkRead(alice, sent[1], true); err != nil {
		t.Fatal(err)
	}
	changes, link2, err := e.c.Delta(ctx, e.token, link)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(changes), []string{fresh, "-" + sent[0], sent[1]}; !slices.Equal(got, want) {
		t.Errorf("changes %v, want %v", got, want)
	}
	if len(changes) == 3 && !changes[2].IsRead {
		t.Errorf("read change not read: %+v", changes[2])
	}
	changes, _, err = e.c.Delta(ctx, e.token, link2)
	if err != nil || len(changes) != 0 {
		t.Fatalf("after catching up: %v, %v", ids(changes), err)
	}

	// One page at a time.
	p, err := e.c.DeltaNext(ctx, e.token, "")
	if err != nil || len(p.Changes) != 2 || p.NextLink == "" || p.DeltaLink != "" {
		t.Fatalf("first page: %+v, %v", p, err)
	}

	// Expired tokens: ErrDeltaExpired, and a new round works.
	if err := e.ts.ExpireDeltaTokens(alice); err != nil {
		t.Fatal(err)
	}
	_, _, err = e.c.Delta(ctx, e.token, link2)
	if !errors.Is(err, graph.ErrDeltaExpired) {
		t.Fatalf("got %v, want ErrDeltaExpired", err)
	}
	e.clean(t, err)
	if _, err := e.c.DeltaNext(ctx, e.token, p.NextLink); !errors.Is(err, graph.ErrDeltaExpired) {
		t.Fatalf("expired skip token: got %v, want ErrDeltaExpired", err)
	}
	changes, _, err = e.c.Delta(ctx, e.token, "")
	if err != nil || len(changes) != 5 {
		t.Fatalf("new round: %d changes, %v", len(changes), err)
	}

	// A link to another origin is not followed with the token.
	n = e.rec.count()
	for _, bad := range []string{"https://evil.example/v1.0/me/mailFolders/inbox/messages/delta", strings.Replace(link2, "http://", "https://", 1), "::"} {
		if _, _, err := e.c.Delta(ctx, e.token, bad); err == nil {
			t.Errorf("link %q followed", bad)
		}
	}
	if e.rec.count() != n {
		t.Error("a request went to a foreign link")
	}
}

func TestTransportErrorsHideURL(t *testing.T) {
	hs := httptest.NewServer(http.NotFoundHandler())
	root := hs.URL
	hs.Close()
	c := graph.New(root, nil)
	_, err := c.Me(context.Background(), "secret-token")
	if err == nil || strings.Contains(err.Error(), "secret-token") || strings.Contains(err.Error(), root) {
		t.Fatalf("got %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := graph.New(root, nil).Inbox(ctx, "t"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: got %v, want context.Canceled", err)
	}
}

func TestAnswerLimits(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"x","mail":"`+strings.Repeat("a", 2<<20)+`"}`)
	}))
	defer hs.Close()
	if _, err := graph.New(hs.URL, nil).Me(context.Background(), "t"); err == nil {
		t.Fatal("an oversized answer was accepted")
	}
}

func TestNoRedirect(t *testing.T) {
	got := make(chan string, 1)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Get("Authorization") }))
	defer other.Close()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusFound)
	}))
	defer hs.Close()
	_, err := graph.New(hs.URL, nil).Me(context.Background(), "t")
	var ae *graph.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusFound {
		t.Errorf("got %v, want an APIError 302", err)
	}
	select {
	case <-got:
		t.Fatal("the redirect was followed")
	default:
	}
}

// A first round from DeltaSince lists only what arrived since then; the
// next round, from its delta link, what came after.
func TestDeltaSince(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	if _, err := e.ts.Deliver(alice, graphsim.Mail{From: "bob@example.com", Subject: "old", Received: e.ts.Now().Add(-48 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	recent := e.deliver(t, "recent").ID
	first, err := e.c.DeltaSince(e.ts.Now().Add(-time.Hour), graph.FieldReceivedDateTime)
	if err != nil {
		t.Fatal(err)
	}
	changes, link, err := e.c.Delta(ctx, e.token, first)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(changes); !slices.Equal(got, []string{recent}) {
		t.Errorf("first round since an hour ago: %v, want only %s", got, recent)
	}
	later := e.deliver(t, "later").ID
	if changes, _, err = e.c.Delta(ctx, e.token, link); err != nil || !slices.Equal(ids(changes), []string{later}) {
		t.Errorf("next round: %v, %v; want only %s", ids(changes), err, later)
	}
}

package push_test

import (
	"context"
	"crypto/x509"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/apnsfake"
	"github.com/ensgate/ensgate/internal/testenv/testca"
)

// TestAPNsPayloadPerLevel checks what each privacy level (and the silent
// re-register push) puts on the wire.
func TestAPNsPayloadPerLevel(t *testing.T) {
	env := newAPNs(t, nil)
	full := push.Message{Title: "Alice Example", Subject: "Quarterly report", Preview: "Please find attached"}
	tests := []struct {
		name      string
		msg       push.Message
		alert     map[string]any // nil: no alert expected
		pushType  string
		priority  int
		withSound bool
	}{
		{"level 0", full, map[string]any{"title": "Alice Example", "body": "Quarterly report\nPlease find attached"}, "alert", 10, true},
		{"level 1", push.Message{Title: full.Title, Subject: full.Subject}, map[string]any{"title": "Alice Example", "body": "Quarterly report"}, "alert", 10, true},
		{"level 2", push.Message{Title: full.Title}, map[string]any{"title": "Alice Example"}, "alert", 10, true},
		{"level 3", push.Message{Generic: true, Title: "ignored"}, map[string]any{"body": "New message"}, "alert", 10, true},
		{"level 4", push.Message{}, nil, "alert", 5, false},
		{"reregister", push.Message{Kind: push.Reregister}, nil, "background", 5, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.msg
			m.Platform, m.Token, m.Badge, m.ThreadID = push.IOS, apnsToken(), 7, "mbx-1"
			checkResult(t, env.sender.Send(context.Background(), m), push.Delivered, "", 1)
			p := lastPush(t, env.fake, m.Token)
			if p.PushType != tt.pushType || p.Priority != tt.priority || p.Topic != topic {
				t.Errorf("headers: push type %q priority %d topic %q", p.PushType, p.Priority, p.Topic)
			}
			exp, err := strconv.ParseInt(p.Expiration, 10, 64)
			if err != nil || exp <= time.Now().Unix() {
				t.Errorf("apns-expiration %q is not in the future", p.Expiration)
			}
			aps := decode(t, p.Payload)["aps"].(map[string]any)
			if got := aps["thread-id"]; got != "mbx-1" {
				t.Errorf("thread-id = %v", got)
			}
			alert, _ := aps["alert"].(map[string]any)
			if !maps.Equal(alert, tt.alert) {
				t.Errorf("alert = %v, want %v", alert, tt.alert)
			}
			if (aps["sound"] == "default") != tt.withSound || (aps["mutable-content"] == 1.0) != tt.withSound {
				t.Errorf("sound/mutable-content = %v/%v, want them: %v", aps["sound"], aps["mutable-content"], tt.withSound)
			}
			if m.Kind == push.Reregister {
				ens, _ := decode(t, p.Payload)["ens"].(map[string]any)
				if aps["content-available"] != 1.0 || ens["action"] != "reregister" || aps["badge"] != nil {
					t.Errorf("reregister payload %s", p.Payload)
				}
			} else if aps["badge"] != 7.0 {
				t.Errorf("badge = %v, want 7", aps["badge"])
			}
		})
	}
}

func TestAPNsBadgeAndCollapse(t *testing.T) {
	env := newAPNs(t, nil)
	tok := apnsToken()
	long := strings.Repeat("c", 100)
	m := push.Message{Platform: push.IOS, Token: tok, Title: "A", Badge: -1, CollapseID: long}
	checkResult(t, env.sender.Send(context.Background(), m), push.Delivered, "", 1)
	p := lastPush(t, env.fake, tok)
	if _, ok := decode(t, p.Payload)["aps"].(map[string]any)["badge"]; ok {
		t.Errorf("negative Badge must leave the badge alone: %s", p.Payload)
	}
	if p.CollapseID == "" || len(p.CollapseID) > 64 {
		t.Errorf("apns-collapse-id %q: want a stand-in of at most 64 bytes", p.CollapseID)
	}
	// Nothing to show and no badge: not sent at all.
	res := env.sender.Send(context.Background(), push.Message{Platform: push.IOS, Token: tok, Badge: -1})
	checkResult(t, res, push.Rejected, push.ReasonEmpty, 0)
}

// TestAPNsTruncation fills the 4096 bytes with multibyte text (and
// characters JSON escapes): the preview is cut first, then the subject,
// never inside a rune.
func TestAPNsTruncation(t *testing.T) {
	env := newAPNs(t, nil)
	subject := strings.Repeat("Résumé <&> 日本 ", 20) // ~400 bytes
	tests := []struct {
		name             string
		subject, preview string
		keepSubject      bool
	}{
		{"long preview", subject, strings.Repeat("😀é<\"", 2000), true},
		{"long subject", strings.Repeat("件名", 3000), strings.Repeat("x", 100), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := apnsToken()
			m := push.Message{Platform: push.IOS, Token: tok, Title: "Zoë", Subject: tt.subject, Preview: tt.preview, Badge: 1}
			checkResult(t, env.sender.Send(context.Background(), m), push.Delivered, "", 1)
			p := lastPush(t, env.fake, tok)
			if len(p.Payload) > push.MaxAPNsPayload || len(p.Payload) < push.MaxAPNsPayload-64 {
				t.Errorf("payload is %d bytes: want just under %d", len(p.Payload), push.MaxAPNsPayload)
			}
			alert := decode(t, p.Payload)["aps"].(map[string]any)["alert"].(map[string]any)
			body := alert["body"].(string)
			if !utf8.ValidString(body) || strings.ContainsRune(body, utf8.RuneError) {
				t.Fatalf("body is not clean UTF-8")
			}
			if alert["title"] != "Zoë" || !strings.HasSuffix(body, "…") {
				t.Errorf("title %v, body ends %q", alert["title"], body[len(body)-10:])
			}
			if tt.keepSubject {
				rest, ok := strings.CutPrefix(body, tt.subject+"\n")
				if !ok || !strings.HasPrefix(tt.preview, strings.TrimSuffix(rest, "…")) {
					t.Errorf("want the whole subject and a prefix of the preview")
				}
			} else if strings.Contains(body, "\n") || !strings.HasPrefix(tt.subject, strings.TrimSuffix(body, "…")) {
				t.Errorf("want the preview dropped and a prefix of the subject")
			}
		})
	}
}

// TestAPNsOutcomes drives every classified answer of APNs through the
// sender.
func TestAPNsOutcomes(t *testing.T) {
	env := newAPNs(t, nil)
	registered := time.Now().Add(-time.Hour)
	tests := []struct {
		name     string
		replies  []apnsfake.Reply
		topic    string
		outcome  push.Outcome
		reason   string
		attempts int
	}{
		{"delivered", nil, "", push.Delivered, "", 1},
		{"bad device token", []apnsfake.Reply{apnsfake.BadDeviceToken}, "", push.TokenDead, "BadDeviceToken", 1},
		{"410 after registration", []apnsfake.Reply{apnsfake.Unregistered(registered.Add(time.Minute))}, "", push.TokenDead, "Unregistered", 1},
		{"410 before registration", []apnsfake.Reply{apnsfake.Unregistered(registered.Add(-time.Minute))}, "", push.Rejected, "Unregistered", 1},
		{"payload too large", []apnsfake.Reply{apnsfake.PayloadTooLarge}, "", push.Rejected, "PayloadTooLarge", 1},
		{"bad topic", []apnsfake.Reply{apnsfake.BadTopic}, "", push.Rejected, "BadTopic", 1},
		{"token not for topic", []apnsfake.Reply{{Status: 400, Reason: "DeviceTokenNotForTopic"}}, "", push.Rejected, "DeviceTokenNotForTopic", 1},
		{"topic disallowed (checked by the fake)", nil, "com.other.app", push.Rejected, "TopicDisallowed", 1},
		{"invalid provider token", []apnsfake.Reply{apnsfake.InvalidProviderToken}, "", push.Rejected, "InvalidProviderToken", 1},
		{"429 then delivered", []apnsfake.Reply{apnsfake.TooManyRequests}, "", push.Delivered, "", 2},
		{"500, 503 then delivered", []apnsfake.Reply{apnsfake.InternalServerError, apnsfake.ServiceUnavailable}, "", push.Delivered, "", 3},
		{"503 until retries run out", []apnsfake.Reply{apnsfake.ServiceUnavailable, apnsfake.ServiceUnavailable, apnsfake.ServiceUnavailable, apnsfake.ServiceUnavailable}, "", push.Failed, "ServiceUnavailable", 3},
		{"connection dropped, then delivered", []apnsfake.Reply{apnsfake.Outage}, "", push.Delivered, "", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := apnsToken()
			env.fake.Script(tok, tt.replies...)
			m := push.Message{Platform: push.IOS, Token: tok, Topic: tt.topic, Title: "T", Badge: 1, RegisteredAt: registered}
			checkResult(t, env.sender.Send(context.Background(), m), tt.outcome, tt.reason, tt.attempts)
		})
	}
}

func TestAPNsOutage(t *testing.T) {
	env := newAPNs(t, nil)
	env.fake.SetOutage(true)
	res := env.sender.Send(context.Background(), push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"})
	checkResult(t, res, push.Failed, push.ReasonNetwork, fastRetry.MaxAttempts)
	if res.Err == nil {
		t.Error("want the network error in Result.Err")
	}
}

// TestAPNsLocalTokenCheck: a token that is not hex never reaches APNs (it
// would also change the request path).
func TestAPNsLocalTokenCheck(t *testing.T) {
	env := newAPNs(t, nil)
	res := env.sender.Send(context.Background(), push.Message{Platform: push.IOS, Token: "../../x?y", Title: "T"})
	checkResult(t, res, push.TokenDead, "BadDeviceToken", 0)
	if n := len(env.fake.Pushes()); n != 0 {
		t.Errorf("%d requests reached APNs", n)
	}
}

// TestAPNsExpiredProviderToken: after APNs calls the shared provider token
// expired, exactly one new token is signed, however many sends saw it.
func TestAPNsExpiredProviderToken(t *testing.T) {
	env := newAPNs(t, nil)
	send := func() push.Result {
		return env.sender.Send(context.Background(), push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"})
	}
	checkResult(t, send(), push.Delivered, "", 1)
	env.fake.ExpireProviderTokens()
	checkResult(t, send(), push.Delivered, "", 2)
	if n := env.fake.ProviderTokens(); n != 2 {
		t.Fatalf("provider tokens = %d, want 2", n)
	}

	// Many sends hit the expired token at once: still one new token.
	env.fake.ExpireProviderTokens()
	env.fake.SetLatency(20 * time.Millisecond) // let all of them use the old token
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if res := send(); res.Outcome != push.Delivered {
				t.Errorf("concurrent send: %v %s", res.Outcome, res.Reason)
			}
		})
	}
	wg.Wait()
	if n := env.fake.ProviderTokens(); n != 3 {
		t.Errorf("provider tokens = %d, want 3", n)
	}

	// Still expired after renewal (say, a clock far off): rejected, not looped.
	env.fake.SetLatency(0)
	env.fake.Script("", apnsfake.ExpiredProviderToken, apnsfake.ExpiredProviderToken)
	checkResult(t, send(), push.Rejected, "ExpiredProviderToken", 2)
}

func TestAPNsCertificateAuth(t *testing.T) {
	ca, err := testca.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certFile, err := apnsfake.IssueClient(ca, t.TempDir(), topic)
	if err != nil {
		t.Fatal(err)
	}
	fake, err := apnsfake.New(apnsfake.Config{ClientCAs: ca.Pool})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	sender, err := push.NewAPNs(push.APNsConfig{
		URL: fake.URL, CertFile: certFile,
		Client: push.ClientConfig{ExtraRoots: []*x509.Certificate{fake.Certificate()}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sender.Close()
	tok := apnsToken()
	checkResult(t, sender.Send(context.Background(), push.Message{Platform: push.IOS, Token: tok, Title: "T"}), push.Delivered, "", 1)
	if p := lastPush(t, fake, tok); p.Auth != "certificate" || p.Topic != topic {
		t.Errorf("auth %q topic %q: want certificate auth for %s", p.Auth, p.Topic, topic)
	}
}

// TestAPNsInFlightCap: no more requests in flight than MaxInFlight.
func TestAPNsInFlightCap(t *testing.T) {
	const limit = 3
	env := newAPNs(t, func(c *push.APNsConfig) { c.Client.MaxInFlight = limit })
	env.fake.SetLatency(30 * time.Millisecond)
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			res := env.sender.Send(context.Background(), push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"})
			if res.Outcome != push.Delivered {
				t.Errorf("send: %v %s", res.Outcome, res.Reason)
			}
		})
	}
	wg.Wait()
	if got := env.fake.MaxConcurrent(); got != limit {
		t.Errorf("max concurrent requests at APNs = %d, want %d", got, limit)
	}
}

func TestAPNsRequestTimeout(t *testing.T) {
	env := newAPNs(t, func(c *push.APNsConfig) {
		c.Client.RequestTimeout = 50 * time.Millisecond
		c.Retry.MaxAttempts = 2
	})
	env.fake.SetLatency(2 * time.Second)
	start := time.Now()
	res := env.sender.Send(context.Background(), push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"})
	checkResult(t, res, push.Failed, push.ReasonTimeout, 2)
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v: the request timeout did not apply", d)
	}
}

func TestAPNsCallerCancel(t *testing.T) {
	env := newAPNs(t, nil)
	env.fake.SetLatency(2 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	res := env.sender.Send(ctx, push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"})
	checkResult(t, res, push.Failed, push.ReasonCanceled, 1)
}

func TestAPNsUntrustedServer(t *testing.T) {
	env := newAPNs(t, func(c *push.APNsConfig) { c.Client.ExtraRoots = nil })
	res := env.sender.Send(context.Background(), push.Message{Platform: push.IOS, Token: apnsToken(), Title: "T"})
	checkResult(t, res, push.Rejected, push.ReasonTLS, 1)
}

func TestNewAPNsConfigErrors(t *testing.T) {
	key, err := apnsfake.NewKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]push.APNsConfig{
		"no credentials":   {},
		"no key id":        {KeyFile: key.Path, TeamID: key.TeamID},
		"key and cert":     {Key: key.PEM, KeyID: key.ID, TeamID: key.TeamID, CertFile: "x.p12"},
		"not a key":        {Key: []byte("nope"), KeyID: key.ID, TeamID: key.TeamID},
		"plain http url":   {URL: "http://127.0.0.1:1", Key: key.PEM, KeyID: key.ID, TeamID: key.TeamID},
		"missing key file": {KeyFile: key.Path + ".gone", KeyID: key.ID, TeamID: key.TeamID},
	}
	for name, cfg := range tests {
		if _, err := push.NewAPNs(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	for _, u := range []string{"", "production", "sandbox"} {
		if _, err := push.NewAPNs(push.APNsConfig{URL: u, Key: key.PEM, KeyID: key.ID, TeamID: key.TeamID}); err != nil {
			t.Errorf("url %q: %v", u, err)
		}
	}
}

func lastPush(t testing.TB, fake *apnsfake.Server, token string) apnsfake.Push {
	t.Helper()
	pushes := fake.Pushes()
	for i := len(pushes) - 1; i >= 0; i-- {
		if pushes[i].Token == token {
			return pushes[i]
		}
	}
	t.Fatalf("no push for the token")
	return apnsfake.Push{}
}

func TestPushConfigValidateNamesTheSettingToFix(t *testing.T) {
	key, err := apnsfake.NewKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		err  error
		want []string
	}{
		"apns empty":        {push.APNsConfig{}.Validate(), []string{"apns.key_file is required", "apns.key_id must be the 10-character", "apns.team_id must be the 10-character"}},
		"apns short ids":    {push.APNsConfig{Key: key.PEM, KeyID: "ABC", TeamID: "T"}.Validate(), []string{"apns.key_id", "apns.team_id"}},
		"apns url":          {push.APNsConfig{URL: "http://apns.test", Key: key.PEM, KeyID: key.ID, TeamID: key.TeamID}.Validate(), []string{`apns.url "http://apns.test": want production, sandbox or an https:// URL`}},
		"apns key and cert": {push.APNsConfig{KeyFile: key.Path, CertFile: key.Path}.Validate(), []string{"apns.cert_file and apns.key_file are alternatives"}},
		"apns cert file":    {push.APNsConfig{CertFile: key.Path + ".gone"}.Validate(), []string{"apns.cert_file is unusable"}},
		"apns negative":     {push.APNsConfig{Key: key.PEM, KeyID: key.ID, TeamID: key.TeamID, Retry: push.RetryPolicy{MaxElapsed: -1}, Client: push.ClientConfig{MaxInFlight: -1}}.Validate(), []string{"apns.retry:", "apns.client.max_in_flight -1 must not be negative"}},
		"fcm empty":         {push.FCMConfig{URL: "fcm.test"}.Validate(), []string{`fcm.url "fcm.test": want an https:// URL`, "fcm.credentials_file is required"}},
		"fcm missing file":  {push.FCMConfig{CredentialsFile: "/nonexistent.json", Client: push.ClientConfig{RequestTimeout: -time.Second}}.Validate(), []string{"fcm.credentials_file is unusable", "fcm.client.request_timeout -1s must not be negative"}},
	} {
		if tc.err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(tc.err.Error(), w) {
				t.Errorf("%s: %q does not say %q", name, tc.err, w)
			}
		}
	}
	// Apple's names for its endpoints are accepted by Validate itself, so
	// a host that validates before building the sender accepts them too.
	for _, u := range []string{"", "production", "sandbox", "development", "https://apns.test:8443"} {
		if err := (push.APNsConfig{URL: u, KeyFile: key.Path, KeyID: key.ID, TeamID: key.TeamID}).Validate(); err != nil {
			t.Errorf("url %q: %v", u, err)
		}
	}
}

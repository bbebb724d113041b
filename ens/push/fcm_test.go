package push_test

import (
	"context"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/fcmfake"
)

// TestFCMPayloadPerLevel checks the data message for each privacy level and
// the re-register push.
func TestFCMPayloadPerLevel(t *testing.T) {
	env := newFCM(t, nil)
	full := push.Message{Title: "Alice Example", Subject: "Quarterly report", Preview: "Please find attached"}
	base := map[string]string{"type": "newmail", "badge": "7", "thread": "mbx-1"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := []struct {
		name     string
		msg      push.Message
		data     map[string]string
		priority string
		ttl      string
		collapse string
	}{
		{"level 0", full, with("title", "Alice Example", "body", "Quarterly report\nPlease find attached"), "high", "3600s", "mbx-1"},
		{"level 1", push.Message{Title: full.Title, Subject: full.Subject}, with("title", "Alice Example", "body", "Quarterly report"), "high", "3600s", "mbx-1"},
		{"level 2", push.Message{Title: full.Title}, with("title", "Alice Example"), "high", "3600s", "mbx-1"},
		{"level 3", push.Message{Generic: true}, with("body", "New message"), "high", "3600s", "mbx-1"},
		{"level 4", push.Message{}, with(), "normal", "3600s", "mbx-1"},
		{"reregister", push.Message{Kind: push.Reregister}, map[string]string{"type": "reregister", "thread": "mbx-1"}, "normal", "86400s", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := tt.msg
			m.Platform, m.Token, m.Badge, m.ThreadID = push.Android, fcmToken(), 7, "mbx-1"
			checkResult(t, env.sender.Send(context.Background(), m), push.Delivered, "", 1)
			got := lastMessage(t, env.fake, m.Token)
			if !maps.Equal(got.Data, tt.data) {
				t.Errorf("data = %v, want %v", got.Data, tt.data)
			}
			if a := got.Android; a.Priority != tt.priority || a.TTL != tt.ttl || a.CollapseKey != tt.collapse {
				t.Errorf("android = %+v, want priority %s ttl %s collapse %q", a, tt.priority, tt.ttl, tt.collapse)
			}
		})
	}
}

func TestFCMTruncation(t *testing.T) {
	env := newFCM(t, nil)
	tok := fcmToken()
	m := push.Message{Platform: push.Android, Token: tok, Title: "Zoë", Subject: "Réunion 日本", Preview: strings.Repeat("😀é", 2000), Badge: 3}
	checkResult(t, env.sender.Send(context.Background(), m), push.Delivered, "", 1)
	data := lastMessage(t, env.fake, tok).Data
	size := 0
	for k, v := range data {
		size += len(k) + len(v)
	}
	if size > push.MaxFCMData || size < push.MaxFCMData-16 {
		t.Errorf("data is %d bytes: want just under %d", size, push.MaxFCMData)
	}
	body := data["body"]
	if !utf8.ValidString(body) || !strings.HasPrefix(body, "Réunion 日本\n😀é") || !strings.HasSuffix(body, "…") {
		t.Errorf("body: want the subject, a cut preview and an ellipsis, as valid UTF-8")
	}
}

// TestFCMOutcomes drives every classified FCM answer through the sender.
func TestFCMOutcomes(t *testing.T) {
	env := newFCM(t, nil)
	tests := []struct {
		name     string
		replies  []fcmfake.Reply
		outcome  push.Outcome
		reason   string
		attempts int
	}{
		{"delivered", nil, push.Delivered, "", 1},
		{"unregistered", []fcmfake.Reply{fcmfake.Unregistered}, push.TokenDead, "UNREGISTERED", 1},
		{"invalid token", []fcmfake.Reply{fcmfake.InvalidToken}, push.TokenDead, "INVALID_ARGUMENT", 1},
		{"invalid argument, not the token", []fcmfake.Reply{fcmfake.InvalidArgument}, push.Rejected, "INVALID_ARGUMENT", 1},
		{"sender id mismatch", []fcmfake.Reply{fcmfake.SenderIDMismatch}, push.Rejected, "SENDER_ID_MISMATCH", 1},
		{"unavailable then delivered", []fcmfake.Reply{fcmfake.Unavailable}, push.Delivered, "", 2},
		{"internal until retries run out", []fcmfake.Reply{fcmfake.Internal, fcmfake.Internal, fcmfake.Internal}, push.Failed, "INTERNAL", 3},
		{"connection dropped, then delivered", []fcmfake.Reply{fcmfake.Outage}, push.Delivered, "", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := fcmToken()
			env.fake.Script(tok, tt.replies...)
			res := env.sender.Send(context.Background(), push.Message{Platform: push.Android, Token: tok, Title: "T", Badge: 1})
			checkResult(t, res, tt.outcome, tt.reason, tt.attempts)
		})
	}
	// Checked by the fake itself, not scripted.
	res := env.sender.Send(context.Background(), push.Message{Platform: push.Android, Token: "not a token!", Title: "T"})
	checkResult(t, res, push.TokenDead, "INVALID_ARGUMENT", 1)
}

func TestFCMOutage(t *testing.T) {
	env := newFCM(t, nil)
	env.fake.SetOutage(true)
	res := env.sender.Send(context.Background(), push.Message{Platform: push.Android, Token: fcmToken(), Title: "T"})
	checkResult(t, res, push.Failed, push.ReasonNetwork, fastRetry.MaxAttempts)
}

// TestFCMRetryAfter: the backoff waits at least the server's Retry-After,
// and gives up at once when that would exceed the time budget.
func TestFCMRetryAfter(t *testing.T) {
	env := newFCM(t, func(c *push.FCMConfig) { c.Retry.MaxElapsed = 3 * time.Second })
	tok := fcmToken()
	env.fake.Script(tok, fcmfake.QuotaExceeded(time.Second))
	start := time.Now()
	res := env.sender.Send(context.Background(), push.Message{Platform: push.Android, Token: tok, Title: "T"})
	checkResult(t, res, push.Delivered, "", 2)
	if d := time.Since(start); d < time.Second {
		t.Errorf("retried after %v, before Retry-After (1s)", d)
	}

	env.fake.Script(tok, fcmfake.QuotaExceeded(10*time.Second))
	start = time.Now()
	res = env.sender.Send(context.Background(), push.Message{Platform: push.Android, Token: tok, Title: "T"})
	checkResult(t, res, push.Failed, "QUOTA_EXCEEDED", 1)
	if d := time.Since(start); d > time.Second {
		t.Errorf("gave up after %v: want at once", d)
	}
}

// TestFCMAccessToken: one access token serves many sends; credentials the
// token endpoint refuses give Rejected, without retries.
func TestFCMAccessToken(t *testing.T) {
	env := newFCM(t, nil)
	for range 5 {
		checkResult(t, env.sender.Send(context.Background(), push.Message{Platform: push.Android, Token: fcmToken(), Title: "T"}), push.Delivered, "", 1)
	}
	if n := env.fake.TokenRequests(); n != 1 {
		t.Errorf("access tokens issued = %d, want 1", n)
	}

	// Another service account's key, with this fake's token_uri: bad signature.
	other, err := fcmfake.New(fcmfake.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	forged := strings.Replace(string(other.Credentials()), other.URL, env.fake.URL, 1)
	bad := newFCM(t, func(c *push.FCMConfig) {
		c.URL, c.Credentials = env.fake.URL, []byte(forged)
		c.Client.ExtraRoots = append(c.Client.ExtraRoots, env.fake.Certificate())
	})
	res := bad.sender.Send(context.Background(), push.Message{Platform: push.Android, Token: fcmToken(), Title: "T"})
	checkResult(t, res, push.Rejected, "oauth2: invalid_grant", 1)
}

func TestFCMInFlightCap(t *testing.T) {
	const limit = 2
	env := newFCM(t, func(c *push.FCMConfig) { c.Client.MaxInFlight = limit })
	env.fake.SetLatency(30 * time.Millisecond)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			if res := env.sender.Send(context.Background(), push.Message{Platform: push.Android, Token: fcmToken(), Title: "T"}); res.Outcome != push.Delivered {
				t.Errorf("send: %v %s", res.Outcome, res.Reason)
			}
		})
	}
	wg.Wait()
	if got := env.fake.MaxConcurrent(); got != limit {
		t.Errorf("max concurrent sends at FCM = %d, want %d", got, limit)
	}
}

func TestNewFCMConfigErrors(t *testing.T) {
	fake, err := fcmfake.New(fcmfake.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer fake.Close()
	tests := map[string]push.FCMConfig{
		"no credentials":     {},
		"not a service acct": {Credentials: []byte(`{"type":"authorized_user"}`)},
		"missing file":       {CredentialsFile: t.TempDir() + "/none.json"},
		"plain http url":     {URL: "http://127.0.0.1:1", Credentials: fake.Credentials()},
	}
	for name, cfg := range tests {
		if _, err := push.NewFCM(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	path, err := fake.WriteCredentials(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := push.NewFCM(push.FCMConfig{CredentialsFile: path}); err != nil {
		t.Errorf("credentials file: %v", err)
	}
}

func lastMessage(t testing.TB, fake *fcmfake.Server, token string) fcmfake.Message {
	t.Helper()
	msgs := fake.Messages()
	for i := len(msgs) - 1; i >= 0; i-- {
		if msgs[i].Token == token {
			return msgs[i]
		}
	}
	t.Fatalf("no message for the token")
	return fcmfake.Message{}
}

package push_test

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/apnsfake"
	"github.com/ensgate/ensgate/internal/sim/fcmfake"
)

const topic = "com.example.mail"

// fastRetry keeps retry tests quick.
var fastRetry = push.RetryPolicy{MaxAttempts: 3, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond, MaxElapsed: 5 * time.Second}

type apnsEnv struct {
	fake   *apnsfake.Server
	key    *apnsfake.Key
	sender *push.APNs
}

// newAPNs starts a fake APNs and a token-auth sender for it; edit may
// change the sender's config.
func newAPNs(t testing.TB, edit func(*push.APNsConfig)) *apnsEnv {
	t.Helper()
	dir := t.TempDir()
	key, err := apnsfake.NewKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	fake, err := apnsfake.New(apnsfake.Config{Keys: []*apnsfake.Key{key}, Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	cfg := push.APNsConfig{
		URL: fake.URL, KeyFile: key.Path, KeyID: key.ID, TeamID: key.TeamID, Topic: topic,
		Retry:  fastRetry,
		Client: push.ClientConfig{ExtraRoots: []*x509.Certificate{fake.Certificate()}},
	}
	if edit != nil {
		edit(&cfg)
	}
	sender, err := push.NewAPNs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sender.Close)
	return &apnsEnv{fake: fake, key: key, sender: sender}
}

type fcmEnv struct {
	fake   *fcmfake.Server
	sender *push.FCM
}

func newFCM(t testing.TB, edit func(*push.FCMConfig)) *fcmEnv {
	t.Helper()
	fake, err := fcmfake.New(fcmfake.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	cfg := push.FCMConfig{
		URL: fake.URL, Credentials: fake.Credentials(),
		Retry:  fastRetry,
		Client: push.ClientConfig{ExtraRoots: []*x509.Certificate{fake.Certificate()}},
	}
	if edit != nil {
		edit(&cfg)
	}
	sender, err := push.NewFCM(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sender.Close)
	return &fcmEnv{fake: fake, sender: sender}
}

// apnsToken is a random device token in Apple's format.
func apnsToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// fcmToken is a random registration token in FCM's alphabet.
func fcmToken() string {
	return "fcm:" + rand.Text() + rand.Text()
}

// decode unmarshals a JSON document into a generic map.
func decode(t testing.TB, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("payload %s: %v", b, err)
	}
	return m
}

func checkResult(t testing.TB, got push.Result, outcome push.Outcome, reason string, attempts int) {
	t.Helper()
	if got.Outcome != outcome || got.Reason != reason || got.Attempts != attempts {
		t.Errorf("result = %v/%q/%d attempts (err %v), want %v/%q/%d", got.Outcome, got.Reason, got.Attempts, got.Err, outcome, reason, attempts)
	}
}

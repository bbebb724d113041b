package ens_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/apnsfake"
	"github.com/ensgate/ensgate/internal/sim/fcmfake"
)

// fakes are APNs and FCM peers reached through the real senders.
type fakes struct {
	apns *apnsfake.Server
	fcm  *fcmfake.Server
}

func startFakes(t *testing.T) (*fakes, push.Sender) {
	t.Helper()
	dir := t.TempDir()
	key, err := apnsfake.NewKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakes{}
	if f.apns, err = apnsfake.New(apnsfake.Config{Keys: []*apnsfake.Key{key}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.apns.Close)
	if f.fcm, err = fcmfake.New(fcmfake.Config{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.fcm.Close)
	creds, err := f.fcm.WriteCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	retry := push.RetryPolicy{BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond, MaxElapsed: 3 * time.Second}
	apns, err := push.NewAPNs(push.APNsConfig{URL: f.apns.URL, KeyFile: key.Path, KeyID: key.ID, TeamID: key.TeamID,
		Topic: "com.example.mail", Retry: retry,
		Client: push.ClientConfig{ExtraRoots: []*x509.Certificate{f.apns.Certificate()}}})
	if err != nil {
		t.Fatal(err)
	}
	fcm, err := push.NewFCM(push.FCMConfig{URL: f.fcm.URL, CredentialsFile: creds, Retry: retry,
		Client: push.ClientConfig{ExtraRoots: []*x509.Certificate{f.fcm.Certificate()}}})
	if err != nil {
		t.Fatal(err)
	}
	return f, &push.Router{APNs: apns, FCM: fcm}
}

const iphone = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90"

// TestWebhookToRecordedPushThroughRealSenders drives each push outcome from
// a mail in the simulator, through ENS's webhook and the real APNs and FCM
// senders, to what the fakes recorded and what ENS made of it.
func TestWebhookToRecordedPushThroughRealSenders(t *testing.T) {
	for _, tc := range []struct {
		name      string
		platform  string
		apns      []apnsfake.Reply
		fcm       []fcmfake.Reply
		delivered int  // pushes the fake accepted
		active    bool // the device is still active afterwards
	}{
		{name: "apns delivered", platform: "ios", delivered: 1, active: true},
		{name: "apns 410 unregistered", platform: "ios", apns: []apnsfake.Reply{apnsfake.Unregistered(time.Now().Add(time.Hour))}, active: false},
		{name: "apns 410 older than the registration", platform: "ios", apns: []apnsfake.Reply{apnsfake.Unregistered(time.Now().Add(-time.Hour))}, active: true},
		{name: "apns bad device token", platform: "ios", apns: []apnsfake.Reply{apnsfake.BadDeviceToken}, active: false},
		{name: "apns 503 then delivered", platform: "ios", apns: []apnsfake.Reply{apnsfake.ServiceUnavailable, apnsfake.TooManyRequests}, delivered: 1, active: true},
		{name: "apns expired provider token", platform: "ios", apns: []apnsfake.Reply{apnsfake.ExpiredProviderToken}, delivered: 1, active: true},
		{name: "apns payload too large", platform: "ios", apns: []apnsfake.Reply{apnsfake.PayloadTooLarge}, active: true},
		{name: "fcm delivered", platform: "android", delivered: 1, active: true},
		{name: "fcm unregistered", platform: "android", fcm: []fcmfake.Reply{fcmfake.Unregistered}, active: false},
		{name: "fcm 503 then delivered", platform: "android", fcm: []fcmfake.Reply{fcmfake.Unavailable}, delivered: 1, active: true},
		{name: "fcm sender id mismatch", platform: "android", fcm: []fcmfake.Reply{fcmfake.SenderIDMismatch}, active: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, sender := startFakes(t)
			e := newEnv(t, envOptions{push: sender})
			d := e.basicDevice("phone", alice, alicePW, 0)
			d.Platform = tc.platform
			if tc.platform == "ios" {
				d.PushToken = iphone
			} else {
				d.PushToken = "fcm-registration-token-1"
			}
			f.apns.Script(d.PushToken, tc.apns...)
			f.fcm.Script(d.PushToken, tc.fcm...)
			e.register(d)
			e.deliver(alice, mailFromCarol)
			e.waitFor("the push outcome", func() bool {
				return len(f.apns.Pushes())+len(f.fcm.Messages()) >= len(tc.apns)+len(tc.fcm)+tc.delivered && e.sim.Counters().NotificationsSent >= 1
			})
			e.settle()

			var delivered int
			switch tc.platform {
			case "ios":
				ok := f.apns.Delivered()
				delivered = len(ok)
				if delivered > 0 {
					checkAPNsPayload(t, ok[0])
				}
			case "android":
				ok := f.fcm.Delivered()
				delivered = len(ok)
				if delivered > 0 && (ok[0].Data["title"] != "Carol Example" || ok[0].Data["badge"] != "1" || ok[0].Android.Priority != "high") {
					t.Errorf("FCM message %+v", ok[0])
				}
			}
			if delivered != tc.delivered {
				t.Errorf("%d pushes delivered, want %d", delivered, tc.delivered)
			}
			status, body := e.call("GET", "/api/ens/status?deviceId=phone", nil)
			if status != http.StatusOK || body["registered"] != tc.active {
				t.Errorf("status %d %v, want registered=%v", status, body, tc.active)
			}
			if want := map[bool]string{true: "active", false: "unsubscribed"}[tc.active]; e.newestSimState(alice) != want {
				t.Errorf("Exchange's subscription is %q, want %q", e.newestSimState(alice), want)
			}
		})
	}
}

func checkAPNsPayload(t *testing.T, p apnsfake.Push) {
	t.Helper()
	var payload struct {
		APS struct {
			Alert struct {
				Title, Body string
			} `json:"alert"`
			Badge          int    `json:"badge"`
			ThreadID       string `json:"thread-id"`
			MutableContent int    `json:"mutable-content"`
		} `json:"aps"`
	}
	if err := json.Unmarshal(p.Payload, &payload); err != nil {
		t.Fatal(err)
	}
	a := payload.APS
	if a.Alert.Title != "Carol Example" || a.Alert.Body != "Quarterly numbers\nPlease find the figures attached before Friday." ||
		a.Badge != 1 || a.ThreadID == "" || a.MutableContent != 1 || p.PushType != "alert" || p.Topic != "com.example.mail" {
		t.Errorf("APNs push %+v with payload %s", p, p.Payload)
	}
}

// Exchange's 401 reaches the phone as a silent background push.
func TestReregisterPushThroughAPNs(t *testing.T) {
	f, sender := startFakes(t)
	e := newEnv(t, envOptions{push: sender})
	d := e.basicDevice("phone", alice, alicePW, 4)
	d.PushToken = iphone
	e.register(d)
	e.sim.SetPassword(alice, "changed")
	e.deliver(alice, mailFromCarol)
	e.waitFor("the silent push", func() bool { return len(f.apns.Delivered()) == 1 })
	p := f.apns.Delivered()[0]
	var payload struct {
		APS map[string]any `json:"aps"`
	}
	json.Unmarshal(p.Payload, &payload)
	if p.PushType != "background" || p.Priority != 5 || payload.APS["content-available"] != float64(1) || payload.APS["alert"] != nil {
		t.Errorf("re-register push %+v, payload %s", p, p.Payload)
	}
}

// An APNs outage longer than the push's own retries: Exchange is answered
// at once, a job retries the push from the database, and it arrives once
// APNs is back; nothing is lost, nothing is doubled.
func TestAPNsOutageIsBridgedByAJob(t *testing.T) {
	f, sender := startFakes(t)
	e := newEnv(t, envOptions{push: sender})
	d := e.basicDevice("phone", alice, alicePW, 0)
	d.PushToken = iphone
	e.register(d)
	f.apns.SetOutage(true)
	e.deliver(alice, mailFromCarol)
	e.waitFor("the push retried", func() bool { return e.jobAttempts("ensgate_push") >= 2 })
	f.apns.SetOutage(false)
	e.waitFor("the push after the outage", func() bool { return len(f.apns.Delivered()) == 1 })
	e.settle()
	if n := len(f.apns.Delivered()); n != 1 {
		t.Errorf("%d pushes delivered, want 1", n)
	}
	if p := f.apns.Delivered()[0]; p.CollapseID == "" || strings.Contains(string(p.Payload), "Carol") {
		t.Errorf("push from the job %+v, payload %s: want a collapse id and no content", p, p.Payload)
	}
	subs := e.simSubscriptions(alice)
	if len(subs) != 1 || subs[0].Failures != 0 || subs[0].State != "active" {
		t.Errorf("Exchange's subscription %+v: want its callback answered at once", subs)
	}
}

// Every push of one item to one device carries the same item id (APNs
// apns-collapse-id, FCM data "item"), so a push sent again after a node
// died replaces the first on the device; another item has another id.
func TestPushesOfOneItemShareTheirCollapseID(t *testing.T) {
	f, sender := startFakes(t)
	e := newEnv(t, envOptions{push: sender})
	ios := e.basicDevice("iphone", alice, alicePW, 0)
	ios.PushToken = iphone
	android := e.basicDevice("pixel", alice, alicePW, 3)
	android.Platform, android.PushToken = "android", "fcm-registration-token-1"
	e.register(ios)
	e.register(android)
	item := e.deliver(alice, mailFromCarol)
	e.waitFor("the first pushes", func() bool { return len(f.apns.Delivered()) == 1 && len(f.fcm.Delivered()) == 1 })
	// As if the node died before recording them: the claims are gone and
	// Exchange's retry brings the item again.
	if _, err := e.store.Pool().Exec(context.Background(), `DELETE FROM push_claims`); err != nil {
		t.Fatal(err)
	}
	callback, body := e.newMailNotification(alice, item.ID)
	post(t, callback, body)
	e.deliver(alice, mailForAlice)
	e.waitFor("all pushes", func() bool { return len(f.apns.Delivered()) == 3 && len(f.fcm.Delivered()) == 3 })
	a, m := f.apns.Delivered(), f.fcm.Delivered()
	if a[0].CollapseID == "" || a[0].CollapseID != a[1].CollapseID || a[2].CollapseID == a[0].CollapseID {
		t.Errorf("apns-collapse-id of the first push, its re-send and another item: %q %q %q", a[0].CollapseID, a[1].CollapseID, a[2].CollapseID)
	}
	if m[0].Data["item"] == "" || m[0].Data["item"] != m[1].Data["item"] || m[2].Data["item"] == m[0].Data["item"] {
		t.Errorf("FCM item of the first push, its re-send and another item: %q %q %q", m[0].Data["item"], m[1].Data["item"], m[2].Data["item"])
	}
	if strings.Contains(a[0].CollapseID, alice) || len(a[0].CollapseID) > 64 {
		t.Errorf("collapse id %q", a[0].CollapseID)
	}
}

package ens_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
)

var mailFromCarol = ewssim.Mail{From: "carol@fabrikam.test", FromName: "Carol Example", Subject: "Quarterly numbers",
	Body: "Please find the figures attached before Friday."}

func TestNewMailIsPushedWithContentForEachLevel(t *testing.T) {
	e := newEnv(t, envOptions{})
	for level := 0; level <= 4; level++ {
		e.register(e.basicDevice(fmt.Sprintf("dev-%d", level), alice, alicePW, level))
	}
	e.deliver(alice, mailFromCarol)
	e.waitFor("five pushes", func() bool { return len(e.pushes.pushes("")) >= 5 })
	e.settle()

	unread, _ := e.sim.UnreadCount(alice)
	want := map[int]push.Message{
		0: {Title: "Carol Example", Subject: "Quarterly numbers", Preview: "Please find the figures attached before Friday."},
		1: {Title: "Carol Example", Subject: "Quarterly numbers"},
		2: {Title: "Carol Example"},
		3: {Generic: true},
		4: {},
	}
	for level, w := range want {
		got := e.pushes.pushes(tok(fmt.Sprintf("dev-%d", level)))
		if len(got) != 1 {
			t.Fatalf("level %d: %d pushes, want exactly 1 (Created + NewMail must give one)", level, len(got))
		}
		m := got[0]
		if m.Kind != push.NewMail || m.Title != w.Title || m.Subject != w.Subject || m.Preview != w.Preview || m.Generic != w.Generic {
			t.Errorf("level %d: push %+v, want content %+v", level, m, w)
		}
		if m.Badge != unread || m.Platform != push.IOS || m.ThreadID == "" {
			t.Errorf("level %d: badge %d (unread %d), platform %q, thread %q", level, m.Badge, unread, m.Platform, m.ThreadID)
		}
		if strings.Contains(m.ThreadID, "alice") {
			t.Errorf("thread id %q reveals the mailbox", m.ThreadID)
		}
	}
	if n := e.sim.Counters().Requests["GetItem"]; n != 1 {
		t.Errorf("GetItem called %d times for one item and five devices, want 1", n)
	}
}

func TestLevelsThreeAndFourNeverFetchTheItem(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("generic", alice, alicePW, 3))
	e.register(e.basicDevice("badge", alice, alicePW, 4))
	e.sim.ResetCounters() // registration's own GetFolder (the mailbox check) is not the notification's
	e.deliver(alice, mailFromCarol)
	e.waitFor("two pushes", func() bool { return len(e.pushes.pushes("")) >= 2 })
	e.settle()
	c := e.sim.Counters()
	if c.Requests["GetItem"] != 0 || c.Requests["GetFolder"] != 1 {
		t.Errorf("EWS requests %v: want no GetItem and one GetFolder", c.Requests)
	}
}

func TestTenantLevelIsACeiling(t *testing.T) {
	e := newEnv(t, envOptions{tenantLevel: 2})
	e.register(e.basicDevice("wants-all", alice, alicePW, 0))
	e.register(e.basicDevice("wants-less", alice, alicePW, 3))
	e.deliver(alice, mailFromCarol)
	e.waitFor("two pushes", func() bool { return len(e.pushes.pushes("")) >= 2 })
	all, less := e.pushes.pushes(tok("wants-all"))[0], e.pushes.pushes(tok("wants-less"))[0]
	if all.Title != "Carol Example" || all.Subject != "" || all.Preview != "" {
		t.Errorf("device asking for level 0 under a level-2 tenant got %+v", all)
	}
	if !less.Generic || less.Title != "" {
		t.Errorf("device asking for level 3 got %+v", less)
	}
}

// A push APNs or FCM does not take within the callback is handed to a
// job: Exchange is answered at once (no failed callback, no retry of the
// notification) and the job delivers it, without content (none is stored),
// under the item's collapse id. The record holds one delivered push.
func TestPushNotTakenIsRetriedByAJob(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.pushes.script(tok("phone"), push.Failed, push.Failed)
	e.deliver(alice, mailFromCarol)
	e.waitFor("the retried push", func() bool { return len(e.pushes.pushes(tok("phone"))) >= 3 })
	e.settle()
	got := e.pushes.pushes(tok("phone"))
	if len(got) != 3 {
		t.Fatalf("%d push attempts, want the failed one, a failed retry and the delivered one", len(got))
	}
	first, retried := got[0], got[2]
	if first.Title != "Carol Example" || first.CollapseID == "" {
		t.Errorf("first attempt %+v: want the sender and a collapse id", first)
	}
	if !retried.Generic || retried.Title != "" || retried.Subject != "" || retried.Preview != "" || retried.CollapseID != first.CollapseID || retried.Badge != first.Badge {
		t.Errorf("retried push %+v: want a generic notice with the first's badge and collapse id", retried)
	}
	subs := e.simSubscriptions(alice)
	if len(subs) != 1 || subs[0].Failures != 0 || subs[0].State != "active" {
		t.Fatalf("simulator subscription %+v: want the callback answered at once", subs)
	}
	if outcomes := e.pushOutcomes(); fmt.Sprint(outcomes) != "map[delivered:1]" {
		t.Errorf("push records %v, want one delivered", outcomes)
	}
}

// A push job outlives the node that queued it: stopped (as by a restart or
// a reload) while APNs is away, the next node generation delivers it.
func TestQueuedPushOutlivesItsNode(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.pushes.script(tok("phone"), push.Failed, push.Failed, push.Failed)
	e.deliver(alice, mailFromCarol)
	e.waitFor("a retry", func() bool { return e.jobAttempts("ensgate_push") >= 1 })
	e.restart(func(*ens.Config) {})
	e.waitFor("the push from the new node", func() bool { return len(e.pushes.pushes(tok("phone"))) == 4 })
	e.settle()
	if n := len(e.pushes.pushes(tok("phone"))); n != 4 {
		t.Errorf("%d push attempts, want three failed and one delivered", n)
	}
	if outcomes := e.pushOutcomes(); fmt.Sprint(outcomes) != "map[delivered:1]" {
		t.Errorf("push records %v, want one delivered", outcomes)
	}
}

func TestConcurrentCallbacksForOneItemPushOnce(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.register(e.basicDevice("tablet", alice, alicePW, 1))
	item := e.deliver(alice, mailFromCarol)
	e.waitFor("first pushes", func() bool { return len(e.pushes.pushes("")) >= 2 })
	e.settle()
	// Replay the notification, as Exchange's retries on other nodes would,
	// many times at once.
	url, body := e.newMailNotification(alice, item.ID)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if status, _ := post(t, url, body); status != http.StatusOK {
				t.Errorf("replayed notification: HTTP %d", status)
			}
		})
	}
	wg.Wait()
	for _, tok := range []string{tok("phone"), tok("tablet")} {
		if n := len(e.pushes.pushes(tok)); n != 1 {
			t.Errorf("%s got %d pushes, want 1", tok, n)
		}
	}
}

// While APNs is away, a notification of many items is answered at once:
// after the first push fails, the platform's other pushes go to jobs
// untried. Exchange's retry of it is answered OK too (the pushes are the
// jobs'), not 503 for as long as the jobs wait (found by the cluster test:
// Exchange dropped subscriptions that way).
func TestNotificationWhileAPNsIsAwayIsAnsweredAndItsRetryToo(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.register(e.basicDevice("phone", alice, alicePW, 3)) // no GetItem: the items need not exist
	e.svc.Stop()                                          // no job runs: what the callback did stays to be seen
	e.pushes.script(tok("phone"), push.Failed, push.Failed, push.Failed, push.Failed, push.Failed)
	items := []string{"AAMkAGI2TG93AAE=", "AAMkAGI2TG93AAI=", "AAMkAGI2TG93AAM=", "AAMkAGI2TG93AAQ=", "AAMkAGI2TG93AAU="}
	url, body := e.newMailNotificationFor(alice, items, time.Now())
	if status, result := post(t, url, body); status != http.StatusOK || result != ews.SubscriptionOK {
		t.Fatalf("the notification: %d %q, want 200 OK", status, result)
	}
	if n := len(e.pushes.pushes(tok("phone"))); n != 1 {
		t.Errorf("%d pushes tried in the callback, want only the first (the platform failed)", n)
	}
	if got := e.pushOutcomes()[""]; got != len(items) {
		t.Errorf("%d pushes handed to jobs, want %d", got, len(items))
	}
	if status, result := post(t, url, body); status != http.StatusOK || result != ews.SubscriptionOK {
		t.Errorf("Exchange's retry: %d %q, want 200 OK while the jobs wait", status, result)
	}
	if n := len(e.pushes.pushes(tok("phone"))); n != 1 {
		t.Errorf("the retry tried %d more pushes, want none", n-1)
	}
}

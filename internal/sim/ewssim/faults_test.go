package ewssim

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestFaultServerBusyForAnOperationAndUser(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	it, _ := ts.Deliver(alice, Mail{Subject: "s"})
	if _, err := ts.InjectFault(Fault{Kind: FaultServerBusy, User: "Alice@Example.com", Operation: "GetItem", Count: 2, BackOff: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	callEWS(t, ts, getInboxOp, http.StatusOK) // another operation is unaffected
	if resp, b := post(t, ts.EWSURL, bob, bobPW, soapRequest(getItemOp("x"))); resp.StatusCode != http.StatusOK {
		t.Errorf("another user is affected: HTTP %d %s", resp.StatusCode, b)
	}
	for i := range 2 {
		b := callEWS(t, ts, getItemOp(it.ID), http.StatusInternalServerError)
		if one(t, b, "ResponseCode") != "ErrorServerBusy" || one(t, b, "Value") != "5000" {
			t.Errorf("busy %d: %s", i, b)
		}
	}
	if got := one(t, callEWS(t, ts, getItemOp(it.ID), http.StatusOK), "Subject"); got != "s" {
		t.Errorf("after the fault: Subject %q", got)
	}
	if len(ts.Faults()) != 0 {
		t.Errorf("spent fault still listed: %v", ts.Faults())
	}
	c := ts.Counters()
	if c.Faults["ServerBusy"] != 2 || c.Responses["ErrorServerBusy"] != 2 || c.Requests["GetItem"] != 4 {
		t.Errorf("counters: faults %v, responses %v, requests %v", c.Faults, c.Responses, c.Requests)
	}
}

func TestFaultUnavailableUntilCleared(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	ts.InjectFault(Fault{Kind: FaultUnavailable})
	for range 3 {
		resp, b := post(t, ts.EWSURL, alice, alicePW, soapRequest(getInboxOp))
		if resp.StatusCode != http.StatusServiceUnavailable || bytes.Contains(b, []byte("Envelope")) {
			t.Fatalf("HTTP %d %s", resp.StatusCode, b)
		}
	}
	ts.ClearFaults()
	callEWS(t, ts, getInboxOp, http.StatusOK)
}

func TestFaultDelay(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	const delay = 150 * time.Millisecond
	ts.InjectFault(Fault{Kind: FaultDelay, Operation: "GetFolder", Count: 2, Delay: delay})

	start := time.Now()
	callEWS(t, ts, getInboxOp, http.StatusOK)
	if took := time.Since(start); took < delay {
		t.Errorf("delayed reply after %v, want at least %v", took, delay)
	}
	// A client with a shorter timeout gives up.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.EWSURL, bytes.NewReader(soapRequest(getInboxOp)))
	req.SetBasicAuth(alice, alicePW)
	if _, err := http.DefaultClient.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("short client timeout: %v", err)
	}
	start = time.Now()
	callEWS(t, ts, getInboxOp, http.StatusOK)
	if took := time.Since(start); took > delay/2 {
		t.Errorf("third request delayed (%v) though the fault was for two", took)
	}
}

func TestFaultDeleteBeforeGetItem(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	l := newListener(t, answerOK)
	subscribe(t, ts, l.srv.URL, 30)
	it, _ := ts.Deliver(alice, Mail{Subject: "gone soon"})
	l.next(2 * time.Second)
	ts.InjectFault(Fault{Kind: FaultDeleteBeforeGetItem, Count: 1})

	callEWS(t, ts, getInboxOp, http.StatusOK) // not a GetItem: the fault waits
	b := callEWS(t, ts, getItemOp(it.ID), http.StatusOK)
	if got := one(t, b, "ResponseCode"); got != "ErrorItemNotFound" {
		t.Fatalf("GetItem after the race: %s", got)
	}
	if n, _ := ts.UnreadCount(alice); n != 0 {
		t.Errorf("unread %d after the deletion", n)
	}
}

// TestDeletedItemNotFound is sample 14: deliver, delete, GetItem.
func TestDeletedItemNotFound(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	it, _ := ts.Deliver(alice, Mail{Subject: "s"})
	if err := ts.DeleteItem(alice, it.ID); err != nil {
		t.Fatal(err)
	}
	if err := ts.DeleteItem(alice, it.ID); !errors.Is(err, ErrNoSuchItem) {
		t.Errorf("second delete: %v", err)
	}
	got := callEWS(t, ts, getItemOp(it.ID), http.StatusOK)
	want := sample(t, "14-getitem-error-itemnotfound.response.xml")
	for _, local := range []string{"MessageText", "ResponseCode", "DescriptiveLinkKey", "Items"} {
		if g, w := find(t, got, local), find(t, want, local); !slices.Equal(g, w) {
			t.Errorf("%s = %q, sample 14 has %q", local, g, w)
		}
	}
	if got := findAttr(t, got, "GetItemResponseMessage", "ResponseClass"); !slices.Equal(got, []string{"Error"}) {
		t.Errorf("ResponseClass %v", got)
	}
}

func TestPasswordChangeExpiresCredentials(t *testing.T) {
	ts := Start(t, Config{Users: testUsers()})
	callEWS(t, ts, getInboxOp, http.StatusOK)
	if err := ts.SetPassword(alice, "new-password"); err != nil {
		t.Fatal(err)
	}
	if resp, _ := post(t, ts.EWSURL, alice, alicePW, soapRequest(getInboxOp)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("old password: HTTP %d", resp.StatusCode)
	}
	if resp, _ := post(t, ts.EWSURL, alice, "new-password", soapRequest(getInboxOp)); resp.StatusCode != http.StatusOK {
		t.Errorf("new password: HTTP %d", resp.StatusCode)
	}
	if err := ts.SetPassword("nobody@example.com", "x"); !errors.Is(err, ErrNoSuchUser) {
		t.Errorf("unknown user: %v", err)
	}
}

func TestInjectFaultValidation(t *testing.T) {
	ts := Start(t, Config{})
	for _, f := range []Fault{{Kind: "Meteor"}, {Kind: FaultDelay}, {Kind: FaultServerBusy, Count: -1}} {
		if _, err := ts.InjectFault(f); err == nil || !strings.HasPrefix(err.Error(), "ewssim:") {
			t.Errorf("%+v accepted (%v)", f, err)
		}
	}
	id, _ := ts.InjectFault(Fault{Kind: FaultServerBusy})
	if f := ts.Faults(); len(f) != 1 || f[0].BackOff != defaultBackOff {
		t.Errorf("faults %+v", f)
	}
	if !ts.RemoveFault(id) || ts.RemoveFault(id) {
		t.Error("RemoveFault does not remove exactly once")
	}
}

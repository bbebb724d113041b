package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/store"
)

// `ens subscription health` counts a tenant's subscriptions by state and
// reason from the database, and names no mailbox.
func TestCLIShowsSubscriptionHealth(t *testing.T) {
	const url = "https://mail.contoso.test/EWS/Exchange.asmx"
	dbURL := setUpDatabase(t, []string{"ens", "tenant", "create", "--name", "contoso"},
		[]string{"ens", "endpoint", "add", "--tenant", "contoso", "--url", url})
	env := []string{"DATABASE_URL=" + dbURL}
	health := func() result {
		t.Helper()
		r := cli(t, env, "ens", "subscription", "health", "--tenant", "contoso")
		if r.code != 0 {
			t.Fatalf("subscription health: %+v", r)
		}
		return r
	}
	if r := health(); r.stdout != "tenant \"contoso\": 0 active (0 overdue), 0 failed, 0 ended\n(none)\n" {
		t.Fatalf("a new tenant's health: %q", r.stdout)
	}

	ctx := context.Background()
	s, err := store.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tenant, _ := s.TenantByName(ctx, "contoso")
	ep, err := s.EndpointFor(ctx, tenant.ID, url)
	if err != nil {
		t.Fatal(err)
	}
	register := func(id, device, mailbox string) store.Subscription {
		t.Helper()
		sub, err := s.Register(ctx, store.Registration{
			Subscription: store.Subscription{PublicID: id, TenantID: tenant.ID, MailboxHash: []byte(mailbox), EndpointID: ep.ID,
				AuthType: "basic", SealedCredentials: []byte("x"), RemoteID: "ews-" + id, StatusFrequency: 15},
			Device: store.Device{TenantID: tenant.ID, DeviceID: device, MailboxHash: []byte(mailbox), Platform: "ios", PushToken: device},
			Owner:  store.DeviceOwner{MailboxHashes: [][]byte{[]byte(mailbox)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return sub
	}
	register("a1", "phone", "mailbox-a")
	overdue := register("a2", "tablet", "mailbox-a") // supersedes a1
	register("b1", "laptop", "mailbox-b")
	refused := register("c1", "watch", "mailbox-c")
	if _, err := s.StopSubscription(ctx, refused.ID, store.SubscriptionFailed, store.ReasonUnauthorized, nil); err != nil {
		t.Fatal(err)
	}
	// Exchange last called back for a2 40 minutes ago, past its 15.
	if _, err := s.Pool().Exec(ctx, `UPDATE subscriptions SET last_seen_at = now() - interval '40 minutes' WHERE id = $1`, overdue.ID); err != nil {
		t.Fatal(err)
	}

	r := health()
	t.Logf("ensgate ens subscription health --tenant contoso:\n%s", r.stdout)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	var rows []string
	for _, l := range lines[min(2, len(lines)):] {
		rows = append(rows, strings.Join(strings.Fields(l), " "))
	}
	want := []string{"STATE REASON COUNT", "active - 2", "failed unauthorized 1", "ended superseded 1"}
	if len(lines) < 2 || lines[0] != `tenant "contoso": 2 active (1 overdue), 1 failed, 1 ended` ||
		!strings.HasPrefix(lines[1], "Exchange last heard from: newest ") || !strings.Contains(lines[1], ", oldest 40m") ||
		strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("subscription health:\n%s\nwant the counts 2 active (1 overdue, oldest 40m…), 1 failed, 1 ended and the rows %q", r.stdout, want)
	}
	if strings.Contains(r.stdout, "mailbox") {
		t.Errorf("the health output names a mailbox hash:\n%s", r.stdout)
	}

	if r := cli(t, env, "ens", "subscription", "health", "--tenant", "nobody"); r.code == 0 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("health of an unknown tenant: %+v", r)
	}
}

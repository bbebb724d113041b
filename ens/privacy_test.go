package ens_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"net/url"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/ens/push"
	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/ewssim"
)

// TestNoSecretOrPersonalDataInLogsOrDatabase runs registrations (basic and
// oauth) and deliveries, then searches ENS's logs and a pg_dump of its
// database for everything private used in the run. It also shows split
// knowledge: the database lacks the callback key, the URL lacks the
// credentials, and both together open them.
func TestNoSecretOrPersonalDataInLogsOrDatabase(t *testing.T) {
	e := newEnv(t, envOptions{statusFrequency: 30}) // room for Exchange's retry (see TestExchangeRetries…)
	if err := e.sim.SetToken(bob, "bob-access-token-secret"); err != nil {
		t.Fatal(err)
	}
	e.register(e.basicDevice("phone", alice, alicePW, 0))
	e.register(deviceclient.Device{ID: "tablet", Email: bob, Platform: "android", PushToken: "fcm-bob", AuthType: "oauth", NotificationLevel: 0,
		Credentials: map[string]string{"accessToken": "bob-access-token-secret"}})
	mail := ewssim.Mail{From: "mallory@fabrikam.test", FromName: "Mallory Sender", Subject: "Merger codename Bluebird",
		Body: "Confidential preview text about the merger"}
	e.deliver(alice, mail)
	e.deliver(bob, mail)
	e.waitFor("both pushes", func() bool { return len(e.pushes.pushes("")) == 2 })
	e.pushes.script(tok("phone"), push.Failed) // a retry path too
	e.deliver(alice, mail)
	e.waitFor("the retried push (a job)", func() bool { return len(e.pushes.pushes(tok("phone"))) == 3 })
	if err := e.sim.SetPassword(alice, "new-password-after-change"); err != nil {
		t.Fatal(err)
	}
	e.deliver(alice, mail) // the 401 path
	e.waitFor("the re-register push", func() bool {
		p := e.pushes.pushes(tok("phone"))
		return len(p) > 3 && p[3].Kind == push.Reregister
	})
	e.settle()

	private := []string{alicePW, "bob-access-token-secret", alice, bob, "alice@", "bob@", "mallory@fabrikam.test",
		"Mallory Sender", "Merger codename", "Bluebird", "Confidential preview", e.token}
	dump := pgDump(t, e.dbURL)
	logs := e.logs.String()
	metrics := gatherMetrics(t)
	if !strings.Contains(metrics, `ensgate_ens_notifications_total{result="ok"}`) ||
		!strings.Contains(metrics, `ensgate_ens_registrations_total{result="active"}`) {
		t.Errorf("the run left no metrics:\n%s", metrics)
	}
	if !strings.Contains(logs, "device registered") || !strings.Contains(dump, "CREATE TABLE public.subscriptions") ||
		!strings.Contains(dump, "ensgate_push") || !strings.Contains(dump, "ensgate_reregister") {
		t.Fatalf("nothing to search: %d bytes of logs, %d of dump", len(logs), len(dump))
	}
	for _, s := range private {
		for name, text := range map[string]string{"logs": logs, "pg_dump": dump, "metrics": metrics} {
			if strings.Contains(strings.ToLower(text), strings.ToLower(s)) {
				t.Errorf("%s contain %q", name, s)
			}
		}
	}

	// Split knowledge: the callback keys are in the URLs, not the database.
	keys := 0
	for _, s := range e.sim.Subscriptions() {
		u, _ := url.Parse(s.URL)
		f := u.Query().Get("f")
		raw, err := base64.RawURLEncoding.DecodeString(f)
		if err != nil || len(raw) != 32 {
			t.Fatalf("callback key %q is not 32 bytes of base64url", f)
		}
		keys++
		if strings.Contains(dump, f) || strings.Contains(dump, hex.EncodeToString(raw)) {
			t.Errorf("the database holds a subscription key")
		}
		if strings.Contains(s.URL, "password") || strings.Contains(s.URL, alicePW) {
			t.Errorf("a callback URL carries credentials")
		}
	}
	if keys < 2 {
		t.Fatalf("only %d subscriptions to check", keys)
	}
	if bytes.Contains([]byte(dump), bytes.Repeat([]byte{7}, 32)) || strings.Contains(dump, hex.EncodeToString(bytes.Repeat([]byte{7}, 32))) {
		t.Error("the database holds the master key")
	}
}

// pgDump returns a plain-text dump of the database, data included.
func pgDump(t *testing.T, dbURL string) string {
	t.Helper()
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_dump")
	sort.Strings(bins)
	if len(bins) == 0 {
		t.Fatal("pg_dump not found")
	}
	out, err := exec.Command(bins[len(bins)-1], "--no-owner", "--inserts", dbURL).Output()
	if err != nil {
		t.Fatalf("pg_dump: %v", err)
	}
	return string(out)
}

// gatherMetrics renders ENS's and the push layer's metrics as text.
func gatherMetrics(t *testing.T) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	if err := ens.Register(reg); err != nil {
		t.Fatal(err)
	}
	if err := push.Register(reg); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, f := range families {
		expfmt.MetricFamilyToText(&b, f)
	}
	return b.String()
}

package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
	"github.com/ensgate/ensgate/store"
)

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func TestCLIAdministersTenantsEndpointsAndDevices(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	env := []string{"DATABASE_URL=" + dbURL}

	r := cli(t, env, "ens", "migrate")
	if r.code != 0 || !strings.Contains(r.stdout, "schema migrated from version 0 to") {
		t.Fatalf("first migrate: %+v", r)
	}
	r = cli(t, env, "ens", "migrate")
	if r.code != 0 || !strings.Contains(r.stdout, "schema is up to date") {
		t.Fatalf("second migrate must change nothing: %+v", r)
	}

	r = cli(t, env, "ens", "tenant", "create", "--name", "contoso", "--level", "2")
	if r.code != 0 {
		t.Fatalf("tenant create: %+v", r)
	}
	token := lastLine(r.stdout)
	s, err := store.Open(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tenant, err := s.TenantByToken(context.Background(), token)
	if err != nil || tenant.Name != "contoso" || tenant.NotificationLevel != 2 {
		t.Fatalf("the printed token %q does not select the tenant: %+v, %v", token, tenant, err)
	}

	pin := "SHA256:" + strings.Repeat("AB:", 31) + "AB"
	r = cli(t, env, "ens", "endpoint", "add", "--tenant", "contoso",
		"--url", "https://Mail.Contoso.test:443/EWS/Exchange.asmx", "--fingerprint", pin)
	if r.code != 0 || !strings.Contains(r.stdout, "https://mail.contoso.test/EWS/Exchange.asmx") ||
		!strings.Contains(r.stdout, "sha256:"+strings.Repeat("ab", 32)) {
		t.Fatalf("endpoint add: %+v", r)
	}
	e, err := s.EndpointFor(context.Background(), tenant.ID, "https://mail.contoso.test/EWS/Exchange.asmx")
	if err != nil || e.Fingerprint != "sha256:"+strings.Repeat("ab", 32) {
		t.Fatalf("stored endpoint = %+v, %v", e, err)
	}
	r = cli(t, env, "ens", "endpoint", "list", "--tenant", "contoso")
	if r.code != 0 || !strings.Contains(r.stdout, "https://mail.contoso.test/EWS/Exchange.asmx") {
		t.Fatalf("endpoint list: %+v", r)
	}

	// Exchange Online through Graph: the public cloud's defaults, and the
	// mail app's client id, which Graph cannot do without.
	if r = cli(t, env, "ens", "endpoint", "add", "--tenant", "contoso", "--graph"); r.code == 0 || !strings.Contains(r.stderr, "--client-id") {
		t.Fatalf("graph without a client id: %+v", r)
	}
	r = cli(t, env, "ens", "endpoint", "add", "--tenant", "contoso", "--graph", "--client-id", "11111111-2222-3333-4444-555555555555")
	if r.code != 0 || !strings.Contains(r.stdout, "Microsoft Graph at https://graph.microsoft.com/") {
		t.Fatalf("endpoint add --graph: %+v", r)
	}
	g, err := s.EndpointFor(context.Background(), tenant.ID, "https://graph.microsoft.com")
	want := store.OAuth{ClientID: "11111111-2222-3333-4444-555555555555", Authority: "https://login.microsoftonline.com/organizations",
		Scope: "https://graph.microsoft.com/.default offline_access"}
	if err != nil || g.Kind != store.KindGraph || g.OAuth != want {
		t.Fatalf("stored Graph endpoint = %+v, %v", g, err)
	}
	r = cli(t, env, "ens", "endpoint", "list", "--tenant", "contoso")
	if r.code != 0 || !strings.Contains(r.stdout, "graph") || !strings.Contains(r.stdout, "11111111-2222-3333-4444-555555555555") {
		t.Fatalf("endpoint list with Graph: %+v", r)
	}

	r = cli(t, env, "ens", "device", "list", "--tenant", "contoso")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "(none)" {
		t.Fatalf("device list of a new tenant: %+v", r)
	}
	if _, err := s.Pool().Exec(context.Background(),
		`INSERT INTO device_compliance (tenant_id, device_id, state) VALUES ($1, 'dev-42', 'blocked')`, tenant.ID); err != nil {
		t.Fatal(err)
	}
	r = cli(t, env, "ens", "device", "list", "--tenant", "contoso")
	if r.code != 0 || !strings.Contains(r.stdout, "dev-42") || !strings.Contains(r.stdout, "blocked") {
		t.Fatalf("device list: %+v", r)
	}
}

func TestCLIRejectsBadArgumentsWithClearErrors(t *testing.T) {
	env := []string{"DATABASE_URL=" + pgtest.NewDatabase(t)}
	if r := cli(t, env, "ens", "migrate"); r.code != 0 {
		t.Fatalf("migrate: %+v", r)
	}
	if r := cli(t, env, "ens", "tenant", "create", "--name", "contoso"); r.code != 0 {
		t.Fatalf("tenant create: %+v", r)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"ens", "tenant", "create"}, `"name" not set`},
		{[]string{"ens", "tenant", "create", "--name", "x", "--level", "7"}, "--level 7: must be 0"},
		{[]string{"ens", "tenant", "create", "--name", "bad name"}, "tenant name"},
		{[]string{"ens", "tenant", "create", "--name", "contoso"}, "already exists"},
		{[]string{"ens", "endpoint", "add", "--tenant", "contoso", "--url", "ftp://x/EWS"}, "--url: EWS URL"},
		{[]string{"ens", "endpoint", "add", "--tenant", "contoso", "--url", "https://x/EWS/Exchange.asmx", "--fingerprint", "md5:00"}, "--fingerprint"},
		{[]string{"ens", "endpoint", "add", "--tenant", "nobody", "--url", "https://x/EWS/Exchange.asmx"}, `tenant "nobody": not found`},
		{[]string{"ens", "device", "list", "--tenant", "nobody"}, `tenant "nobody": not found`},
		{[]string{"ens", "device", "list"}, `"tenant" not set`},
	} {
		r := cli(t, env, tc.args...)
		if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("ensgate %s: exit %d, stderr %q; want non-zero exit and %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
}

func TestCLIReportsAnUnreachableDatabase(t *testing.T) {
	for _, env := range [][]string{
		{"DATABASE_URL=postgres://ens:pw-not-shown@127.0.0.1:1/ens?connect_timeout=3"},
		{},
	} {
		r := cli(t, env, "ens", "tenant", "create", "--name", "contoso")
		want := "database unreachable at postgres://ens:xxxxx@127.0.0.1:1/ens"
		if len(env) == 0 {
			want = "set DATABASE_URL"
		}
		if r.code == 0 || !strings.Contains(r.stderr, want) || strings.Contains(r.stderr+r.stdout, "pw-not-shown") {
			t.Errorf("env %v: exit %d, stderr %q; want non-zero and %q without the password", env, r.code, r.stderr, want)
		}
	}
}

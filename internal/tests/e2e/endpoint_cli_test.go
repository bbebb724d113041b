package e2e

import (
	"strings"
	"testing"

	"github.com/ensgate/ensgate/internal/testenv/pgtest"
)

// `ens endpoint pin` and `ens endpoint remove` change a tenant's allowed
// EWS URLs on the database; running nodes pick the change up by NOTIFY
// (ens.TestRepinnedEndpointReachesEveryNode and
// ens.TestRemovedEndpointEndsItsSubscriptionsOnEveryNode).
func TestCLIPinsAndRemovesEndpoints(t *testing.T) {
	env := []string{"DATABASE_URL=" + pgtest.NewDatabase(t)}
	const url = "https://mail.contoso.test/EWS/Exchange.asmx"
	pin := "sha256:" + strings.Repeat("ab", 32)
	for _, args := range [][]string{{"ens", "migrate"}, {"ens", "tenant", "create", "--name", "contoso"},
		{"ens", "endpoint", "add", "--tenant", "contoso", "--url", url}} {
		if r := cli(t, env, args...); r.code != 0 {
			t.Fatalf("%v: %+v", args, r)
		}
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"pin", "--url", "HTTPS://Mail.Contoso.test:443/EWS/Exchange.asmx", "--fingerprint", strings.ToUpper(pin)}, 0, url + ` for tenant "contoso" is now pinned to ` + pin},
		{[]string{"list"}, 0, pin},
		{[]string{"pin", "--url", url, "--none"}, 0, "is now not pinned"},
		{[]string{"pin", "--url", url}, 1, "give either --fingerprint (the new pin) or --none (no pin)"},
		{[]string{"pin", "--url", url, "--none", "--fingerprint", pin}, 1, "give either --fingerprint"},
		{[]string{"pin", "--url", url, "--fingerprint", "sha256:12"}, 1, "--fingerprint:"},
		{[]string{"pin", "--url", "https://other.test/EWS/Exchange.asmx", "--none"}, 1, "not found"},
		{[]string{"remove", "--url", url}, 0, "removed " + url + ` from tenant "contoso"; 0 subscription(s) using it ended`},
		{[]string{"list"}, 0, "(none)"},
		{[]string{"remove", "--url", url}, 1, "not found"},
		{[]string{"remove", "--url", "ftp://x"}, 1, "--url:"},
		{[]string{"add", "--url", url}, 0, "allowed " + url},
	} {
		r := cli(t, env, append([]string{"ens", "endpoint", tc.args[0], "--tenant", "contoso"}, tc.args[1:]...)...)
		if r.code != tc.code || !strings.Contains(r.stdout+r.stderr, tc.want) {
			t.Errorf("endpoint %v: exit %d, output %q; want exit %d and %q", tc.args, r.code, r.stdout+r.stderr, tc.code, tc.want)
		}
	}
}

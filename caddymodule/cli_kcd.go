package caddymodule

import (
	"context"
	"fmt"
	"time"

	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/spf13/cobra"

	"github.com/ensgate/ensgate/kcd"
)

// kcdCommand checks a Kerberos Constrained Delegation setup the way the
// proxy will use it, step by step, without a running gateway.
func kcdCommand() *cobra.Command {
	kcdCmd := &cobra.Command{Use: "kcd", Short: "Checks Kerberos Constrained Delegation for certificate clients"}
	var realm, keytabPath, principal, spn, user string
	var kdcs []string
	var timeout time.Duration
	check := &cobra.Command{
		Use:   "check",
		Short: "Logs in with the keytab and delegates --user to --spn (S4U2Self + S4U2Proxy), reporting each step",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			kt, err := keytab.Load(keytabPath)
			if err != nil {
				return fmt.Errorf("--keytab: %w", err)
			}
			if user == "" {
				return fmt.Errorf("--user: the UPN (or account name) to delegate is required")
			}
			d, err := kcd.New(kcd.Config{Realm: realm, KDCs: kdcs, Principal: principal, Keytab: kt, SPN: spn, Timeout: timeout})
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			p, err := d.Probe(ctx, user)
			out := cmd.OutOrStdout()
			steps := []struct {
				name string
				took time.Duration
			}{
				{fmt.Sprintf("login (AS) as %s@%s", principal, realm), p.Login},
				{"S4U2Self for " + user, p.S4U2Self},
				{"S4U2Proxy to " + spn, p.S4U2Proxy},
			}
			// The step that failed is the last one reached.
			reached := 0
			for reached < len(steps) && steps[reached].took > 0 {
				reached++
			}
			for i, step := range steps[:reached] {
				result := "ok"
				if err != nil && i == reached-1 {
					result = "FAILED"
				}
				fmt.Fprintf(out, "%s: %s (%v)\n", step.name, result, step.took.Round(time.Microsecond))
			}
			if err != nil {
				return err
			}
			sid := ""
			if p.SID != "" {
				sid = ", SID " + p.SID
			}
			fmt.Fprintf(out, "delegated ticket for %s%s, valid until %s; Negotiate header of %d bytes\n",
				p.Client, sid, p.Expires.UTC().Format(time.RFC3339), p.HeaderBytes)
			if p.SIDProblem != "" {
				fmt.Fprintf(out, "note: no user SID (%s): certificates with a SID extension are refused unless `sid off`\n", p.SIDProblem)
			}
			return nil
		},
	}
	f := check.Flags()
	f.StringVar(&realm, "realm", "", "Kerberos realm, e.g. CORP.EXAMPLE.COM")
	f.StringSliceVar(&kdcs, "kdc", nil, "KDC host[:port] (repeatable, or comma-separated)")
	f.StringVar(&keytabPath, "keytab", "", "the gateway account's keytab")
	f.StringVar(&principal, "principal", "", "the gateway account's principal, without realm")
	f.StringVar(&spn, "spn", "", "Exchange's SPN, e.g. HTTP/exchange.corp.example.com")
	f.StringVar(&user, "user", "", "the user to delegate: a UPN as in the certificates")
	f.DurationVar(&timeout, "timeout", 3*time.Second, "per KDC attempt")
	kcdCmd.AddCommand(check)
	return kcdCmd
}

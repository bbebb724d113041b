package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/ensgate/ensgate/ens"
	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/privacy"
	"github.com/ensgate/ensgate/store"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "ens",
		Usage: "<migrate|tenant|endpoint|device|subscription|kcd> ...",
		Short: "Administers ENSGate: schema, tenants, EWS endpoints, devices; shows subscription health; checks KCD",
		Long: `
Works on the database named by $DATABASE_URL (or --database-url) directly,
so no gateway needs to be running; running nodes pick the changes up.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.PersistentFlags().String("database-url", "", "PostgreSQL URL (default $DATABASE_URL)")
			cmd.AddCommand(migrateCommand(), tenantCommand(), endpointCommand(), deviceCommand(), subscriptionCommand(), kcdCommand())
		},
	})
}

// connectTimeout bounds how long a command waits for an unreachable database.
const connectTimeout = 10 * time.Second

// withStore opens the database, checks that it answers, and runs fn.
func withStore(cmd *cobra.Command, timeout time.Duration, fn func(ctx context.Context, s *store.Store) error) error {
	url, _ := cmd.Flags().GetString("database-url")
	if url == "" {
		url = os.Getenv("DATABASE_URL")
	}
	if url == "" {
		return errors.New("no database: set DATABASE_URL or pass --database-url")
	}
	s, err := store.Open(context.Background(), url)
	if err != nil {
		return err
	}
	defer s.Close()
	pingCtx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if err := s.Ping(pingCtx); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return fn(ctx, s)
}

// withTenant is withStore for commands about one tenant (--tenant).
func withTenant(cmd *cobra.Command, fn func(ctx context.Context, s *store.Store, t store.Tenant) error) error {
	name, _ := cmd.Flags().GetString("tenant")
	return withStore(cmd, time.Minute, func(ctx context.Context, s *store.Store) error {
		t, err := s.TenantByName(ctx, name)
		if err != nil {
			return err
		}
		return fn(ctx, s, t)
	})
}

// tenantFlag adds the required --tenant flag.
func tenantFlag(cmd *cobra.Command) {
	cmd.Flags().String("tenant", "", "tenant name (required)")
	cmd.MarkFlagRequired("tenant")
}

func migrateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Creates or upgrades the database schema (safe to repeat, safe on several nodes at once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd, 10*time.Minute, func(ctx context.Context, s *store.Store) error {
				from, to, err := s.Migrate(ctx)
				if err != nil {
					return err
				}
				if from == to {
					fmt.Fprintf(cmd.OutOrStdout(), "schema is up to date (version %d)\n", to)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "schema migrated from version %d to %d\n", from, to)
				}
				return nil
			})
		},
	}
}

func tenantCommand() *cobra.Command {
	tenant := &cobra.Command{Use: "tenant", Short: "Manages tenants"}

	create := &cobra.Command{
		Use:   "create --name NAME [--level 0..4]",
		Short: "Creates a tenant and prints its API token (once) on the last line",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name, _ := cmd.Flags().GetString("name")
			n, _ := cmd.Flags().GetInt("level")
			level := privacy.Level(n)
			if err := store.ValidateTenantName(name); err != nil {
				return err
			}
			if !level.Valid() {
				return fmt.Errorf("--level %d: must be %s", n, privacy.Range)
			}
			return withStore(cmd, time.Minute, func(ctx context.Context, s *store.Store) error {
				t, token, err := s.CreateTenant(ctx, name, level)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "created tenant %q (notification level ceiling %d)\n", t.Name, t.NotificationLevel)
				fmt.Fprintln(out, "its API token follows; it is shown only now (the mail app's ENSAPIToken):")
				fmt.Fprintln(out, token)
				return nil
			})
		},
	}
	create.Flags().String("name", "", "tenant name: letters, digits, '.', '_', '-' (required)")
	create.Flags().Int("level", 0, "notification level ceiling, "+privacy.Range)
	create.MarkFlagRequired("name")

	list := &cobra.Command{
		Use:   "list",
		Short: "Lists tenants",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withStore(cmd, time.Minute, func(ctx context.Context, s *store.Store) error {
				tenants, err := s.Tenants(ctx)
				if err != nil {
					return err
				}
				return table(cmd.OutOrStdout(), []string{"NAME", "LEVEL", "CREATED"}, len(tenants), func(i int) []string {
					t := tenants[i]
					return []string{t.Name, fmt.Sprint(t.NotificationLevel), t.CreatedAt.UTC().Format(time.RFC3339)}
				})
			})
		},
	}
	tenant.AddCommand(create, list)
	return tenant
}

// flagError names the flag an EndpointSpec's error is about.
func flagError(err error) error {
	msg := err.Error()
	for _, f := range [][2]string{{"url: ", "--url: "}, {"fingerprint: ", "--fingerprint: "}, {"client id: ", "--client-id: "},
		{"authority and scope ", "--authority and --scope "}, {"authority: ", "--authority: "}} {
		if strings.HasPrefix(msg, f[0]) {
			return errors.New(f[1] + strings.TrimPrefix(msg, f[0]))
		}
	}
	return err
}

// endpointFlags reads --url, normalised, and --fingerprint (if given), in
// its canonical form.
func endpointFlags(cmd *cobra.Command) (url, pin string, err error) {
	rawURL, _ := cmd.Flags().GetString("url")
	pin, _ = cmd.Flags().GetString("fingerprint")
	if url, err = store.NormalizeEWSURL(rawURL); err != nil {
		return "", "", fmt.Errorf("--url: %w", err)
	}
	if pin != "" {
		fp, err := ews.ParseFingerprint(pin)
		if err != nil {
			return "", "", fmt.Errorf("--fingerprint: %w", err)
		}
		pin = fp.String()
	}
	return url, pin, nil
}

func endpointCommand() *cobra.Command {
	endpoint := &cobra.Command{Use: "endpoint", Short: "Manages a tenant's allowed EWS endpoints"}

	add := &cobra.Command{
		Use:   "add --tenant NAME (--url EWS_URL | --graph --client-id ID [--url GRAPH_ROOT]) [--fingerprint sha256:HEX|spki-sha256:HEX] [--client-id ID --authority URL --scope SCOPES]",
		Short: "Allows an EWS URL, or Microsoft Graph, for a tenant's devices, optionally pinned to a certificate",
		Long: `
An EWS URL serves on-premises Exchange. --graph allows Exchange Online through
Microsoft Graph (--url is then the Graph root, default ` + ens.DefaultGraphRoot + `).

--client-id is the mail app's own public-client registration in Entra ID:
refresh tokens are bound to it. Graph needs it; an EWS URL takes it when its
OAuth devices may register refresh tokens. --authority is the directory, MSAL
style (default ` + ens.DefaultAuthority + `; the token endpoint is it plus
/oauth2/v2.0/token), --scope what is asked for (default: the resource's
/.default and offline_access).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var spec ens.EndpointSpec
			spec.Graph, _ = cmd.Flags().GetBool("graph")
			spec.URL, _ = cmd.Flags().GetString("url")
			spec.Fingerprint, _ = cmd.Flags().GetString("fingerprint")
			spec.ClientID, _ = cmd.Flags().GetString("client-id")
			spec.Authority, _ = cmd.Flags().GetString("authority")
			spec.Scope, _ = cmd.Flags().GetString("scope")
			if !spec.Graph && spec.URL == "" {
				return errors.New("give --url (an EWS URL) or --graph")
			}
			e, err := spec.Entry(0)
			if err != nil {
				return flagError(err)
			}
			return withTenant(cmd, func(ctx context.Context, s *store.Store, t store.Tenant) error {
				e.TenantID = t.ID
				e, err := s.Allow(ctx, e)
				if err != nil {
					return err
				}
				if strings.HasPrefix(e.URL, "http://") || strings.HasPrefix(e.OAuth.Authority, "http://") {
					fmt.Fprintln(cmd.ErrOrStderr(), "warning: http:// sends credentials unencrypted; use it only for test servers")
				}
				what := e.URL
				if e.Kind == store.KindGraph {
					what = "Microsoft Graph at " + e.URL
				}
				fmt.Fprintf(cmd.OutOrStdout(), "allowed %s for tenant %q (%s)\n", what, t.Name, pinned(e.Fingerprint))
				return nil
			})
		},
	}
	tenantFlag(add)
	add.Flags().String("url", "", "EWS URL, e.g. https://mail.example.com/EWS/Exchange.asmx; with --graph the Graph root")
	add.Flags().String("fingerprint", "", "pin: sha256:HEX of the certificate or spki-sha256:HEX of its public key")
	add.Flags().Bool("graph", false, "allow Exchange Online through Microsoft Graph (needs --client-id)")
	add.Flags().String("client-id", "", "the mail app's OAuth client id (Entra application id)")
	add.Flags().String("authority", "", "the OAuth authority (default "+ens.DefaultAuthority+")")
	add.Flags().String("scope", "", "the OAuth scopes asked for when a refresh token is redeemed")

	list := &cobra.Command{
		Use:   "list --tenant NAME",
		Short: "Lists a tenant's allowed EWS endpoints and Graph roots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withTenant(cmd, func(ctx context.Context, s *store.Store, t store.Tenant) error {
				endpoints, err := s.Endpoints(ctx, t.ID)
				if err != nil {
					return err
				}
				return table(cmd.OutOrStdout(), []string{"KIND", "URL", "PIN", "CLIENT ID"}, len(endpoints), func(i int) []string {
					e := endpoints[i]
					return []string{e.Kind, e.URL, orDash(e.Fingerprint), orDash(e.OAuth.ClientID)}
				})
			})
		},
	}
	tenantFlag(list)

	pin := &cobra.Command{
		Use:   "pin --tenant NAME --url URL (--fingerprint sha256:HEX|spki-sha256:HEX | --none)",
		Short: "Replaces the certificate pin of an allowed EWS URL; running nodes use it within seconds",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			url, pin, err := endpointFlags(cmd)
			if err != nil {
				return err
			}
			if none, _ := cmd.Flags().GetBool("none"); (pin == "") == !none {
				return errors.New("give either --fingerprint (the new pin) or --none (no pin)")
			}
			return withTenant(cmd, func(ctx context.Context, s *store.Store, t store.Tenant) error {
				e, err := s.SetEndpointPin(ctx, t.ID, url, pin)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s for tenant %q is now %s\n", e.URL, t.Name, pinned(e.Fingerprint))
				return nil
			})
		},
	}
	tenantFlag(pin)
	pin.Flags().String("url", "", "the allowed EWS URL (required)")
	pin.Flags().String("fingerprint", "", "the new pin: sha256:HEX of the certificate or spki-sha256:HEX of its public key")
	pin.Flags().Bool("none", false, "remove the pin")
	pin.MarkFlagRequired("url")

	remove := &cobra.Command{
		Use:   "remove --tenant NAME --url URL",
		Short: "Takes an EWS URL off a tenant's list and ends the subscriptions that use it",
		Long: `
Registrations for the URL are refused from now on, on every node. Each
subscription that uses it ends: Exchange's next callback for it is answered
Unsubscribe, and its devices' status says resubscribe. Adding the URL again
lets devices register again.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			url, _, err := endpointFlags(cmd)
			if err != nil {
				return err
			}
			return withTenant(cmd, func(ctx context.Context, s *store.Store, t store.Tenant) error {
				ended, err := s.RemoveEndpoint(ctx, t.ID, url)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s from tenant %q; %d subscription(s) using it ended\n", url, t.Name, ended)
				return nil
			})
		},
	}
	tenantFlag(remove)
	remove.Flags().String("url", "", "the allowed EWS URL (required)")
	remove.MarkFlagRequired("url")

	endpoint.AddCommand(add, list, pin, remove)
	return endpoint
}

// pinned describes an endpoint's pin.
func pinned(fingerprint string) string {
	if fingerprint == "" {
		return "not pinned"
	}
	return "pinned to " + fingerprint
}

func deviceCommand() *cobra.Command {
	device := &cobra.Command{Use: "device", Short: "Lists, blocks, unblocks and removes a tenant's devices"}
	list := &cobra.Command{
		Use:   "list --tenant NAME",
		Short: "Lists a tenant's devices: ENS registration and compliance",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withTenant(cmd, func(ctx context.Context, s *store.Store, t store.Tenant) error {
				devices, err := s.ListDevices(ctx, t.ID)
				if err != nil {
					return err
				}
				return table(cmd.OutOrStdout(), []string{"DEVICE", "PLATFORM", "STATE", "COMPLIANCE", "REGISTERED"}, len(devices), func(i int) []string {
					d := devices[i]
					registered := "-"
					if d.RegisteredAt != nil {
						registered = d.RegisteredAt.UTC().Format(time.RFC3339)
					}
					state := orDash(d.State)
					if d.StateReason != "" {
						state += " (" + d.StateReason + ")"
					}
					return []string{d.DeviceID, orDash(d.Platform), state, orDash(d.Compliance), registered}
				})
			})
		},
	}
	tenantFlag(list)
	device.AddCommand(list)
	for _, action := range ens.DeviceActions {
		device.AddCommand(deviceActionCommand(action))
	}
	return device
}

// deviceActionCommand runs an admin's device action (ens.DeviceActions,
// which the admin API serves too) on the database.
func deviceActionCommand(action ens.DeviceAction) *cobra.Command {
	cmd := &cobra.Command{
		Use:   action.Name + " --tenant NAME --device ID",
		Short: action.Short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			deviceID, _ := cmd.Flags().GetString("device")
			if !ens.ValidDeviceID(deviceID) {
				return fmt.Errorf("--device: a device id of %s is required", ens.DeviceIDRule)
			}
			return withTenant(cmd, func(ctx context.Context, s *store.Store, t store.Tenant) error {
				ended, err := action.Apply(ctx, s, t.ID, deviceID)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if action.State != store.Wiped {
					_, err := fmt.Fprintf(out, "device %q of tenant %q is now %s\n", deviceID, t.Name, action.State)
					return err
				}
				fmt.Fprintf(out, "device %q of tenant %q removed", deviceID, t.Name)
				if ended {
					fmt.Fprint(out, "; its mailbox had no other device, so its subscription ends")
				}
				_, err = fmt.Fprintln(out)
				return err
			})
		},
	}
	tenantFlag(cmd)
	cmd.Flags().String("device", "", "device id (required)")
	cmd.MarkFlagRequired("device")
	return cmd
}

func subscriptionCommand() *cobra.Command {
	subscription := &cobra.Command{Use: "subscription", Short: "Shows a tenant's EWS push subscriptions"}
	health := &cobra.Command{
		Use:   "health --tenant NAME",
		Short: "Counts a tenant's subscriptions by state and reason, and when Exchange was last heard from",
		Long: `
Counts only: no mailbox, nor its hash, is shown. Overdue subscriptions are
active ones that Exchange has not called back for in longer than their
status frequency; at twice it they fail as silent.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withTenant(cmd, func(ctx context.Context, s *store.Store, t store.Tenant) error {
				h, err := s.SubscriptionHealth(ctx, t.ID)
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				fmt.Fprintf(out, "tenant %q: %d active (%d overdue), %d failed, %d ended\n", t.Name, h.Active, h.Overdue, h.Failed, h.Ended)
				if h.Active > 0 {
					fmt.Fprintf(out, "Exchange last heard from: newest %s ago, oldest %s ago\n",
						h.AsOf.Sub(h.NewestHeard).Round(time.Second), h.AsOf.Sub(h.OldestHeard).Round(time.Second))
				}
				return table(out, []string{"STATE", "REASON", "COUNT"}, len(h.Groups), func(i int) []string {
					g := h.Groups[i]
					return []string{g.State, orDash(g.Reason), fmt.Sprint(g.Count)}
				})
			})
		},
	}
	tenantFlag(health)
	subscription.AddCommand(health)
	return subscription
}

// table prints rows under a header, aligned; an empty table says so.
func table(w io.Writer, header []string, n int, row func(int) []string) error {
	if n == 0 {
		_, err := fmt.Fprintln(w, "(none)")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for i := range n {
		fmt.Fprintln(tw, strings.Join(row(i), "\t"))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

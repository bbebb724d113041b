// Command graphsim runs the Microsoft Graph simulator of
// internal/sim/graphsim as a standalone server, for `make run` and manual
// testing: the identity platform's token endpoint, the Graph v1.0 mail
// calls and change notifications, and the control API under /_sim/. See
// docs/simulator.md.
//
// With -env FILE it writes, once it listens, what a script needs as
// KEY='value' lines (GRAPHSIM_URL, GRAPHSIM_GRAPH_URL, GRAPHSIM_AUTHORITY,
// GRAPHSIM_TOKEN_URL, GRAPHSIM_TENANT_ID, GRAPHSIM_CLIENT_ID), for
//
//	set -a; . .run/graphsim.env; set +a
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/ensgate/ensgate/internal/sim/graphsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "graphsim:", err)
		os.Exit(1)
	}
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	listen, certFile, keyFile, envFile string
	cfg                                graphsim.Config
}

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	var usersFile, logLevel string
	var users, clients listFlag
	fs := flag.NewFlagSet("graphsim", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8089", "address to listen on")
	fs.StringVar(&o.certFile, "tls-cert", "", "PEM certificate file; with -tls-key, serve HTTPS")
	fs.StringVar(&o.keyFile, "tls-key", "", "PEM private key file for -tls-cert")
	fs.StringVar(&usersFile, "users", "", `JSON file with an array of users: [{"address","upn","displayName","id"}]`)
	fs.Var(&users, "user", "a mailbox by its address (repeatable)")
	fs.Var(&clients, "client-id", "a registered application (client) id (repeatable; default "+graphsim.DefaultClientID+")")
	fs.StringVar(&o.cfg.TenantID, "tenant-id", "", "the directory's id, in the authority and in tokens (default: a fixed test GUID)")
	fs.DurationVar(&o.cfg.ClockScale, "clock-scale", time.Minute, "wall-clock length of one simulated minute (token lifetimes, lifecycle events, retries)")
	fs.BoolVar(&o.cfg.AllowHTTP, "allow-http", false, "accept http:// notification and lifecycle URLs (Graph requires https)")
	fs.BoolVar(&o.cfg.StrictRefreshRotation, "strict-refresh-rotation", false, "a refresh token is invalid once redeemed (Microsoft keeps old ones valid)")
	fs.StringVar(&o.cfg.ControlToken, "control-token", "", "require this X-Sim-Token on the control API (default: $GRAPHSIM_CONTROL_TOKEN)")
	fs.StringVar(&o.envFile, "env", "", "once listening, write the URLs, tenant id and client id as KEY='value' lines to this file")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.cfg.ControlToken == "" {
		// Read here rather than as the flag default, which -help would print.
		o.cfg.ControlToken = os.Getenv("GRAPHSIM_CONTROL_TOKEN")
	}
	if (o.certFile == "") != (o.keyFile == "") {
		return o, errors.New("-tls-cert and -tls-key go together")
	}
	if o.cfg.ClockScale <= 0 {
		return o, errors.New("-clock-scale must be positive")
	}
	if strings.ContainsAny(o.cfg.TenantID, "/?#'") {
		return o, errors.New("-tenant-id must be one path segment")
	}
	o.cfg.Clients = clients
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return o, fmt.Errorf("-log-level: %w", err)
	}
	o.cfg.Logger = slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))

	if usersFile != "" {
		b, err := os.ReadFile(usersFile)
		if err != nil {
			return o, err
		}
		if err := json.Unmarshal(b, &o.cfg.Users); err != nil {
			return o, fmt.Errorf("%s: %w", usersFile, err)
		}
	}
	for _, u := range users {
		o.cfg.Users = append(o.cfg.Users, graphsim.User{Address: u})
	}
	return o, nil
}

// run serves until ctx ends. ready, if set, gets the base URL once the
// listener is open.
func run(ctx context.Context, args []string, logOut io.Writer, ready func(baseURL string)) error {
	o, err := parseFlags(args, logOut)
	if err != nil {
		return err
	}
	users := o.cfg.Users
	o.cfg.Users = nil // added below, where an invalid one is an error, not New's panic
	sim := graphsim.New(o.cfg)
	defer sim.Close()
	for _, u := range users {
		if _, err := sim.AddUser(u); err != nil {
			return fmt.Errorf("user %q: %w", u.Address, err)
		}
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second}
	scheme := "http"
	if o.certFile != "" {
		cert, err := tls.LoadX509KeyPair(o.certFile, o.keyFile)
		if err != nil {
			ln.Close()
			return err
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
		scheme = "https"
	}
	base := scheme + "://" + ln.Addr().String()
	authority := base + "/" + sim.TenantID()
	clientID := graphsim.DefaultClientID
	if len(o.cfg.Clients) > 0 {
		clientID = o.cfg.Clients[0]
	}
	if o.envFile != "" {
		_ = os.Remove(o.envFile) // a stale one would announce a simulator that is not up yet
		err := writeEnv(o.envFile, map[string]string{
			"GRAPHSIM_URL":       base,
			"GRAPHSIM_GRAPH_URL": base + "/v1.0",
			"GRAPHSIM_AUTHORITY": authority,
			"GRAPHSIM_TOKEN_URL": authority + "/oauth2/v2.0/token",
			"GRAPHSIM_TENANT_ID": sim.TenantID(),
			"GRAPHSIM_CLIENT_ID": clientID,
		})
		if err != nil {
			ln.Close()
			return err
		}
		defer os.Remove(o.envFile)
	}
	o.cfg.Logger.Info("graphsim listening", "graph", base+"/v1.0", "authority", authority,
		"control", base+graphsim.ControlPrefix, "tenantId", sim.TenantID(), "clientId", clientID,
		"users", len(users), "clockScale", o.cfg.ClockScale, "allowHTTP", o.cfg.AllowHTTP)
	if ready != nil {
		ready(base)
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

// writeEnv writes KEY='value' lines (for `. file` in sh) atomically.
func writeEnv(path string, env map[string]string) error {
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		if strings.Contains(env[k], "'") {
			return fmt.Errorf("a value contains a single quote: %s", k)
		}
		fmt.Fprintf(&b, "%s='%s'\n", k, env[k])
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Command ewssim runs the Exchange (EWS) simulator of internal/sim/ewssim as a
// standalone server, for `make run`, benchmarks and manual testing. See
// docs/simulator.md.
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
	"strings"
	"syscall"
	"time"

	"github.com/ensgate/ensgate/internal/sim/ewssim"
	"github.com/jcmturner/gokrb5/v8/keytab"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, nil); err != nil {
		fmt.Fprintln(os.Stderr, "ewssim:", err)
		os.Exit(1)
	}
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

type options struct {
	listen, certFile, keyFile string
	cfg                       ewssim.Config
}

func parseFlags(args []string, out io.Writer) (options, error) {
	var o options
	var usersFile, keytabFile, logLevel string
	var users, principals listFlag
	fs := flag.NewFlagSet("ewssim", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8088", "address to listen on")
	fs.StringVar(&o.certFile, "tls-cert", "", "PEM certificate file; with -tls-key, serve HTTPS")
	fs.StringVar(&o.keyFile, "tls-key", "", "PEM private key file for -tls-cert")
	fs.StringVar(&usersFile, "users", "", `JSON file with an array of users: [{"address","password","token","displayName"}]`)
	fs.Var(&users, "user", "a user as address:password[:token] (repeatable)")
	fs.DurationVar(&o.cfg.ClockScale, "clock-scale", time.Minute, "wall-clock length of one Exchange minute (status pings, push retries)")
	fs.StringVar(&keytabFile, "keytab", "", "service keytab; enables Negotiate (Kerberos)")
	fs.StringVar(&o.cfg.SPN, "spn", "", "keytab principal to decrypt tickets with, e.g. HTTP/mail.example.com (default: the ticket's)")
	fs.BoolVar(&o.cfg.PersistKerberos, "persist-kerberos", false, "keep a Kerberos login for the rest of its connection, as IIS with authPersistNonNTLM")
	fs.Var(&principals, "principal-map", "map a Kerberos principal to a mailbox: user@REALM=address (repeatable)")
	fs.StringVar(&o.cfg.Realm, "realm", "", "Basic realm in 401 challenges (default: the request host)")
	fs.StringVar(&o.cfg.ControlToken, "control-token", "", "require this X-Sim-Token on the control API (default: $EWSSIM_CONTROL_TOKEN)")
	fs.IntVar(&o.cfg.MaxSubscriptions, "max-subscriptions", 20, "push subscriptions per user")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.cfg.ControlToken == "" {
		// Read here rather than as the flag default, which -help would print.
		o.cfg.ControlToken = os.Getenv("EWSSIM_CONTROL_TOKEN")
	}
	if (o.certFile == "") != (o.keyFile == "") {
		return o, errors.New("-tls-cert and -tls-key go together")
	}
	if o.cfg.ClockScale <= 0 {
		return o, errors.New("-clock-scale must be positive")
	}
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
		parts := strings.SplitN(u, ":", 3)
		if len(parts) < 2 {
			return o, fmt.Errorf("-user wants address:password[:token], got %d field(s)", len(parts))
		}
		user := ewssim.User{Address: parts[0], Password: parts[1]}
		if len(parts) == 3 {
			user.Token = parts[2]
		}
		o.cfg.Users = append(o.cfg.Users, user)
	}
	if len(principals) > 0 {
		o.cfg.PrincipalMap = map[string]string{}
		for _, p := range principals {
			principal, addr, ok := strings.Cut(p, "=")
			if !ok {
				return o, errors.New("-principal-map wants user@REALM=address")
			}
			o.cfg.PrincipalMap[principal] = addr
		}
	}
	if keytabFile != "" {
		kt, err := keytab.Load(keytabFile)
		if err != nil {
			return o, fmt.Errorf("-keytab: %w", err)
		}
		o.cfg.Keytab = kt
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
	o.cfg.Users = nil
	sim := ewssim.New(o.cfg)
	defer sim.Close()
	for _, u := range users {
		if err := sim.AddUser(u); err != nil {
			return err
		}
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: sim, ReadHeaderTimeout: 10 * time.Second, ConnContext: ewssim.ConnContext}
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
	o.cfg.Logger.Info("ewssim listening", "ews", base+ewssim.EWSPath, "control", base+ewssim.ControlPrefix,
		"users", len(users), "clockScale", o.cfg.ClockScale, "kerberos", o.cfg.Keytab != nil)
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

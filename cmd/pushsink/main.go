// Command pushsink runs a local APNs and a local FCM (internal/sim/apnsfake,
// internal/sim/fcmfake) on loopback and prints every push they receive as one
// JSON line on standard output. `make run` points ENSGate at it.
//
// On start it writes, into -dir, an APNs signing key, an FCM service
// account, a CA bundle that trusts both sinks, and an env file with the
// ENS_APNS_*, ENS_FCM_* and SSL_CERT_FILE values ENSGate needs:
//
//	pushsink -dir .run/pushsink &
//	set -a; . .run/pushsink/env; set +a
//
// The env file appears (atomically) once both sinks accept connections.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ensgate/ensgate/internal/sim/apnsfake"
	"github.com/ensgate/ensgate/internal/sim/fcmfake"
	"github.com/ensgate/ensgate/internal/testenv/testca"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "pushsink:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pushsink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	apnsAddr := fs.String("apns-addr", "127.0.0.1:2197", "APNs sink listen address")
	fcmAddr := fs.String("fcm-addr", "127.0.0.1:2198", "FCM sink listen address")
	dir := fs.String("dir", ".run/pushsink", "directory for the key, credentials, CA bundle and env file")
	topic := fs.String("topic", "com.example.ensgate", "ENS_APNS_TOPIC to suggest (the sink accepts any topic)")
	project := fs.String("project", "ensgate-local", "FCM project id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := os.MkdirAll(*dir, 0o700); err != nil {
		return err
	}
	envFile := filepath.Join(*dir, "env")
	_ = os.Remove(envFile) // a stale one would announce a sink that is not up yet

	ca, err := testca.NewCA()
	if err != nil {
		return err
	}
	cert, err := ca.IssueServer()
	if err != nil {
		return err
	}
	key, err := apnsfake.NewKey(*dir)
	if err != nil {
		return err
	}
	out := &printer{enc: json.NewEncoder(stdout)}
	apns, err := apnsfake.New(apnsfake.Config{
		Addr: *apnsAddr, Keys: []*apnsfake.Key{key}, TLSCert: &cert, OnPush: out.apns, Discard: true,
	})
	if err != nil {
		return fmt.Errorf("apns sink: %w", err)
	}
	defer apns.Close()
	fcm, err := fcmfake.New(fcmfake.Config{Addr: *fcmAddr, ProjectID: *project, TLSCert: &cert, OnMessage: out.fcm})
	if err != nil {
		return fmt.Errorf("fcm sink: %w", err)
	}
	defer fcm.Close()
	creds, err := fcm.WriteCredentials(*dir)
	if err != nil {
		return err
	}
	bundle, err := writeBundle(*dir, ca.PEM)
	if err != nil {
		return err
	}
	env := map[string]string{
		"ENS_APNS_URL":             apns.URL,
		"ENS_APNS_KEY_FILE":        key.Path,
		"ENS_APNS_KEY_ID":          key.ID,
		"ENS_APNS_TEAM_ID":         key.TeamID,
		"ENS_APNS_TOPIC":           *topic,
		"ENS_FCM_URL":              fcm.URL,
		"ENS_FCM_CREDENTIALS_FILE": creds,
		"SSL_CERT_FILE":            bundle,
	}
	if err := writeEnv(envFile, env); err != nil {
		return err
	}
	defer os.Remove(envFile)
	fmt.Fprintf(stderr, "pushsink: APNs at %s, FCM at %s; settings in %s\n", apns.URL, fcm.URL, envFile)
	<-ctx.Done()
	return nil
}

// printer writes one JSON line per push; the sinks call it concurrently.
type printer struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (p *printer) print(v any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.enc.Encode(v)
}

// apnsLine and fcmLine fix the field order of the printed lines.
type apnsLine struct {
	Time       time.Time `json:"time"`
	Platform   string    `json:"platform"`
	Token      string    `json:"token"`
	Topic      string    `json:"topic"`
	PushType   string    `json:"pushType"`
	Priority   int       `json:"priority"`
	CollapseID string    `json:"collapseId,omitempty"`
	Status     int       `json:"status"`
	Reason     string    `json:"reason,omitempty"`
	Payload    any       `json:"payload"`
}

type fcmLine struct {
	Time     time.Time         `json:"time"`
	Platform string            `json:"platform"`
	Token    string            `json:"token"`
	Status   int               `json:"status"`
	Error    string            `json:"error,omitempty"`
	Data     map[string]string `json:"data"`
	Android  fcmfake.Android   `json:"android"`
}

func (p *printer) apns(x apnsfake.Push) {
	p.print(apnsLine{
		Time: x.Received.UTC(), Platform: "ios", Token: x.Token, Topic: x.Topic, PushType: x.PushType,
		Priority: x.Priority, CollapseID: x.CollapseID, Status: x.Status, Reason: x.Reason, Payload: validJSON(x.Payload),
	})
}

func (p *printer) fcm(m fcmfake.Message) {
	p.print(fcmLine{
		Time: m.Received.UTC(), Platform: "android", Token: m.Token, Status: m.Status, Error: m.Error,
		Data: m.Data, Android: m.Android,
	})
}

// validJSON keeps a rejected, malformed payload printable.
func validJSON(b []byte) any {
	if json.Valid(b) {
		return json.RawMessage(b)
	}
	return string(b)
}

// writeBundle writes ca.pem and ca-bundle.pem: the sinks' CA after the
// roots the process trusts now, so SSL_CERT_FILE=ca-bundle.pem adds to the
// system roots instead of replacing them.
func writeBundle(dir string, caPEM []byte) (string, error) {
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), caPEM, 0o644); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "ca-bundle.pem")
	var bundle []byte
	for _, f := range []string{os.Getenv("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"} {
		if f == "" || f == path { // not our own previous bundle, with an old CA
			continue
		}
		if b, err := os.ReadFile(f); err == nil {
			bundle = append(b, '\n')
			break
		}
	}
	return path, os.WriteFile(path, append(bundle, caPEM...), 0o644)
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
			return errors.New("pushsink: a path contains a single quote: " + env[k])
		}
		fmt.Fprintf(&b, "%s='%s'\n", k, env[k])
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

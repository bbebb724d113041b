// Command ensdemo plays a mail app and a sender for the `make run` demo: it
// registers a device with ENSGate through the device API (key, JWE
// credentials, registration) for the Exchange simulator's mailbox, then
// delivers a mail into it; with -graph-sim it does the same for a mailbox
// of the Microsoft Graph simulator (Exchange Online): a second device
// registers with "source": "graph" and a refresh token the simulator
// minted. The push sink prints each mail's push.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ensgate/ensgate/internal/sim/deviceclient"
	"github.com/ensgate/ensgate/internal/sim/graphsim"
)

// DemoPushToken is the scripted iPhone's APNs device token (hex, as Apple's).
const DemoPushToken = "0e4d0ca7e7d15a2cd9d1b1e8f0e6c3a1d2b3c4d5e6f708192a3b4c5d6e7f8091"

// DemoGraphPushToken is the scripted iPad's, whose account is the Graph
// simulator's (Exchange Online) mailbox.
const DemoGraphPushToken = "7a1c3e5f7092b4d6f8e0a2c4e6f8091b3d5f7a9c1e3f5a7c9e1b3d5f7a9c1e3f"

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ensdemo:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	runDir := cmp.Or(os.Getenv("ENS_RUN_DIR"), ".run")
	fs := flag.NewFlagSet("ensdemo", flag.ContinueOnError)
	api := fs.String("api", "http://127.0.0.1:8080/api/ens", "ENSGate's device API")
	token := fs.String("token", os.Getenv("ENS_DEMO_TOKEN"), "tenant API token (default $ENS_DEMO_TOKEN)")
	sim := fs.String("sim", "http://127.0.0.1:8081", "Exchange simulator base URL")
	ewsURL := fs.String("ews-url", "http://127.0.0.1:8081/EWS/Exchange.asmx", "the EWS URL the device registers")
	user := fs.String("user", "demo@contoso.test", "mailbox address")
	password := fs.String("password", "demo-password", "mailbox password")
	level := fs.Int("level", 0, "notification level 0..4")
	secretFile := fs.String("secret-file", filepath.Join(runDir, "demo-device.secret"),
		"where the device keeps its deviceSecret between runs, as an app does")
	graphSim := fs.String("graph-sim", "", "Graph simulator base URL; empty: no Graph mailbox")
	graphUser := fs.String("graph-user", "demo@fabrikam.test", "the Graph simulator's mailbox address")
	graphClient := fs.String("graph-client-id", graphsim.DefaultClientID, "the mail app's client id the refresh token is bound to")
	graphURL := fs.String("graph-url", "", "the Graph root the Graph device names; empty: none, the tenant's only one (as an app sends it)")
	graphSecretFile := fs.String("graph-secret-file", filepath.Join(runDir, "demo-graph-device.secret"),
		"where the Graph device keeps its deviceSecret between runs")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token == "" {
		return fmt.Errorf("no tenant token: pass -token or set ENS_DEMO_TOKEN")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	devices := &deviceclient.Client{BaseURL: *api, Token: *token}

	// The on-premises mailbox (EWS, Basic).
	err := register(ctx, out, devices, deviceclient.Device{
		ID: "demo-iphone", Email: *user, Platform: "ios", PushToken: DemoPushToken,
		EWSURL: *ewsURL, AuthType: "basic", NotificationLevel: *level,
		Credentials: map[string]string{"username": *user, "password": *password},
	}, *secretFile)
	if err != nil {
		return err
	}
	mail := map[string]string{"from": "carol@fabrikam.test", "fromName": "Carol from Fabrikam",
		"subject": "Welcome to ENSGate", "body": "This mail was delivered by the simulator; its push is printed below."}
	if err := simPost(ctx, *sim+"/_sim/users/"+url.PathEscape(*user)+"/mail", os.Getenv("EWSSIM_CONTROL_TOKEN"), mail, nil); err != nil {
		return fmt.Errorf("delivering the mail: %w", err)
	}
	fmt.Fprintf(out, "ensdemo: mail delivered to the simulated Inbox; the push sink prints the push\n")
	if *graphSim == "" {
		return nil
	}

	// The Exchange Online mailbox (Graph): the app signed the user in and
	// holds a refresh token for its client id; the simulator mints one.
	ctlToken := os.Getenv("GRAPHSIM_CONTROL_TOKEN")
	var minted struct {
		RefreshToken string `json:"refreshToken"`
	}
	if err := simPost(ctx, *graphSim+"/_sim/users/"+url.PathEscape(*graphUser)+"/refresh-tokens", ctlToken,
		map[string]string{"clientId": *graphClient}, &minted); err != nil {
		return fmt.Errorf("getting a refresh token from the Graph simulator: %w", err)
	}
	err = register(ctx, out, devices, deviceclient.Device{
		ID: "demo-ipad", Email: *graphUser, Platform: "ios", PushToken: DemoGraphPushToken,
		Source: "graph", EWSURL: *graphURL, AuthType: "oauth", NotificationLevel: *level,
		Credentials: map[string]string{"refreshToken": minted.RefreshToken},
	}, *graphSecretFile)
	if err != nil {
		return err
	}
	mail = map[string]string{"from": "dave@northwind.test", "fromName": "Dave from Northwind",
		"subject": "Hello from Exchange Online", "body": "This mail was delivered by the Graph simulator; its push is printed below."}
	if err := simPost(ctx, *graphSim+"/_sim/users/"+url.PathEscape(*graphUser)+"/mail", ctlToken, mail, nil); err != nil {
		return fmt.Errorf("delivering the Graph mail: %w", err)
	}
	fmt.Fprintf(out, "ensdemo: mail delivered to the Graph simulator's Inbox; the push sink prints the push\n")
	return nil
}

// register registers d, keeping its deviceSecret in secretFile: a device
// id already registered needs its secret to register again.
func register(ctx context.Context, out io.Writer, devices *deviceclient.Client, d deviceclient.Device, secretFile string) error {
	if secret, err := os.ReadFile(secretFile); err == nil {
		devices.SetSecret(d.ID, strings.TrimSpace(string(secret)))
	}
	subID, err := devices.Register(ctx, d)
	if err != nil {
		return fmt.Errorf("registering the device %s: %w", d.ID, err)
	}
	os.MkdirAll(filepath.Dir(secretFile), 0o700)
	if err := os.WriteFile(secretFile, []byte(devices.Secret(d.ID)+"\n"), 0o600); err != nil {
		return fmt.Errorf("keeping the device secret: %w", err)
	}
	st, err := devices.Status(ctx, d.ID)
	if err != nil {
		return fmt.Errorf("asking the device's status: %w", err)
	}
	fmt.Fprintf(out, "ensdemo: device %s registered for %s (source %s, subscription %s, status %s); its deviceSecret is kept in %s\n",
		d.ID, d.Email, cmp.Or(d.Source, "ews"), subID, st.Subscription, secretFile)
	return nil
}

// simPost POSTs body as JSON to a simulator's control API and decodes a
// JSON answer into answer (if not nil).
func simPost(ctx context.Context, u, ctlToken string, body, answer any) error {
	data, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, "POST", u, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if ctlToken != "" {
		req.Header.Set("X-Sim-Token", ctlToken)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("HTTP %d %s", resp.StatusCode, b)
	}
	if answer != nil {
		return json.NewDecoder(resp.Body).Decode(answer)
	}
	return nil
}

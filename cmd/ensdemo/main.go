// Command ensdemo plays a mail app and a sender for the `make run` demo: it
// registers a device with ENSGate through the device API (key, JWE
// credentials, registration), then delivers a mail into the Exchange
// simulator, whose push notification the push sink prints.
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
)

// DemoPushToken is the scripted iPhone's APNs device token (hex, as Apple's).
const DemoPushToken = "0e4d0ca7e7d15a2cd9d1b1e8f0e6c3a1d2b3c4d5e6f708192a3b4c5d6e7f8091"

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ensdemo:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("ensdemo", flag.ContinueOnError)
	api := fs.String("api", "http://127.0.0.1:8080/api/ens", "ENSGate's device API")
	token := fs.String("token", os.Getenv("ENS_DEMO_TOKEN"), "tenant API token (default $ENS_DEMO_TOKEN)")
	sim := fs.String("sim", "http://127.0.0.1:8081", "Exchange simulator base URL")
	ewsURL := fs.String("ews-url", "http://127.0.0.1:8081/EWS/Exchange.asmx", "the EWS URL the device registers")
	user := fs.String("user", "demo@contoso.test", "mailbox address")
	password := fs.String("password", "demo-password", "mailbox password")
	level := fs.Int("level", 0, "notification level 0..4")
	secretFile := fs.String("secret-file", filepath.Join(cmp.Or(os.Getenv("ENS_RUN_DIR"), ".run"), "demo-device.secret"),
		"where the device keeps its deviceSecret between runs, as an app does")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *token == "" {
		return fmt.Errorf("no tenant token: pass -token or set ENS_DEMO_TOKEN")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	devices := &deviceclient.Client{BaseURL: *api, Token: *token}
	// A device id already registered needs its secret to register again.
	if secret, err := os.ReadFile(*secretFile); err == nil {
		devices.SetSecret("demo-iphone", strings.TrimSpace(string(secret)))
	}
	subID, err := devices.Register(ctx, deviceclient.Device{
		ID: "demo-iphone", Email: *user, Platform: "ios", PushToken: DemoPushToken,
		EWSURL: *ewsURL, AuthType: "basic", NotificationLevel: *level,
		Credentials: map[string]string{"username": *user, "password": *password},
	})
	if err != nil {
		return fmt.Errorf("registering the device: %w", err)
	}
	os.MkdirAll(filepath.Dir(*secretFile), 0o700)
	if err := os.WriteFile(*secretFile, []byte(devices.Secret("demo-iphone")+"\n"), 0o600); err != nil {
		return fmt.Errorf("keeping the device secret: %w", err)
	}
	st, err := devices.Status(ctx, "demo-iphone")
	if err != nil {
		return fmt.Errorf("asking the device's status: %w", err)
	}
	fmt.Fprintf(out, "ensdemo: device demo-iphone registered (subscription %s, status %s); its deviceSecret is kept in %s\n",
		subID, st.Subscription, *secretFile)

	mail := map[string]string{"from": "carol@fabrikam.test", "fromName": "Carol from Fabrikam",
		"subject": "Welcome to ENSGate", "body": "This mail was delivered by the simulator; its push is printed below."}
	data, _ := json.Marshal(mail)
	req, _ := http.NewRequestWithContext(ctx, "POST", *sim+"/_sim/users/"+url.PathEscape(*user)+"/mail", bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/json")
	if t := os.Getenv("EWSSIM_CONTROL_TOKEN"); t != "" {
		req.Header.Set("X-Sim-Token", t)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("delivering the mail: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("delivering the mail: HTTP %d %s", resp.StatusCode, body)
	}
	fmt.Fprintf(out, "ensdemo: mail delivered to the simulated Inbox; the push sink prints the push\n")
	return nil
}

package graphsim

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRefreshTokenRotates(t *testing.T) {
	ts := frozen(t)
	rt, err := ts.MintRefreshToken(alice, DefaultClientID)
	if err != nil {
		t.Fatal(err)
	}
	out, status := redeem(t, ts, DefaultClientID, rt, "https://graph.microsoft.com/Mail.Read offline_access")
	if status != 200 {
		t.Fatalf("redeem: %d %v", status, out)
	}
	if out["token_type"] != "Bearer" || out["expires_in"] != float64(3600) || out["access_token"] == "" {
		t.Fatalf("answer %v", out)
	}
	rt2, _ := out["refresh_token"].(string)
	if rt2 == "" || rt2 == rt {
		t.Fatalf("no new refresh token: %q", rt2)
	}
	if !strings.Contains(out["scope"].(string), "https://graph.microsoft.com/mail.read") {
		t.Errorf("scope %q", out["scope"])
	}
	// Microsoft does not revoke the old refresh token when it is used.
	if out, status := redeem(t, ts, DefaultClientID, rt, ""); status != 200 {
		t.Errorf("old refresh token refused: %d %v", status, out)
	}
	// The access token works for an hour of sim time, then is expired.
	at := out["access_token"].(string)
	if resp, v := call(t, ts, at, "GET", "/me", nil); resp.StatusCode != 200 || v["mail"] != alice {
		t.Fatalf("/me: %d %v", resp.StatusCode, v)
	}
	ts.Advance(59 * time.Minute)
	if resp, _ := call(t, ts, at, "GET", "/me", nil); resp.StatusCode != 200 {
		t.Fatalf("/me after 59 min: %d", resp.StatusCode)
	}
	ts.Advance(time.Minute)
	resp, v := call(t, ts, at, "GET", "/me", nil)
	if resp.StatusCode != 401 || errCode(v) != "InvalidAuthenticationToken" || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("expired token: %d %v", resp.StatusCode, v)
	}
	// The rotated token gets a fresh one.
	out, status = redeem(t, ts, DefaultClientID, rt2, "")
	if status != 200 {
		t.Fatalf("redeem rotated: %d %v", status, out)
	}
	if resp, _ := call(t, ts, out["access_token"].(string), "GET", "/me", nil); resp.StatusCode != 200 {
		t.Fatalf("new access token: %d", resp.StatusCode)
	}
}

func TestStrictRotationRefusesARedeemedToken(t *testing.T) {
	ts := frozen(t, func(c *Config) { c.StrictRefreshRotation = true })
	rt, _ := ts.MintRefreshToken(alice, DefaultClientID)
	if _, status := redeem(t, ts, DefaultClientID, rt, ""); status != 200 {
		t.Fatal(status)
	}
	out, status := redeem(t, ts, DefaultClientID, rt, "")
	if status != 400 || out["error"] != "invalid_grant" {
		t.Fatalf("reuse: %d %v", status, out)
	}
}

func TestTokenErrors(t *testing.T) {
	ts := frozen(t, func(c *Config) { c.Clients = []string{DefaultClientID, "other-app"} })
	rt, _ := ts.MintRefreshToken(alice, DefaultClientID)
	bobRT, _ := ts.MintRefreshToken(bob, DefaultClientID)

	check := func(name string, out map[string]any, status int, wantErr string, wantCode float64) {
		t.Helper()
		codes, _ := out["error_codes"].([]any)
		desc, _ := out["error_description"].(string)
		if status != 400 || out["error"] != wantErr || len(codes) != 1 || codes[0] != wantCode ||
			!strings.HasPrefix(desc, "AADSTS") || out["trace_id"] == nil || out["correlation_id"] == nil || out["timestamp"] == nil {
			t.Errorf("%s: %d %v", name, status, out)
		}
	}
	out, status := redeem(t, ts, "unknown-app", rt, "")
	check("unknown client", out, status, "unauthorized_client", 700016)
	out, status = redeem(t, ts, "other-app", rt, "")
	check("another client's token", out, status, "invalid_grant", 70000)
	out, status = redeem(t, ts, DefaultClientID, "garbage", "")
	check("unknown token", out, status, "invalid_grant", 9002313)
	out, status = redeem(t, ts, DefaultClientID, rt, "https://graph.microsoft.com/Mail.Send")
	check("scope not granted", out, status, "invalid_grant", 65001)

	if err := ts.RevokeRefreshTokens(alice); err != nil {
		t.Fatal(err)
	}
	out, status = redeem(t, ts, DefaultClientID, rt, "")
	check("revoked", out, status, "invalid_grant", 50173)
	// Bob's tokens are untouched.
	if _, status := redeem(t, ts, DefaultClientID, bobRT, ""); status != 200 {
		t.Errorf("bob after alice's revocation: %d", status)
	}
	// Inactivity: 90 days.
	rt3, _ := ts.MintRefreshToken(bob, DefaultClientID)
	ts.Advance(90 * 24 * time.Hour)
	out, status = redeem(t, ts, DefaultClientID, rt3, "")
	check("expired", out, status, "invalid_grant", 700082)
	if c := ts.Counters(); c.TokenErrors["invalid_grant"] != 5 || c.TokenErrors["unauthorized_client"] != 1 {
		t.Errorf("counters %v", c.TokenErrors)
	}

	// Protocol errors.
	resp, err := http.Get(ts.TokenURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("GET token endpoint: %d", resp.StatusCode)
	}
}

func TestExpireAccessTokensAndMissingAuth(t *testing.T) {
	ts := frozen(t)
	at := getToken(t, ts, alice)
	if resp, v := call(t, ts, "", "GET", "/me", nil); resp.StatusCode != 401 || errCode(v) != "InvalidAuthenticationToken" {
		t.Fatalf("no token: %d %v", resp.StatusCode, v)
	}
	if err := ts.ExpireAccessTokens(alice); err != nil {
		t.Fatal(err)
	}
	if resp, _ := call(t, ts, at, "GET", "/me", nil); resp.StatusCode != 401 {
		t.Fatalf("expired: %d", resp.StatusCode)
	}
}

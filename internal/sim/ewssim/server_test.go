package ewssim

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

func TestStartTLS(t *testing.T) {
	ts := StartTLS(t, Config{Users: testUsers()})
	if !strings.HasPrefix(ts.EWSURL, "https://") {
		t.Fatalf("EWSURL %s", ts.EWSURL)
	}
	req, _ := http.NewRequest(http.MethodPost, ts.EWSURL, bytes.NewReader(soapRequest(getInboxOp)))
	req.SetBasicAuth(alice, alicePW)
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HTTP %d", resp.StatusCode)
	}
}

func TestNewRejectsInvalidSeedUsers(t *testing.T) {
	for _, users := range [][]User{
		{{Address: "not-an-address"}},
		{{Address: alice}, {Address: "ALICE@example.com"}},
		{{Address: alice, Token: "t"}, {Address: bob, Token: "t"}},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New accepted %+v", users)
				}
			}()
			New(Config{Users: users}).Close()
		}()
	}
}

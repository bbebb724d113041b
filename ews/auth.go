package ews

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
)

// Auth authenticates a call. BasicAuth and BearerAuth implement it. A client
// certificate is not an Auth: it belongs to the TLS connection, so it is set
// per Client (Config.Certificate).
//
// Auth values and Accounts print as "redacted" with every fmt verb and in
// log/slog, so a stray log line cannot leak a credential or an address.
type Auth interface {
	authorize(*http.Request)
}

// BasicAuth is HTTP Basic authentication.
type BasicAuth struct {
	Username string
	Password string
}

func (a BasicAuth) authorize(r *http.Request) { r.SetBasicAuth(a.Username, a.Password) }

func (BasicAuth) Format(f fmt.State, _ rune) { io.WriteString(f, "ews.BasicAuth(redacted)") }
func (BasicAuth) LogValue() slog.Value       { return slog.StringValue("redacted") }

// BearerAuth is an OAuth 2.0 access token.
type BearerAuth struct {
	Token string
}

func (a BearerAuth) authorize(r *http.Request) { r.Header.Set("Authorization", "Bearer "+a.Token) }

func (BearerAuth) Format(f fmt.State, _ rune) { io.WriteString(f, "ews.BearerAuth(redacted)") }
func (BearerAuth) LogValue() slog.Value       { return slog.StringValue("redacted") }

// Account is whose mailbox a call acts on and how it authenticates. One
// Client serves many Accounts.
type Account struct {
	// Mailbox is the primary SMTP address. It is sent as X-AnchorMailbox,
	// which Exchange (Online especially) uses to route the request to the
	// server holding the mailbox.
	Mailbox string
	// Auth is nil for a Client that authenticates with its certificate.
	Auth Auth
}

func (Account) Format(f fmt.State, _ rune) { io.WriteString(f, "ews.Account(redacted)") }
func (Account) LogValue() slog.Value       { return slog.StringValue("redacted") }

package caddymodule

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/ensgate/ensgate/ens"
)

func init() {
	caddy.RegisterModule(ENSHandler{})
	httpcaddyfile.RegisterHandlerDirective("ens", parseENSHandler)
	httpcaddyfile.RegisterDirectiveOrder("ens", httpcaddyfile.Before, "reverse_proxy")
}

// ENSHandler serves the device API and Exchange's webhook (`/api/ens/...`),
// using the settings and database of the `ens` app.
//
// Caddyfile: `ens`, usually inside `handle /api/ens/*`, optionally with
// `{ admin_api on|off|only }`.
type ENSHandler struct {
	// Whether this handler serves the admin API (/api/ens/admin/…): "on"
	// (default) beside the device API, "off" not at all, "only" alone, so
	// that it can have a listener of its own (docs/configuration.md).
	AdminAPI string `json:"admin_api,omitempty"`

	handler http.Handler
	access  accessLog
}

// CaddyModule returns the Caddy module information.
func (ENSHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ens",
		New: func() caddy.Module { return new(ENSHandler) },
	}
}

// Provision loads the ens app, which provisions it if this is its first use.
func (h *ENSHandler) Provision(ctx caddy.Context) error {
	mode, err := ens.ParseAdminAPI(h.AdminAPI)
	if err != nil {
		return fmt.Errorf("ens handler: %w", err)
	}
	app, err := ctx.App("ens")
	if err != nil {
		return fmt.Errorf("ens handler needs the ens app (the global `ens` option): %w", err)
	}
	a := app.(*App)
	if mode == ens.AdminOnly && a.adminToken == "" {
		ctx.Logger().Warn("admin_api only: the admin API is off without the ens app's admin_token (set ENS_ADMIN_TOKEN); this handler answers 404")
	}
	h.handler = ens.ServeAdminAPI(a.handler, mode)
	h.access = newAccessLog(ctx)
	return nil
}

// ServeHTTP answers every request below /api/ens itself and passes the rest on.
func (h *ENSHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !isUnder(r.URL.Path, ens.BasePath) {
		return next.ServeHTTP(w, r)
	}
	return h.access.serve(w, r, func(w http.ResponseWriter, r *http.Request) error {
		h.handler.ServeHTTP(w, r)
		return nil
	})
}

func isUnder(path, base string) bool {
	return path == base || strings.HasPrefix(path, base+"/")
}

// UnmarshalCaddyfile parses `ens`, which takes no arguments:
//
//	ens {
//		admin_api on|off|only
//	}
func (h *ENSHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "admin_api":
			if err := oneArg(d, &h.AdminAPI); err != nil {
				return err
			}
			if _, err := ens.ParseAdminAPI(h.AdminAPI); err != nil {
				return d.Err(err.Error())
			}
		default:
			return d.Errf("unrecognized ens subdirective %q (known: admin_api)", d.Val())
		}
	}
	return nil
}

func parseENSHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m ENSHandler
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return &m, err
}

// Interface guards
var (
	_ caddy.Provisioner           = (*ENSHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*ENSHandler)(nil)
	_ caddyfile.Unmarshaler       = (*ENSHandler)(nil)
)

// caddyClientIP is the client address Caddy found for r, which honours the
// server's trusted_proxies: ENS's device API rate limits are keyed by it.
func caddyClientIP(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	return ip
}

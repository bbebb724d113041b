package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(EWSProxy{})
	httpcaddyfile.RegisterHandlerDirective("ews_proxy", parseEWSProxy)
	httpcaddyfile.RegisterDirectiveOrder("ews_proxy", httpcaddyfile.Before, "reverse_proxy")
}

// EWSProxy fronts Exchange Web Services with Caddy's own reverse_proxy.
//
// Caddyfile: `ews_proxy [<matcher>] <upstream> { <reverse_proxy subdirectives> }`.
type EWSProxy struct {
	// The reverse_proxy handler that reaches Exchange; all of its options
	// (upstreams, transport TLS, timeouts) apply.
	ProxyRaw json.RawMessage `json:"proxy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	proxy *reverseproxy.Handler
}

// CaddyModule returns the Caddy module information.
func (EWSProxy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ews_proxy",
		New: func() caddy.Module { return new(EWSProxy) },
	}
}

// Provision loads the embedded reverse_proxy; Caddy cleans it up with us.
func (h *EWSProxy) Provision(ctx caddy.Context) error {
	if h.ProxyRaw == nil {
		return fmt.Errorf("ews_proxy: proxy: an Exchange upstream is required, e.g. `ews_proxy https://exchange.example.com`")
	}
	mod, err := ctx.LoadModule(h, "ProxyRaw")
	if err != nil {
		return fmt.Errorf("ews_proxy: proxy: %w", err)
	}
	rp, ok := mod.(*reverseproxy.Handler)
	if !ok {
		return fmt.Errorf("ews_proxy: proxy: must be a reverse_proxy handler, not %T", mod)
	}
	h.proxy = rp
	return nil
}

func (h *EWSProxy) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.proxy.ServeHTTP(w, r, next)
}

// parseEWSProxy reads the reverse_proxy syntax after the directive name.
func parseEWSProxy(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	if len(rp.Upstreams) == 0 && rp.DynamicUpstreamsRaw == nil {
		return nil, h.Err("ews_proxy needs the Exchange upstream, e.g. `ews_proxy https://exchange.example.com`")
	}
	return &EWSProxy{ProxyRaw: caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil)}, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*EWSProxy)(nil)
	_ caddyhttp.MiddlewareHandler = (*EWSProxy)(nil)
)

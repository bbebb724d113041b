package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"go.uber.org/zap"

	"github.com/ensgate/ensgate/ewsproxy"
	"github.com/ensgate/ensgate/kcd"
)

func init() {
	caddy.RegisterModule(EWSProxy{})
	httpcaddyfile.RegisterHandlerDirective("ews_proxy", parseEWSProxy)
	httpcaddyfile.RegisterDirectiveOrder("ews_proxy", httpcaddyfile.Before, "reverse_proxy")
}

// EWSProxy fronts Exchange Web Services with Caddy's own reverse_proxy,
// letting only compliant devices through and hiding authentication schemes
// clients cannot complete.
//
// Caddyfile:
//
//	ews_proxy [<matcher>] <upstream> {
//		device_id_header <header>        # where devices name themselves
//		device_id_query  <parameter>
//		unknown_devices  allow|deny      # default deny
//		remove_unsupported_auth on|off   # default on
//		kerberos { ... }                 # KCD for certificate clients, see Kerberos
//		<reverse_proxy subdirectives>
//	}
type EWSProxy struct {
	// The reverse_proxy handler that reaches Exchange; all of its options
	// (upstreams, transport TLS, timeouts) apply.
	ProxyRaw json.RawMessage `json:"proxy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`
	// Request header in which devices send their id.
	DeviceIDHeader string `json:"device_id_header,omitempty"`
	// Query parameter in which devices send their id.
	DeviceIDQuery string `json:"device_id_query,omitempty"`
	// "allow" or "deny" (default) devices without a compliance state.
	UnknownDevices string `json:"unknown_devices,omitempty"`
	// Remove NTLM/Negotiate challenges and refuse NTLM (default true).
	RemoveUnsupportedAuth *bool `json:"remove_unsupported_auth,omitempty"`
	// Kerberos Constrained Delegation for clients with a certificate that
	// the site's tls client_auth verified.
	Kerberos *Kerberos `json:"kerberos,omitempty"`

	proxy *reverseproxy.Handler
	// boundProxy is a second instance of the same reverse_proxy, with its
	// own upstream connections, for requests that authenticate with
	// Kerberos (see ewsproxy.Forward).
	boundProxy  *reverseproxy.Handler
	guard       *ewsproxy.Guard
	kerberosKey string // the shared delegator this config holds, if any
}

// CaddyModule returns the Caddy module information.
func (EWSProxy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ews_proxy",
		New: func() caddy.Module { return new(EWSProxy) },
	}
}

// Provision loads the embedded reverse_proxy twice, for ordinary and for
// connection-bound (Kerberos) requests (Caddy cleans both up with us), and
// takes the ens app's compliance cache and attestation secret.
func (h *EWSProxy) Provision(ctx caddy.Context) error {
	if h.ProxyRaw == nil {
		return fmt.Errorf("ews_proxy: proxy: an Exchange upstream is required, e.g. `ews_proxy https://exchange.example.com`")
	}
	if h.UnknownDevices != "" && h.UnknownDevices != "allow" && h.UnknownDevices != "deny" {
		return fmt.Errorf("ews_proxy: unknown_devices: %q must be allow or deny", h.UnknownDevices)
	}
	boundRaw := proxyConfig{ProxyRaw: slices.Clone(h.ProxyRaw)} // LoadModule consumes the original
	var err error
	if h.proxy, err = loadReverseProxy(ctx, h); err != nil {
		return err
	}
	if h.boundProxy, err = loadReverseProxy(ctx, &boundRaw); err != nil {
		return err
	}
	appModule, err := ctx.App("ens")
	if err != nil {
		return fmt.Errorf("ews_proxy needs the ens app (the global `ens` option) for device compliance: %w", err)
	}
	app := appModule.(*App)
	if err := ewsproxy.Register(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("ews_proxy: metrics: %w", err)
	}
	// A typed nil in the interface would count as a delegator.
	var delegator ewsproxy.Delegator
	if h.Kerberos != nil {
		if err := kcd.Register(ctx.GetMetricsRegistry()); err != nil {
			return fmt.Errorf("ews_proxy: kerberos metrics: %w", err)
		}
		d, key, err := h.Kerberos.delegator(ctx.Slogger())
		if err != nil {
			return err
		}
		delegator, h.kerberosKey = d, key
	}
	h.guard = ewsproxy.NewGuard(ewsproxy.Config{
		Delegator:             delegator,
		Annotate:              annotateAccessLog,
		DeviceHeader:          h.DeviceIDHeader,
		DeviceQuery:           h.DeviceIDQuery,
		AllowUnknown:          h.UnknownDevices == "allow",
		RemoveUnsupportedAuth: h.RemoveUnsupportedAuth == nil || *h.RemoveUnsupportedAuth,
		Attestation:           ewsproxy.Attestation{Secret: app.proxySecret},
	}, app.compliance, ctx.Slogger())
	return nil
}

// proxyConfig holds a reverse_proxy configuration for LoadModule.
type proxyConfig struct {
	ProxyRaw json.RawMessage `json:"proxy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`
}

// loadReverseProxy loads the ProxyRaw field of holder (EWSProxy or
// proxyConfig), which must configure a reverse_proxy.
func loadReverseProxy(ctx caddy.Context, holder any) (*reverseproxy.Handler, error) {
	mod, err := ctx.LoadModule(holder, "ProxyRaw")
	if err != nil {
		return nil, fmt.Errorf("ews_proxy: proxy: %w", err)
	}
	rp, ok := mod.(*reverseproxy.Handler)
	if !ok {
		return nil, fmt.Errorf("ews_proxy: proxy: must be a reverse_proxy handler, not %T", mod)
	}
	return rp, nil
}

// annotateAccessLog adds the EWS operation and the proxy's decision to
// Caddy's access log entry for the request.
func annotateAccessLog(r *http.Request, operation, decision string) {
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(zap.String("ews_operation", operation))
		extra.Set(zap.String("ews_decision", decision))
	}
}

// Cleanup gives back this config's reference to the shared delegator.
func (h *EWSProxy) Cleanup() error {
	if h.kerberosKey == "" {
		return nil
	}
	_, err := delegators.Delete(h.kerberosKey)
	return err
}

func (h *EWSProxy) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.guard.Serve(w, r, func(w http.ResponseWriter, r *http.Request, connectionBound bool) error {
		if connectionBound {
			return h.boundProxy.ServeHTTP(w, r, next)
		}
		return h.proxy.ServeHTTP(w, r, next)
	})
}

// parseEWSProxy takes our subdirectives out of the block and hands the
// rest, which is reverse_proxy's syntax, to reverse_proxy's parser (the
// way Caddy's forward_auth does).
func parseEWSProxy(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(EWSProxy)
	d := h.Dispenser
	for d.Next() {
		for d.NextBlock(0) {
			if d.Nesting() != 1 {
				continue // a reverse_proxy sub-block's own lines
			}
			var dst *string
			switch d.Val() {
			case "device_id_header":
				dst = &p.DeviceIDHeader
			case "device_id_query":
				dst = &p.DeviceIDQuery
			case "unknown_devices":
				dst = &p.UnknownDevices
			case "kerberos":
				// Parsed from its own copy, then removed so that
				// reverse_proxy's parser never sees it.
				seg := d.NextSegment()
				kd := caddyfile.NewDispenser(seg)
				kd.Next()
				k, err := parseKerberos(kd)
				if err != nil {
					return nil, err
				}
				p.Kerberos = k
				d.DeleteN(len(seg))
				continue
			case "remove_unsupported_auth":
				var v string
				if err := oneArg(d, &v); err != nil {
					return nil, err
				}
				if v != "on" && v != "off" {
					return nil, d.Errf("remove_unsupported_auth %q: must be on or off", v)
				}
				on := v == "on"
				p.RemoveUnsupportedAuth = &on
				d.DeleteN(2)
				continue
			default:
				continue
			}
			if err := oneArg(d, dst); err != nil {
				return nil, err
			}
			d.DeleteN(2)
		}
	}
	d.Reset()
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	if len(rp.Upstreams) == 0 && rp.DynamicUpstreamsRaw == nil {
		return nil, h.Err("ews_proxy needs the Exchange upstream, e.g. `ews_proxy https://exchange.example.com`")
	}
	p.ProxyRaw = caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil)
	return p, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*EWSProxy)(nil)
	_ caddy.CleanerUpper          = (*EWSProxy)(nil)
	_ caddyhttp.MiddlewareHandler = (*EWSProxy)(nil)
)

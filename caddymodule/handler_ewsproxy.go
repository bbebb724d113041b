package caddymodule

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/ensgate/ensgate/attest"
	"github.com/ensgate/ensgate/compliance"
	"github.com/ensgate/ensgate/ewsproxy"
	"github.com/ensgate/ensgate/kcd"
	"github.com/ensgate/ensgate/store"
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
//		tenant           <name>          # whose devices these are; default: any tenant
//		database_url     <url>           # default: the ens app's
//		proxy_secret     <secret>        # default: the ens app's
//		max_request_body <size>          # default 64MiB, Exchange's own EWS limit
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
	// The tenant (its name) whose devices use this route: a device's state
	// in other tenants does not matter. Empty: any tenant, and a device id
	// known in several tenants gets the most restrictive of its states.
	Tenant string `json:"tenant,omitempty"`
	// Larger request bodies get 413 without reaching Exchange (bytes;
	// default DefaultMaxRequestBody).
	MaxRequestBody int64 `json:"max_request_body,omitempty"`
	// Remove NTLM/Negotiate challenges and refuse NTLM (default true).
	RemoveUnsupportedAuth *bool `json:"remove_unsupported_auth,omitempty"`
	// Kerberos Constrained Delegation for clients with a certificate that
	// the site's tls client_auth verified.
	Kerberos *Kerberos `json:"kerberos,omitempty"`
	// PostgreSQL connection string of the compliance states (and of the
	// tenant); default: the ens app's database_url.
	DatabaseURL string `json:"database_url,omitempty"`
	// Verifies the device lists ENS signs (at least 32 characters);
	// default: the ens app's proxy_secret. Without either, signed lists
	// are refused.
	ProxySecret string `json:"proxy_secret,omitempty"`

	proxy *reverseproxy.Handler
	// boundProxy is a second instance of the same reverse_proxy, with its
	// own upstream connections, for requests that authenticate with
	// Kerberos (see ewsproxy.Forward).
	boundProxy  *reverseproxy.Handler
	guard       *ewsproxy.Guard
	kerberosKey string // the shared delegator this config holds, if any
	databaseURL string
	compliance  *compliance.Cache // shared (pool.go)
	store       *store.Store      // shared, held only to look up the tenant
	access      accessLog
}

// DefaultMaxRequestBody is Exchange's own limit for EWS requests (IIS
// maxAllowedContentLength and WCF maxReceivedMessageSize in EWS's
// web.config, 64 MiB), so the proxy refuses nothing Exchange would take.
const DefaultMaxRequestBody = 64 << 20

// tenantLookupWait bounds the look-up of the route's tenant at config
// load; if the database does not answer by then, the first request that
// needs the tenant looks it up.
const tenantLookupWait = 3 * time.Second

// CaddyModule returns the Caddy module information.
func (EWSProxy) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ews_proxy",
		New: func() caddy.Module { return new(EWSProxy) },
	}
}

// Provision loads the embedded reverse_proxy twice, for ordinary and for
// connection-bound (Kerberos) requests (Caddy cleans both up with us), and
// takes the database's shared compliance cache.
func (h *EWSProxy) Provision(ctx caddy.Context) error {
	if h.ProxyRaw == nil {
		return fmt.Errorf("ews_proxy: proxy: an Exchange upstream is required, e.g. `ews_proxy https://exchange.example.com`")
	}
	if h.UnknownDevices != "" && h.UnknownDevices != "allow" && h.UnknownDevices != "deny" {
		return fmt.Errorf("ews_proxy: unknown_devices: %q must be allow or deny", h.UnknownDevices)
	}
	if h.MaxRequestBody < 0 {
		return fmt.Errorf("ews_proxy: max_request_body: %d must be positive (bytes)", h.MaxRequestBody)
	}
	tenant := placeholderResolver()(h.Tenant)
	if h.Tenant != "" {
		if err := store.ValidateTenantName(tenant); err != nil {
			return fmt.Errorf("ews_proxy: tenant: %w", err)
		}
	}
	boundRaw := proxyConfig{ProxyRaw: slices.Clone(h.ProxyRaw)} // LoadModule consumes the original
	var err error
	if h.proxy, err = loadReverseProxy(ctx, h); err != nil {
		return err
	}
	if h.boundProxy, err = loadReverseProxy(ctx, &boundRaw); err != nil {
		return err
	}
	secret, err := h.settings(ctx)
	if err != nil {
		return err
	}
	if h.compliance, err = acquireCompliance(h.databaseURL, ctx.Slogger()); err != nil {
		return fmt.Errorf("ews_proxy: database_url: %w", err)
	}
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
	cfg := ewsproxy.Config{
		Delegator:             delegator,
		Annotate:              annotateAccessLog,
		DeviceHeader:          h.DeviceIDHeader,
		DeviceQuery:           h.DeviceIDQuery,
		AllowUnknown:          h.UnknownDevices == "allow",
		RemoveUnsupportedAuth: h.RemoveUnsupportedAuth == nil || *h.RemoveUnsupportedAuth,
		Attestation:           attest.Attestation{Secret: secret},
		MaxRequestBody:        h.MaxRequestBody,
	}
	if cfg.MaxRequestBody == 0 {
		cfg.MaxRequestBody = DefaultMaxRequestBody
	}
	if tenant != "" {
		if h.store, err = acquireStore(h.databaseURL); err != nil {
			return fmt.Errorf("ews_proxy: database_url: %w", err)
		}
		if err := findTenant(ctx, h.store, tenant, &cfg); err != nil {
			return err
		}
	}
	h.guard = ewsproxy.NewGuard(cfg, h.compliance, ctx.Slogger())
	h.access = newAccessLog(ctx)
	return nil
}

// settings resolves database_url (into h.databaseURL) and proxy_secret.
// What the handler leaves out it takes from the ens app, if the config has
// one, through the app's exported ProxySettings.
func (h *EWSProxy) settings(ctx caddy.Context) ([]byte, error) {
	get := placeholderResolver()
	h.databaseURL = get(h.DatabaseURL)
	secret := []byte(get(h.ProxySecret))
	if h.databaseURL == "" || len(secret) == 0 {
		app, err := ctx.AppIfConfigured("ens")
		switch {
		case err == nil:
			appURL, appSecret := app.(*App).ProxySettings()
			h.databaseURL = cmp.Or(h.databaseURL, appURL)
			if len(secret) == 0 {
				secret = appSecret
			}
		case !errors.Is(err, caddy.ErrNotConfigured):
			return nil, fmt.Errorf("ews_proxy: %w", err)
		case h.databaseURL == "":
			return nil, errors.New("ews_proxy: database_url is required without the ens app (the global `ens` option), e.g. {env.DATABASE_URL}")
		}
	}
	if len(secret) > 0 && len(secret) < 32 {
		return nil, fmt.Errorf("ews_proxy: proxy_secret "+tooShort, len(secret))
	}
	return secret, nil
}

// findTenant sets cfg's tenant: found now, or looked up by the first
// request that needs it if the database cannot answer yet (nodes may start
// before PostgreSQL). A tenant the database does not have is a
// configuration error.
func findTenant(ctx caddy.Context, s *store.Store, name string, cfg *ewsproxy.Config) error {
	find := func(ctx context.Context) (int64, error) {
		t, err := s.TenantByName(ctx, name)
		return t.ID, err
	}
	wait, cancel := context.WithTimeout(ctx, tenantLookupWait)
	defer cancel()
	id, err := find(wait)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("ews_proxy: tenant %q does not exist (`ensgate ens tenant list` shows the tenants)", name)
	case err != nil:
		ctx.Logger().Warn("ews_proxy: cannot look up the tenant yet; the first request will (direct device traffic gets 503 until then)",
			zap.String("tenant", name), zap.Error(err))
		cfg.FindTenant = find
	default:
		cfg.TenantID = id
	}
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
// the request's access-log entry.
func annotateAccessLog(r *http.Request, operation, decision string) {
	addLogFields(r, zap.String("ews_operation", operation), zap.String("ews_decision", decision))
}

// Cleanup gives back this config's references to the shared delegator,
// compliance cache and pool.
func (h *EWSProxy) Cleanup() error {
	var errs []error
	if h.kerberosKey != "" {
		_, err := delegators.Delete(h.kerberosKey)
		errs = append(errs, err)
	}
	if h.compliance != nil {
		errs = append(errs, releaseCompliance(h.databaseURL))
	}
	if h.store != nil {
		errs = append(errs, releaseStore(h.databaseURL))
	}
	return errors.Join(errs...)
}

// ServeHTTP writes the access-log entry itself (accessLog): requests
// carry the mailbox address in X-AnchorMailbox.
func (h *EWSProxy) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.access.serve(w, r, func(w http.ResponseWriter, r *http.Request) error {
		return h.guard.Serve(w, r, func(w http.ResponseWriter, r *http.Request, connectionBound bool) error {
			if connectionBound {
				return h.boundProxy.ServeHTTP(w, r, next)
			}
			return h.proxy.ServeHTTP(w, r, next)
		})
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
			case "tenant":
				dst = &p.Tenant
			case "database_url":
				dst = &p.DatabaseURL
			case "proxy_secret":
				dst = &p.ProxySecret
			case "max_request_body":
				var v string
				if err := oneArg(d, &v); err != nil {
					return nil, err
				}
				size, err := humanize.ParseBytes(v)
				if err != nil || size == 0 || size > math.MaxInt64 {
					return nil, d.Errf("max_request_body %q: want a size such as 64MiB or 100MB", v)
				}
				p.MaxRequestBody = int64(size)
				d.DeleteN(2)
				continue
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

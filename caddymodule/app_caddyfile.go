package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("ens", parseGlobalENS)
}

// parseGlobalENS turns the global option block into the ens app:
//
//	ens {
//		database_url <url>
//		master_key   <base64>
//		accepted_master_keys <base64>...   # while rotating master_key
//		public_url   <url>
//		admin_token  <token>
//		proxy_secret <secret shared by ENS and the EWS proxy>
//		key_pool_size    <n>
//		status_frequency <duration, whole minutes>
//		rate_limit       <requests per second per tenant>
//		apns {
//			url <url>
//			key_file <path>
//			key_id <id>
//			team_id <id>
//			topic <bundle id>
//			cert_file <path>      # instead of key_file, key_id, team_id
//			cert_password <password>
//		}
//		fcm {
//			url <url>
//			credentials_file <path>
//		}
//	}
func parseGlobalENS(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "ens", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile reads the `ens` block.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "database_url":
			err = oneArg(d, &a.DatabaseURL)
		case "master_key":
			err = oneArg(d, &a.MasterKey)
		case "accepted_master_keys":
			if a.AcceptedMasterKeys = d.RemainingArgs(); len(a.AcceptedMasterKeys) == 0 {
				return d.ArgErr()
			}
		case "public_url":
			err = oneArg(d, &a.PublicURL)
		case "admin_token":
			err = oneArg(d, &a.AdminToken)
		case "proxy_secret":
			err = oneArg(d, &a.ProxySecret)
		case "key_pool_size":
			var v string
			if err = oneArg(d, &v); err == nil {
				if a.KeyPoolSize, err = strconv.Atoi(v); err != nil {
					return d.Errf("key_pool_size %q: not a number", v)
				}
			}
		case "status_frequency":
			var v string
			if err = oneArg(d, &v); err == nil {
				dur, perr := caddy.ParseDuration(v)
				if perr != nil {
					return d.Errf("status_frequency %q: %v", v, perr)
				}
				a.StatusFrequency = caddy.Duration(dur)
			}
		case "rate_limit":
			var v string
			if err = oneArg(d, &v); err == nil {
				if a.RateLimit, err = strconv.ParseFloat(v, 64); err != nil {
					return d.Errf("rate_limit %q: not a number", v)
				}
			}
		case "apns":
			a.APNs = new(APNsConfig)
			err = subBlock(d, map[string]*string{
				"url": &a.APNs.URL, "key_file": &a.APNs.KeyFile, "key_id": &a.APNs.KeyID,
				"team_id": &a.APNs.TeamID, "topic": &a.APNs.Topic,
				"cert_file": &a.APNs.CertFile, "cert_password": &a.APNs.CertPassword,
			})
		case "fcm":
			a.FCM = new(FCMConfig)
			err = subBlock(d, map[string]*string{"url": &a.FCM.URL, "credentials_file": &a.FCM.CredentialsFile})
		default:
			return d.Errf("unrecognized ens option %q (known: database_url, master_key, accepted_master_keys, public_url, admin_token, proxy_secret, key_pool_size, status_frequency, rate_limit, apns, fcm)", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// oneArg reads exactly one argument into dst.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	name := d.Val()
	if !d.NextArg() {
		return d.Errf("%s needs a value", name)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s takes one value, got another: %q", name, d.Val())
	}
	return nil
}

// subBlock reads a block of single-valued settings.
func subBlock(d *caddyfile.Dispenser, fields map[string]*string) error {
	name := d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		dst, ok := fields[d.Val()]
		if !ok {
			return d.Errf("unrecognized %s option %q", name, d.Val())
		}
		if err := oneArg(d, dst); err != nil {
			return err
		}
	}
	return nil
}

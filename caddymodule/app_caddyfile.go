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
//		rate_limit       <requests per second per client address of a tenant>
//		device_rate_limit     <requests per second per device>
//		tenant_rate_limit     <requests per second per tenant>
//		callback_rate_limit   <notifications per second per subscription>
//		notifications_in_flight <callbacks one node works on at once>
//		key_pair_ttl          <duration>
//		key_pairs_per_tenant  <n>
//		key_pairs_per_address <n>
//		ews_timeout      <duration>
//		ews_concurrency  <n per Exchange endpoint>
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
			err = intArg(d, &a.KeyPoolSize)
		case "status_frequency":
			err = durationArg(d, &a.StatusFrequency)
		case "rate_limit":
			err = floatArg(d, &a.RateLimit)
		case "device_rate_limit":
			err = floatArg(d, &a.DeviceRateLimit)
		case "tenant_rate_limit":
			err = floatArg(d, &a.TenantRateLimit)
		case "callback_rate_limit":
			err = floatArg(d, &a.CallbackRateLimit)
		case "key_pair_ttl":
			err = durationArg(d, &a.KeyPairTTL)
		case "key_pairs_per_tenant":
			err = intArg(d, &a.KeyPairsPerTenant)
		case "key_pairs_per_address":
			err = intArg(d, &a.KeyPairsPerAddress)
		case "notifications_in_flight":
			err = intArg(d, &a.NotificationsInFlight)
		case "ews_timeout":
			err = durationArg(d, &a.EWSTimeout)
		case "ews_concurrency":
			err = intArg(d, &a.EWSConcurrency)
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
			return d.Errf("unrecognized ens option %q (known: database_url, master_key, accepted_master_keys, public_url, admin_token, proxy_secret, key_pool_size, status_frequency, rate_limit, device_rate_limit, tenant_rate_limit, callback_rate_limit, key_pair_ttl, key_pairs_per_tenant, key_pairs_per_address, ews_timeout, ews_concurrency, notifications_in_flight, apns, fcm)", d.Val())
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

// intArg reads one whole number into dst.
func intArg(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return d.Errf("%s %q: not a number", name, v)
	}
	*dst = n
	return nil
}

// floatArg reads one number into dst.
func floatArg(d *caddyfile.Dispenser, dst *float64) error {
	name := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil {
		return d.Errf("%s %q: not a number", name, v)
	}
	*dst = f
	return nil
}

// durationArg reads one duration (Caddy's syntax: 90s, 15m, 1d) into dst.
func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var v string
	if err := oneArg(d, &v); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return d.Errf("%s %q: %v", name, v, err)
	}
	*dst = caddy.Duration(dur)
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

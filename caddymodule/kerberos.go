package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/jcmturner/gokrb5/v8/keytab"

	"github.com/ensgate/ensgate/kcd"
)

// Kerberos configures Kerberos Constrained Delegation for clients that
// authenticate with a certificate: the ews_proxy replaces their
// credentials with a Negotiate header for the user the certificate names.
// String fields accept placeholders such as {env.ENS_KCD_REALM}.
//
// Caddyfile, inside ews_proxy:
//
//	kerberos {
//		realm        CORP.EXAMPLE.TEST
//		kdc          dc1.corp.example.test dc2.corp.example.test:88
//		keytab       /etc/ensgate/ensgate.keytab
//		principal    HTTP/ensgate.corp.example.test
//		spn          HTTP/mail.corp.example.test
//		identity     upn                  # certificate fields tried in order (default upn; email, cn: see docs/kcd.md)
//		identity_template {user}@corp.example.test
//		sid          check                # AD strong mapping: check, require, off
//		timeout      3s                   # per KDC attempt
//		renew_before 5m
//		negative_ttl 1m
//		max_tickets  100000               # users in the ticket cache
//	}
type Kerberos struct {
	Realm     string   `json:"realm,omitempty"`
	KDCs      []string `json:"kdcs,omitempty"`
	Keytab    string   `json:"keytab,omitempty"`    // file path
	Principal string   `json:"principal,omitempty"` // the proxy's, without realm
	SPN       string   `json:"spn,omitempty"`       // Exchange's
	// Identity lists the certificate fields to take the user from, in
	// order: upn (SAN otherName), email (SAN rfc822Name), cn. Default upn:
	// email and cn name a user only if the CA guarantees that they equal
	// the UPN (an S/MIME certificate carries an address too).
	Identity []string `json:"identity,omitempty"`
	// IdentityTemplate maps the value found, e.g. {user}@corp.example.test.
	IdentityTemplate string `json:"identity_template,omitempty"`
	// SID is what to do with the user SID of AD's strong-mapping
	// certificate extension: check (default: if present, it must be the
	// user's), require, off.
	SID         string         `json:"sid,omitempty"`
	Timeout     caddy.Duration `json:"timeout,omitempty"`
	RenewBefore caddy.Duration `json:"renew_before,omitempty"`
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`
	// MaxTickets bounds the ticket cache (users); default 100,000.
	MaxTickets int `json:"max_tickets,omitempty"`
}

// delegators shares a kcd.Delegator, and so its ticket cache and TGT,
// across config reloads: keyed by its settings and the keytab's content, a
// reload that changes neither keeps every cached ticket.
var delegators = caddy.NewUsagePool()

type sharedDelegator struct{ *kcd.Delegator }

func (sharedDelegator) Destruct() error { return nil }

// delegator builds the certificate-to-Kerberos delegator, reporting every
// problem at once, and returns the key to release it with.
func (k *Kerberos) delegator(log *slog.Logger) (*kcd.CertificateDelegator, string, error) {
	get := placeholderResolver()
	var problems []string
	var kdcs []string
	for _, kdc := range k.KDCs {
		kdcs = append(kdcs, strings.Fields(get(kdc))...)
	}
	var raw []byte
	kt := keytab.New()
	if path := get(k.Keytab); path == "" {
		problems = append(problems, "keytab: the path of the proxy principal's keytab is required")
	} else if b, err := os.ReadFile(path); err != nil {
		problems = append(problems, fmt.Sprintf("keytab: %v", err))
	} else if err := kt.Unmarshal(b); err != nil {
		problems = append(problems, fmt.Sprintf("keytab %s: not a keytab: %v", path, err))
	} else {
		raw = b
	}
	sources := k.Identity
	if len(sources) == 0 {
		sources = []string{kcd.SourceUPN}
	}
	for _, s := range sources {
		if s == kcd.SourceEmail || s == kcd.SourceCN {
			log.Warn("ews_proxy: kerberos identity " + s + ": any certificate from the trusted CA that carries one (an S/MIME certificate too) is delegated as that user; safe only if the CA guarantees it equals the UPN (docs/kcd.md)")
		}
	}
	// The template is not a Caddy placeholder: {user} is ours.
	mapper, err := kcd.NewIdentityMapper(sources, k.IdentityTemplate)
	if err != nil {
		problems = append(problems, strings.TrimPrefix(err.Error(), "kcd: "))
	}
	cfg := kcd.Config{
		Realm:       get(k.Realm),
		KDCs:        kdcs,
		Principal:   get(k.Principal),
		Keytab:      kt,
		SPN:         get(k.SPN),
		Timeout:     time.Duration(k.Timeout),
		RenewBefore: time.Duration(k.RenewBefore),
		NegativeTTL: time.Duration(k.NegativeTTL),
		MaxEntries:  k.MaxTickets,
		Logger:      log,
	}
	if err := kcd.CheckSIDPolicy(k.SID); err != nil {
		problems = append(problems, err.Error())
	}
	if err := cfg.Validate(); err != nil {
		problems = append(problems, strings.TrimPrefix(err.Error(), "kcd: "))
	}
	if len(problems) > 0 {
		return nil, "", fmt.Errorf("ews_proxy: kerberos: %s", strings.Join(problems, "; "))
	}
	settings, err := json.Marshal([]any{cfg.Realm, cfg.KDCs, cfg.Principal, cfg.SPN, cfg.Timeout, cfg.RenewBefore, cfg.NegativeTTL, cfg.MaxEntries})
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(append(append(settings, 0), raw...))
	key := hex.EncodeToString(sum[:])
	v, _, err := delegators.LoadOrNew(key, func() (caddy.Destructor, error) {
		d, err := kcd.New(cfg)
		if err != nil {
			return nil, err
		}
		return sharedDelegator{d}, nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("ews_proxy: kerberos: %w", err)
	}
	d := v.(sharedDelegator).Delegator
	d.SetLogger(log) // a reload's logging settings apply to the shared delegator too
	return &kcd.CertificateDelegator{Identity: mapper, KCD: d, SID: k.SID}, key, nil
}

// parseKerberos reads a kerberos block; d is on the word kerberos.
func parseKerberos(d *caddyfile.Dispenser) (*Kerberos, error) {
	k := new(Kerberos)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		args := d.RemainingArgs()
		if len(args) == 0 {
			return nil, d.Errf("kerberos %s needs a value", option)
		}
		single := func(dst *string) error {
			if len(args) != 1 {
				return d.Errf("kerberos %s takes one value, got %d", option, len(args))
			}
			*dst = args[0]
			return nil
		}
		duration := func(dst *caddy.Duration) error {
			var v string
			if err := single(&v); err != nil {
				return err
			}
			dur, err := caddy.ParseDuration(v)
			if err != nil {
				return d.Errf("kerberos %s: %v", option, err)
			}
			*dst = caddy.Duration(dur)
			return nil
		}
		var err error
		switch option {
		case "realm":
			err = single(&k.Realm)
		case "kdc":
			k.KDCs = append(k.KDCs, args...)
		case "keytab":
			err = single(&k.Keytab)
		case "principal":
			err = single(&k.Principal)
		case "spn":
			err = single(&k.SPN)
		case "identity":
			k.Identity = append(k.Identity, args...)
		case "identity_template":
			err = single(&k.IdentityTemplate)
		case "sid":
			err = single(&k.SID)
		case "timeout":
			err = duration(&k.Timeout)
		case "renew_before":
			err = duration(&k.RenewBefore)
		case "negative_ttl":
			err = duration(&k.NegativeTTL)
		case "max_tickets":
			var v string
			if err = single(&v); err == nil {
				if k.MaxTickets, err = strconv.Atoi(v); err != nil || k.MaxTickets < 1 {
					err = d.Errf("kerberos max_tickets %q: want a positive number of users", v)
				}
			}
		default:
			return nil, d.Errf("unrecognized kerberos option %q (realm, kdc, keytab, principal, spn, identity, identity_template, sid, timeout, renew_before, negative_ttl, max_tickets)", option)
		}
		if err != nil {
			return nil, err
		}
	}
	return k, nil
}

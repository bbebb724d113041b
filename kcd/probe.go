package kcd

import (
	"context"
	"strings"
	"time"
)

// Probe is the outcome of one delegation run step by step, bypassing the
// cache, to check a KDC setup (`ensgate ens kcd check`).
type Probe struct {
	Login, S4U2Self, S4U2Proxy time.Duration // how long each step took; zero if not reached
	Client                     string        // the delegated ticket's client, name@REALM
	SID                        string        // the client's SID from the PAC, if any
	SIDProblem                 string        // why there is no SID, if there is none
	Expires                    time.Time     // the delegated ticket's end
	HeaderBytes                int           // size of the Negotiate header
}

// Probe logs in, delegates user and builds a header, reporting each step;
// on failure the steps before the failed one are filled in.
func (d *Delegator) Probe(ctx context.Context, user string) (*Probe, error) {
	p := &Probe{}
	start := time.Now()
	tgt, err := d.x.login(ctx)
	p.Login = time.Since(start)
	if err != nil {
		return p, err
	}
	start = time.Now()
	self, err := d.x.s4u2Self(ctx, tgt, user)
	p.S4U2Self = time.Since(start)
	if err != nil {
		return p, err
	}
	start = time.Now()
	cred, err := d.x.s4u2Proxy(ctx, tgt, self, d.spn)
	p.S4U2Proxy = time.Since(start)
	if err != nil {
		return p, err
	}
	h, err := (&serviceTicket{cred: cred}).header(d.cfg.now())
	if err != nil {
		return p, err
	}
	p.Client = cred.cname.PrincipalNameString()
	if !strings.Contains(p.Client, "@") { // an enterprise name already has its domain
		p.Client += "@" + cred.crealm
	}
	p.SID, p.Expires, p.HeaderBytes = cred.sid, cred.end, len(h)
	if cred.sidErr != nil {
		p.SIDProblem = cred.sidErr.Error()
	}
	return p, nil
}

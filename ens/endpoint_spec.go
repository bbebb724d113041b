package ens

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"

	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/store"
)

// Microsoft's public cloud; national clouds and tests override them.
const (
	DefaultGraphRoot = "https://graph.microsoft.com"
	DefaultAuthority = "https://login.microsoftonline.com/organizations"
)

// EndpointSpec is an admin's description of an endpoint to allow, as the
// CLI's flags (ensgate ens endpoint add) and the admin API's JSON give it.
type EndpointSpec struct {
	// Graph allows Exchange Online through Microsoft Graph; URL is then
	// the Graph root (default DefaultGraphRoot).
	Graph bool   `json:"graph"`
	URL   string `json:"url"`
	// Fingerprint pins the server's certificate (sha256:HEX or
	// spki-sha256:HEX).
	Fingerprint string `json:"fingerprint"`
	// ClientID is the mail app's OAuth client: Graph needs it; an EWS URL
	// takes it when its OAuth devices may register refresh tokens.
	// Authority defaults to DefaultAuthority, Scope to the resource's
	// /.default and offline_access.
	ClientID  string `json:"clientId"`
	Authority string `json:"authority"`
	Scope     string `json:"scope"`
}

// Entry checks the spec and fills in its defaults: the tenant's entry to
// allow (store.Store.Allow).
func (spec EndpointSpec) Entry(tenantID int64) (store.Endpoint, error) {
	e := store.Endpoint{TenantID: tenantID, Kind: store.KindEWS, URL: spec.URL}
	if spec.Graph {
		e.Kind, e.URL = store.KindGraph, cmp.Or(spec.URL, DefaultGraphRoot)
	}
	if e.URL == "" {
		return store.Endpoint{}, errors.New("url: required (an EWS URL, or the Graph root with graph)")
	}
	var err error
	if e.URL, err = store.NormalizeEWSURL(e.URL); err != nil {
		return store.Endpoint{}, fmt.Errorf("url: %w", err)
	}
	if spec.Fingerprint != "" && spec.Graph {
		// The Graph client trusts the system's roots; a pin it did not
		// enforce would only seem to protect the tokens.
		return store.Endpoint{}, errors.New("fingerprint: Graph endpoints take no pin")
	}
	if spec.Fingerprint != "" {
		fp, err := ews.ParseFingerprint(spec.Fingerprint)
		if err != nil {
			return store.Endpoint{}, fmt.Errorf("fingerprint: %w", err)
		}
		e.Fingerprint = fp.String()
	}
	switch {
	case spec.ClientID == "" && spec.Graph:
		return store.Endpoint{}, errors.New("client id: Graph needs the mail app's OAuth client id")
	case spec.ClientID == "" && (spec.Authority != "" || spec.Scope != ""):
		return store.Endpoint{}, errors.New("authority and scope go with a client id")
	case spec.ClientID == "":
		return e, nil
	}
	authority := cmp.Or(spec.Authority, DefaultAuthority)
	if u, err := url.Parse(authority); err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return store.Endpoint{}, fmt.Errorf("authority: want an https URL such as %s", DefaultAuthority)
	}
	scope := spec.Scope
	if scope == "" {
		u, _ := url.Parse(e.URL)
		scope = u.Scheme + "://" + u.Host + "/.default offline_access"
	}
	e.OAuth = store.OAuth{ClientID: spec.ClientID, Authority: authority, Scope: scope}
	return e, nil
}

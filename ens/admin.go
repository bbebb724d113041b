package ens

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ensgate/ensgate/store"
)

// AdminAPI says whether a handler serves the admin API (BasePath/admin/…)
// besides the device API, so that it can be kept off the public listener.
type AdminAPI string

// The AdminAPI choices.
const (
	AdminOn   AdminAPI = "on"   // the admin API and the device API
	AdminOff  AdminAPI = "off"  // the device API only
	AdminOnly AdminAPI = "only" // the admin API only
)

// ParseAdminAPI checks an admin_api setting; empty means AdminOn.
func ParseAdminAPI(v string) (AdminAPI, error) {
	switch a := AdminAPI(v); a {
	case "":
		return AdminOn, nil
	case AdminOn, AdminOff, AdminOnly:
		return a, nil
	}
	return "", fmt.Errorf("admin_api %q: must be on, off or only", v)
}

// ServeAdminAPI restricts h, a Service's Handler, to the routes mode allows;
// the others are answered like a path that does not exist.
func ServeAdminAPI(h http.Handler, mode AdminAPI) http.Handler {
	if mode == AdminOn {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if isAdminPath(r.URL.Path) != (mode == AdminOnly) {
			notFound(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// isAdminPath judges the path as the router will after cleaning it.
func isAdminPath(p string) bool {
	p = path.Clean(p)
	return p == BasePath+"/admin" || strings.HasPrefix(p, BasePath+"/admin/")
}

func notFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, &apiError{http.StatusNotFound, "not_found", "no such ENS endpoint: " + r.Method + " " + r.URL.Path})
}

// adminAPI serves the admin routes below BasePath/admin, guarded by the
// admin token (Authorization: Bearer). Without a configured token they do
// not exist.
func (s *Service) adminAPI(mux *http.ServeMux) {
	if s.cfg.AdminToken == "" {
		return
	}
	mux.Handle("GET "+BasePath+"/admin/tenants/{tenant}/subscriptions", s.admin(s.adminSubscriptionHealth))
	endpoints := BasePath + "/admin/tenants/{tenant}/endpoints"
	mux.Handle("GET "+endpoints, s.admin(s.adminListEndpoints))
	mux.Handle("POST "+endpoints, s.admin(s.adminAddEndpoint))
	mux.Handle("DELETE "+endpoints, s.admin(s.adminRemoveEndpoint))
	prefix := BasePath + "/admin/tenants/{tenant}/devices"
	mux.Handle("GET "+prefix, s.admin(s.adminListDevices))
	for _, action := range DeviceActions {
		mux.Handle("POST "+prefix+"/{device}/"+action.Name, s.admin(func(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
			return s.adminDeviceAction(w, r, t, action)
		}))
	}
}

// DeviceAction is an admin's action on a device, the same through the CLI
// (ensgate ens device NAME) and the admin API (…/devices/{device}/NAME).
// Every node enforces it within about a second (PostgreSQL NOTIFY).
type DeviceAction struct {
	Name  string
	Short string // what it does, for help texts
	State string // the compliance state it sets
}

// DeviceActions are the admin's device actions.
var DeviceActions = []DeviceAction{
	{"block", "Blocks a device: the EWS proxy refuses it and ENS stops notifying it", store.Blocked},
	{"unblock", "Marks a device compliant again", store.Compliant},
	{"remove", "Wipes a device server-side: blocked for good and its ENS registration ended", store.Wiped},
}

// Apply carries the action out for a tenant's device. Removal also ends the
// device's registration, and its mailbox's subscription when no other
// device is left (subscriptionEnded).
func (a DeviceAction) Apply(ctx context.Context, s *store.Store, tenantID int64, deviceID string) (subscriptionEnded bool, err error) {
	if !ValidDeviceID(deviceID) {
		return false, fmt.Errorf("device id: must be %s", DeviceIDRule)
	}
	if a.State == store.Wiped {
		return s.RemoveDevice(ctx, tenantID, deviceID)
	}
	return false, s.SetCompliance(ctx, tenantID, deviceID, a.State)
}

// admin checks the admin token and resolves the tenant in the path. A
// client address with too many wrong tokens is refused for a while, even
// with the right one.
func (s *Service) admin(h func(http.ResponseWriter, *http.Request, store.Tenant) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := s.clientAddress(r)
		if wait := s.adminFailures.blocked(addr, time.Now()); wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)+1))
			writeError(w, &apiError{http.StatusTooManyRequests, "rate_limited", "too many failed admin logins from this address; retry later"})
			return
		}
		// Only the Bearer scheme: "Basic <token>" is another credential
		// (and may be logged or cached as one) that happens to hold it.
		token, bearer := bearerToken(r)
		if !bearer || subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.AdminToken)) != 1 {
			s.adminFailures.add(addr, time.Now())
			writeError(w, &apiError{http.StatusUnauthorized, "unauthorized", "missing or wrong admin token (Authorization: Bearer <ENS_ADMIN_TOKEN>)"})
			return
		}
		t, err := s.store.TenantByName(r.Context(), r.PathValue("tenant"))
		if errors.Is(err, store.ErrNotFound) {
			err = &apiError{http.StatusNotFound, "not_found", "no such tenant"}
		}
		if err == nil {
			err = h(w, r, t)
		}
		if err != nil {
			var ae *apiError
			if !errors.As(err, &ae) {
				ae = &apiError{http.StatusInternalServerError, "internal", "internal error; the gateway's log has details"}
			}
			writeError(w, ae)
		}
	})
}

// Failed admin logins allowed per client address and window, on each node.
// The token has at least 32 random characters, so this guards against
// noise and slows a guesser further; the CLI needs no HTTP login at all.
const (
	adminMaxFailures   = 10
	adminFailureWindow = time.Minute
	// adminFailureAddrs bounds the addresses remembered; beyond it, new
	// addresses share one count, so a flood of them cannot grow memory.
	adminFailureAddrs = 4096
)

// loginFailures counts failed logins per client address, in a window that
// starts at the address's first failure.
type loginFailures struct {
	mu      sync.Mutex
	entries map[string]*failureWindow
}

type failureWindow struct {
	count int
	ends  time.Time
}

// sharedFailures is the entry of the addresses beyond adminFailureAddrs.
const sharedFailures = ""

// blocked returns how long addr must still wait, or 0.
func (f *loginFailures) blocked(addr string, now time.Time) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.entries[f.key(addr, now)]
	if w == nil || w.count < adminMaxFailures || !now.Before(w.ends) {
		return 0
	}
	return w.ends.Sub(now)
}

func (f *loginFailures) add(addr string, now time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := f.key(addr, now)
	w := f.entries[key]
	if w == nil || !now.Before(w.ends) {
		if f.entries == nil {
			f.entries = map[string]*failureWindow{}
		}
		w = &failureWindow{ends: now.Add(adminFailureWindow)}
		f.entries[key] = w
	}
	w.count++
}

// key is the entry that counts addr: its own, or the shared one when the
// bound is reached even after dropping the windows that have ended.
func (f *loginFailures) key(addr string, now time.Time) string {
	if _, ok := f.entries[addr]; ok || len(f.entries) < adminFailureAddrs {
		return addr
	}
	for k, w := range f.entries {
		if !now.Before(w.ends) {
			delete(f.entries, k)
		}
	}
	if len(f.entries) < adminFailureAddrs {
		return addr
	}
	return sharedFailures
}

func (s *Service) adminListDevices(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	devices, err := s.store.ListDevices(r.Context(), t.ID)
	if err != nil {
		return err
	}
	type device struct {
		DeviceID     string     `json:"deviceId"`
		Platform     string     `json:"platform,omitempty"`
		State        string     `json:"state,omitempty"`
		StateReason  string     `json:"stateReason,omitempty"`
		Compliance   string     `json:"compliance,omitempty"`
		RegisteredAt *time.Time `json:"registeredAt,omitempty"`
	}
	out := make([]device, len(devices))
	for i, d := range devices {
		out[i] = device(d)
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": out})
	return nil
}

// adminSubscriptionHealth answers store.SubscriptionHealth: counts and
// times, no mailbox.
func (s *Service) adminSubscriptionHealth(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	h, err := s.store.SubscriptionHealth(r.Context(), t.ID)
	if err != nil {
		return err
	}
	type group struct {
		State  string `json:"state"`
		Reason string `json:"reason,omitempty"`
		Count  int    `json:"count"`
	}
	type heard struct {
		Oldest time.Time `json:"oldest"`
		Newest time.Time `json:"newest"`
	}
	answer := struct {
		Tenant    string    `json:"tenant"`
		AsOf      time.Time `json:"asOf"`
		Active    int       `json:"active"`
		Overdue   int       `json:"overdue"`
		Failed    int       `json:"failed"`
		Ended     int       `json:"ended"`
		LastHeard *heard    `json:"lastHeard,omitempty"` // without active subscriptions, nothing was heard
		ByReason  []group   `json:"byReason"`
	}{Tenant: t.Name, AsOf: h.AsOf.UTC(), Active: h.Active, Overdue: h.Overdue, Failed: h.Failed, Ended: h.Ended, ByReason: []group{}}
	if h.Active > 0 {
		answer.LastHeard = &heard{h.OldestHeard.UTC(), h.NewestHeard.UTC()}
	}
	for _, g := range h.Groups {
		answer.ByReason = append(answer.ByReason, group(g))
	}
	writeJSON(w, http.StatusOK, answer)
	return nil
}

func (s *Service) adminDeviceAction(w http.ResponseWriter, r *http.Request, t store.Tenant, action DeviceAction) error {
	deviceID := r.PathValue("device")
	if err := checkDeviceID(deviceID); err != nil {
		return err
	}
	ended, err := action.Apply(r.Context(), s.store, t.ID, deviceID)
	if err != nil {
		return err
	}
	answer := map[string]any{"deviceId": deviceID, "compliance": action.State}
	if action.State == store.Wiped {
		answer["subscriptionEnded"] = ended
	}
	writeJSON(w, http.StatusOK, answer)
	return nil
}

// adminEndpoint is an allowed endpoint as the admin API shows it.
type adminEndpoint struct {
	Kind        string `json:"kind"`
	URL         string `json:"url"`
	Fingerprint string `json:"fingerprint,omitempty"`
	ClientID    string `json:"clientId,omitempty"`
	Authority   string `json:"authority,omitempty"`
	Scope       string `json:"scope,omitempty"`
}

func newAdminEndpoint(e store.Endpoint) adminEndpoint {
	return adminEndpoint{Kind: e.Kind, URL: e.URL, Fingerprint: e.Fingerprint, ClientID: e.OAuth.ClientID,
		Authority: e.OAuth.Authority, Scope: e.OAuth.Scope}
}

func (s *Service) adminListEndpoints(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	endpoints, err := s.store.Endpoints(r.Context(), t.ID)
	if err != nil {
		return err
	}
	out := make([]adminEndpoint, len(endpoints))
	for i, e := range endpoints {
		out[i] = newAdminEndpoint(e)
	}
	writeJSON(w, http.StatusOK, map[string]any{"endpoints": out})
	return nil
}

// adminAddEndpoint allows an EWS URL or a Graph root (EndpointSpec); every
// node sees it within seconds.
func (s *Service) adminAddEndpoint(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	var spec EndpointSpec
	if err := decodeJSON(w, r, &spec); err != nil {
		return err
	}
	entry, err := spec.Entry(t.ID)
	if err != nil {
		return badRequest("%v", err)
	}
	e, err := s.store.Allow(r.Context(), entry)
	if errors.Is(err, store.ErrExists) {
		return &apiError{http.StatusConflict, "exists", "this URL is already allowed for the tenant"}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, newAdminEndpoint(e))
	return nil
}

// adminRemoveEndpoint takes ?url= off the tenant's list and ends the
// subscriptions that use it, as ensgate ens endpoint remove does.
func (s *Service) adminRemoveEndpoint(w http.ResponseWriter, r *http.Request, t store.Tenant) error {
	raw := r.URL.Query().Get("url")
	if _, err := store.NormalizeEWSURL(raw); err != nil {
		return badRequest("url: %v", err)
	}
	ended, err := s.store.RemoveEndpoint(r.Context(), t.ID, raw)
	if errors.Is(err, store.ErrNotFound) {
		return &apiError{http.StatusNotFound, "not_found", "this URL is not allowed for the tenant"}
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"subscriptionsEnded": ended})
	return nil
}

package ewssim

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// FaultKind names an injectable failure.
type FaultKind string

const (
	// FaultServerBusy answers HTTP 500 with the ErrorServerBusy SOAP fault
	// and BackOffMilliseconds, as Exchange's throttling does.
	FaultServerBusy FaultKind = "ServerBusy"
	// FaultUnavailable answers HTTP 503 from "HTTP.sys" (no SOAP body), as
	// when the Exchange application pool is down.
	FaultUnavailable FaultKind = "Unavailable"
	// FaultDelay holds the request for Delay (wall-clock time, not scaled:
	// it exercises the client's own timeouts), then answers normally.
	FaultDelay FaultKind = "Delay"
	// FaultDeleteBeforeGetItem deletes the items a GetItem asks for just
	// before answering, so it gets ErrorItemNotFound: the race of a user
	// deleting a message between the notification and the fetch.
	FaultDeleteBeforeGetItem FaultKind = "DeleteBeforeGetItem"
)

// defaultBackOff is the BackOffMilliseconds of ServerBusy when the fault
// does not set one. It is reported, not waited for, so it is not scaled.
const defaultBackOff = 30 * time.Second

// Fault is a failure to inject into matching EWS requests. A request
// consumes at most one fault: the oldest that matches.
type Fault struct {
	ID        string // set by InjectFault
	Kind      FaultKind
	User      string        // mailbox address; empty: every user
	Operation string        // e.g. GetItem; empty: every operation
	Count     int           // requests left to fail; 0: until removed
	BackOff   time.Duration // ServerBusy's BackOffMilliseconds; 0: 30 s
	Delay     time.Duration // Delay's hold time
}

// InjectFault adds a fault and returns its id.
func (s *Server) InjectFault(f Fault) (string, error) {
	switch f.Kind {
	case FaultServerBusy, FaultUnavailable, FaultDeleteBeforeGetItem:
	case FaultDelay:
		if f.Delay <= 0 {
			return "", fmt.Errorf("ewssim: a %s fault needs a positive delay", f.Kind)
		}
	default:
		return "", fmt.Errorf("ewssim: unknown fault kind %q", f.Kind)
	}
	if f.Count < 0 {
		return "", fmt.Errorf("ewssim: negative fault count")
	}
	if f.Kind == FaultServerBusy && f.BackOff <= 0 {
		f.BackOff = defaultBackOff
	}
	f.User = normAddr(f.User)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faultSeq++
	f.ID = "f" + strconv.Itoa(s.faultSeq)
	s.faults = append(s.faults, &f)
	return f.ID, nil
}

// Faults lists the pending faults.
func (s *Server) Faults() []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Fault, len(s.faults))
	for i, f := range s.faults {
		out[i] = *f
	}
	return out
}

// RemoveFault removes one fault; it reports whether it existed.
func (s *Server) RemoveFault(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.ID == id {
			s.faults = append(s.faults[:i], s.faults[i+1:]...)
			return true
		}
	}
	return false
}

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults = nil
	s.mu.Unlock()
}

// takeFault consumes and returns the first fault matching the user and
// operation, if any.
func (s *Server) takeFault(user, op string) (Fault, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.faults {
		if f.User != "" && f.User != user {
			continue
		}
		if f.Operation != "" && !strings.EqualFold(f.Operation, op) {
			continue
		}
		if f.Kind == FaultDeleteBeforeGetItem && op != "GetItem" {
			continue
		}
		taken := *f
		if f.Count > 0 {
			f.Count--
			if f.Count == 0 {
				s.faults = append(s.faults[:i], s.faults[i+1:]...)
			}
		}
		s.stats.fault(taken.Kind)
		return taken, true
	}
	return Fault{}, false
}

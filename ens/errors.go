package ens

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	"github.com/ensgate/ensgate/ews"
	"github.com/ensgate/ensgate/store"
)

// apiError is an error the device API reports as
// {"error": code, "message": message} with status.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func badRequest(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, "bad_request", fmt.Sprintf(format, args...)}
}

var errUnknownDevice = &apiError{http.StatusNotFound, "unknown_device", "this device is not registered"}

// exchangeError maps an EWS failure to the device API's answer.
func exchangeError(err error) *apiError {
	var re *ews.ResponseError
	switch {
	case errors.Is(err, ews.ErrUnauthorized):
		return &apiError{http.StatusUnauthorized, "bad_credentials", "Exchange refused the credentials"}
	case errors.Is(err, ews.ErrMailboxMismatch):
		return &apiError{http.StatusForbidden, "mailbox_mismatch", "the credentials do not log in to this mailbox (access as a delegate is not enough); register with the mailbox's own credentials"}
	case errors.Is(err, ews.ErrPinMismatch):
		return &apiError{http.StatusBadGateway, "exchange_error", "the EWS server's certificate does not match the pinned fingerprint; no credentials were sent"}
	case errors.Is(err, errEndpointBusy):
		return &apiError{http.StatusServiceUnavailable, "overloaded", "too many requests to this Exchange in flight; retry later"}
	case errors.As(err, &re):
		return &apiError{http.StatusBadGateway, "exchange_error", "Exchange answered " + re.Code}
	case errors.As(err, new(*tls.CertificateVerificationError)):
		return &apiError{http.StatusBadGateway, "exchange_error", "the EWS server's certificate is not trusted by the gateway; no credentials were sent"}
	case refusedByProxy(err):
		return &apiError{http.StatusForbidden, "forbidden", "the EWS proxy refused this device (blocked, wiped, non-compliant or unknown)"}
	default:
		var he *ews.HTTPError
		if errors.As(err, &he) {
			return &apiError{http.StatusBadGateway, "exchange_error", fmt.Sprintf("Exchange answered HTTP %d", he.StatusCode)}
		}
		return &apiError{http.StatusBadGateway, "exchange_error", "Exchange could not be reached"}
	}
}

// errDeviceRefused answers a blocked, wiped (removed) or non-compliant
// device at publickey and registerdevicev2.
var errDeviceRefused = &apiError{http.StatusForbidden, "device_blocked",
	"this device is blocked, wiped or not compliant; an admin must unblock it"}

var errEndpointNotAllowed = &apiError{http.StatusForbidden, "forbidden", "ewsUrl is not one of this tenant's allowed EWS endpoints"}

// ownerError answers a registration of an id another device holds exactly
// as status and unregister answer an unknown id: nobody learns which ids
// exist, or whose they are.
func ownerError(err error) error {
	switch {
	case errors.Is(err, store.ErrNotOwner):
		return errUnknownDevice
	case errors.Is(err, store.ErrDeviceRefused):
		return errDeviceRefused
	}
	return err
}

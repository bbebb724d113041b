package ews

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Errors about messages themselves.
var (
	// ErrMalformed means a message is not well-formed XML, is not the
	// expected SOAP/EWS message, or lacks a required field.
	ErrMalformed = errors.New("ews: malformed message")
	// ErrTooLarge means a message exceeded its size limit.
	ErrTooLarge = errors.New("ews: message too large")
	// ErrDTD means a document carried a DOCTYPE (and so possibly entity
	// declarations); such documents are refused before anything is parsed.
	ErrDTD = errors.New("ews: XML document type declarations (DOCTYPE) are not allowed")
)

// Errors about the HTTP exchange with the server.
var (
	// ErrUnauthorized: HTTP 401, wrong password or expired token. Retrying
	// with the same credentials cannot help.
	ErrUnauthorized = errors.New("ews: authentication failed")
	// ErrServiceUnavailable: HTTP 503.
	ErrServiceUnavailable = errors.New("ews: service unavailable")
	// ErrPinMismatch: the server's certificate does not match the pinned
	// fingerprint. The TLS handshake is aborted, so nothing was sent.
	ErrPinMismatch = errors.New("ews: server certificate does not match the pinned fingerprint")
)

// Errors for EWS response codes, matched with errors.Is against a
// *ResponseError. Several related codes share one sentinel where callers
// would treat them alike; the exact code is in ResponseError.Code.
var (
	ErrItemNotFound               = errors.New("ews: item not found")
	ErrFolderNotFound             = errors.New("ews: folder not found")
	ErrSubscriptionNotFound       = errors.New("ews: subscription not found")
	ErrInvalidSubscription        = errors.New("ews: invalid subscription")
	ErrExceededSubscriptionCount  = errors.New("ews: too many subscriptions for this mailbox")
	ErrInvalidPushSubscriptionURL = errors.New("ews: push subscription URL refused")
	ErrInvalidWatermark           = errors.New("ews: invalid watermark")
	ErrServerBusy                 = errors.New("ews: server busy")
	ErrAccessDenied               = errors.New("ews: access denied")
	ErrMailboxNotFound            = errors.New("ews: mailbox not found")
	ErrMailboxUnavailable         = errors.New("ews: mailbox temporarily unavailable")
	ErrInvalidID                  = errors.New("ews: invalid id")
	ErrInvalidRequest             = errors.New("ews: request refused as invalid")
)

var codeSentinels = map[string]error{
	"ErrorItemNotFound":                           ErrItemNotFound,
	"ErrorFolderNotFound":                         ErrFolderNotFound,
	"ErrorSubscriptionNotFound":                   ErrSubscriptionNotFound,
	"ErrorInvalidSubscription":                    ErrInvalidSubscription,
	"ErrorInvalidSubscriptionRequest":             ErrInvalidSubscription,
	"ErrorExpiredSubscription":                    ErrInvalidSubscription,
	"ErrorExceededSubscriptionCount":              ErrExceededSubscriptionCount,
	"ErrorInvalidPushSubscriptionUrl":             ErrInvalidPushSubscriptionURL,
	"ErrorInvalidWatermark":                       ErrInvalidWatermark,
	"ErrorServerBusy":                             ErrServerBusy,
	"ErrorAccessDenied":                           ErrAccessDenied,
	"ErrorSubscriptionAccessDenied":               ErrAccessDenied,
	"ErrorImpersonateUserDenied":                  ErrAccessDenied,
	"ErrorAccountDisabled":                        ErrAccessDenied,
	"ErrorNonExistentMailbox":                     ErrMailboxNotFound,
	"ErrorMailboxStoreUnavailable":                ErrMailboxUnavailable,
	"ErrorMailboxMoveInProgress":                  ErrMailboxUnavailable,
	"ErrorInvalidId":                              ErrInvalidID,
	"ErrorInvalidIdEmpty":                         ErrInvalidID,
	"ErrorInvalidIdMalformed":                     ErrInvalidID,
	"ErrorSchemaValidation":                       ErrInvalidRequest,
	"ErrorInvalidRequest":                         ErrInvalidRequest,
	"ErrorInvalidServerVersion":                   ErrInvalidRequest,
	"ErrorInvalidExchangeImpersonationHeaderData": ErrInvalidRequest,
}

// ClassFault is ResponseError.Class for an error carried by a SOAP fault
// rather than by a response message.
const ClassFault = "Fault"

// ResponseError is an error reported by Exchange: a response message whose
// ResponseClass is not Success, or a SOAP fault.
//
// Error() names only the code: Message is the server's human text and may
// contain names or addresses, so it is kept out of error strings and logs.
type ResponseError struct {
	Class   string        // "Error", "Warning" or ClassFault
	Code    string        // EWS ResponseCode, e.g. "ErrorItemNotFound"; for a fault without one, the faultcode
	Message string        // MessageText or faultstring; may hold personal data, do not log
	BackOff time.Duration // BackOffMilliseconds from MessageXml (ErrorServerBusy), else 0
}

func (e *ResponseError) Error() string {
	s := "ews: " + e.Code
	if e.Class == ClassFault {
		s = "ews: SOAP fault " + e.Code
	}
	if e.BackOff > 0 {
		s += fmt.Sprintf(" (back off %s)", e.BackOff)
	}
	return s
}

// Is matches the sentinel for e.Code, e.g. ErrItemNotFound.
func (e *ResponseError) Is(target error) bool {
	s := codeSentinels[e.Code]
	return s != nil && s == target
}

// HTTPError is an HTTP status that carried no EWS answer. 401 matches
// ErrUnauthorized and 503 ErrServiceUnavailable.
type HTTPError struct {
	StatusCode int
	RetryAfter time.Duration // from Retry-After, if the server sent one
}

func (e *HTTPError) Error() string {
	s := fmt.Sprintf("ews: HTTP %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", e.RetryAfter)
	}
	return s
}

func (e *HTTPError) Is(target error) bool {
	switch e.StatusCode {
	case http.StatusUnauthorized:
		return target == ErrUnauthorized
	case http.StatusServiceUnavailable:
		return target == ErrServiceUnavailable
	}
	return false
}

// ThrottledError is returned without any network call while a back-off
// covering the call is running: the credential's, set by an earlier
// ErrorServerBusy, or the endpoint's, set by an HTTP Retry-After. It wraps
// the error that started the back-off, so errors.Is(err, ErrServerBusy)
// still holds.
type ThrottledError struct {
	Remaining time.Duration
	Err       error
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("ews: Exchange asked to back off, %s left: %v", e.Remaining, e.Err)
}

func (e *ThrottledError) Unwrap() error { return e.Err }

// RetryAfter returns how long the server asked callers to wait before trying
// again, or 0 if err carries no such request.
func RetryAfter(err error) time.Duration {
	var t *ThrottledError
	if errors.As(err, &t) {
		return t.Remaining
	}
	var r *ResponseError
	if errors.As(err, &r) {
		return r.BackOff
	}
	var h *HTTPError
	if errors.As(err, &h) {
		return h.RetryAfter
	}
	return 0
}

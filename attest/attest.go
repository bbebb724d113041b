// Package attest is the wire format between ENS and an ENSGate EWS proxy in
// front of Exchange: ENS signs, into each of its own EWS calls, the devices
// it will notify; the proxy verifies the list and answers which of them it
// accepted. Both sides import it, so it imports only the standard library.
package attest

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Headers between ENS and the proxy.
const (
	// DevicesHeader carries, on ENS's own EWS calls, the devices ENS will
	// notify, signed with the secret ENS and the proxy share, so that a
	// device cannot claim to be ENS or to be another device.
	DevicesHeader = "X-Ensgate-Devices"
	// AcceptedHeader answers, on the way back, which of those devices the
	// proxy accepted: ENS pushes only to them.
	AcceptedHeader = "X-Ensgate-Accepted-Devices"
)

// attestationMaxAge bounds replays and clock skew between nodes: ENS signs
// each request just before sending it.
const attestationMaxAge = time.Minute

var errBadAttestation = errors.New("invalid or expired device attestation")

// Attestation signs and verifies DevicesHeader values:
//
//	v2;<unix time>;<tenant id>;<escaped ids, comma-separated>;<HMAC-SHA256>
//
// whose HMAC also covers the request it accompanies (method, path, query,
// Authorization and the SHA-256 of the body), so that it cannot be
// replayed with another request.
type Attestation struct {
	Secret []byte
	Now    func() time.Time // nil: time.Now
}

func (a Attestation) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// SignRequest returns the header value naming deviceIDs of the tenant for
// r, whose body is body; r's Authorization must be set already.
func (a Attestation) SignRequest(tenantID int64, deviceIDs []string, r *http.Request, body []byte) string {
	head := "v2;" + strconv.FormatInt(a.now().Unix(), 10) + ";" + strconv.FormatInt(tenantID, 10) + ";" + JoinIDs(deviceIDs)
	return head + ";" + a.mac(head, r, body)
}

// Signer returns a function that sets DevicesHeader on each request it is
// given (for ews.WithRequestSigner).
func (a Attestation) Signer(tenantID int64, deviceIDs []string) func(r *http.Request, body []byte) {
	return func(r *http.Request, body []byte) {
		r.Header.Set(DevicesHeader, a.SignRequest(tenantID, deviceIDs, r, body))
	}
}

// Verify checks a header value that came with r and its body, and returns
// its tenant and devices.
func (a Attestation) Verify(value string, r *http.Request, body []byte) (tenantID int64, deviceIDs []string, err error) {
	i := strings.LastIndexByte(value, ';')
	if i < 0 || len(a.Secret) == 0 {
		return 0, nil, errBadAttestation
	}
	head := value[:i]
	if !hmac.Equal([]byte(value[i+1:]), []byte(a.mac(head, r, body))) {
		return 0, nil, errBadAttestation
	}
	parts := strings.Split(head, ";")
	if len(parts) != 4 || parts[0] != "v2" {
		return 0, nil, errBadAttestation
	}
	ts, err1 := strconv.ParseInt(parts[1], 10, 64)
	tenantID, err2 := strconv.ParseInt(parts[2], 10, 64)
	ids, err3 := SplitIDs(parts[3])
	age := a.now().Sub(time.Unix(ts, 0))
	if err1 != nil || err2 != nil || err3 != nil || age > attestationMaxAge || age < -attestationMaxAge {
		return 0, nil, errBadAttestation
	}
	return tenantID, ids, nil
}

// mac signs head and the request: fields are NUL-separated (no field can
// hold a NUL: the path is checked, header values cannot) and the body
// enters as its SHA-256.
func (a Attestation) mac(head string, r *http.Request, body []byte) string {
	m := hmac.New(sha256.New, a.Secret)
	m.Write([]byte("ensgate devices\x00" + head))
	sum := sha256.Sum256(body)
	write(m, r.Method, r.URL.Path, r.URL.RawQuery, strings.Join(r.Header.Values("Authorization"), "\n"), string(sum[:]))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func write(h hash.Hash, fields ...string) {
	for _, f := range fields {
		h.Write([]byte{0})
		h.Write([]byte(f))
	}
}

// JoinIDs encodes device ids for a header: escaped, comma-separated.
func JoinIDs(ids []string) string {
	escaped := make([]string, len(ids))
	for i, id := range ids {
		escaped[i] = url.QueryEscape(id)
	}
	return strings.Join(escaped, ",")
}

// SplitIDs decodes JoinIDs.
func SplitIDs(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	for i, p := range parts {
		id, err := url.QueryUnescape(p)
		if err != nil {
			return nil, err
		}
		parts[i] = id
	}
	return parts, nil
}

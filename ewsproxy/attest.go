package ewsproxy

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
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

// attestationMaxAge bounds replays and clock skew between nodes.
const attestationMaxAge = 5 * time.Minute

var errBadAttestation = errors.New("invalid or expired device attestation")

// Attestation signs and verifies DevicesHeader values:
// v1;<unix time>;<tenant id>;<escaped ids, comma-separated>;<HMAC-SHA256>.
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

// Sign returns the header value naming deviceIDs of the tenant.
func (a Attestation) Sign(tenantID int64, deviceIDs []string) string {
	body := "v1;" + strconv.FormatInt(a.now().Unix(), 10) + ";" + strconv.FormatInt(tenantID, 10) + ";" + JoinIDs(deviceIDs)
	return body + ";" + a.mac(body)
}

// Verify checks a header value and returns its tenant and devices.
func (a Attestation) Verify(value string) (tenantID int64, deviceIDs []string, err error) {
	i := strings.LastIndexByte(value, ';')
	if i < 0 || len(a.Secret) == 0 || !hmac.Equal([]byte(value[i+1:]), []byte(a.mac(value[:i]))) {
		return 0, nil, errBadAttestation
	}
	parts := strings.Split(value[:i], ";")
	if len(parts) != 4 || parts[0] != "v1" {
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

func (a Attestation) mac(body string) string {
	m := hmac.New(sha256.New, a.Secret)
	m.Write([]byte("ensgate devices\x00" + body))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
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

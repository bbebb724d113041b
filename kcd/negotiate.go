package kcd

import (
	"encoding/base64"
	"encoding/binary"
	"sync/atomic"
	"time"

	"github.com/jcmturner/gofork/encoding/asn1"
	"github.com/jcmturner/gokrb5/v8/asn1tools"
	"github.com/jcmturner/gokrb5/v8/gssapi"
	"github.com/jcmturner/gokrb5/v8/iana/chksumtype"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/spnego"
	"github.com/jcmturner/gokrb5/v8/types"
)

// serviceTicket is a delegated ticket to Exchange, used for many requests.
type serviceTicket struct {
	cred *credential
	// lastMicro is the authenticator time last used (Unix microseconds):
	// each request gets a later one, so Exchange's replay cache never sees
	// two equal authenticators even for concurrent requests.
	lastMicro atomic.Int64
}

// gssChecksum is the authenticator checksum of a GSS-API Kerberos
// initiator (RFC 4121 4.1.1): no channel bindings, integrity and
// confidentiality requested, as Windows and gokrb5 clients send.
var gssChecksum = func() []byte {
	b := make([]byte, 24)
	binary.LittleEndian.PutUint32(b[0:4], 16) // length of the (empty) channel binding hash
	binary.LittleEndian.PutUint32(b[20:24], uint32(gssapi.ContextFlagInteg|gssapi.ContextFlagConf))
	return b
}()

// header builds `Negotiate <SPNEGO NegTokenInit>` with a fresh
// authenticator naming the delegated user. gokrb5's
// spnego.NewNegTokenInitKRB5 names the client it was given and reads the
// wall clock; building the token here needs neither a client per user nor
// a shared clock.
func (st *serviceTicket) header(now time.Time) (string, error) {
	auth, err := newAuthenticator(st.cred.crealm, st.cred.cname, st.nextTime(now))
	if err != nil {
		return "", err
	}
	auth.Cksum = types.Checksum{CksumType: chksumtype.GSSAPI, Checksum: gssChecksum}
	ap, err := messages.NewAPReq(st.cred.ticket, st.cred.key, auth)
	if err != nil {
		return "", err
	}
	apb, err := ap.Marshal()
	if err != nil {
		return "", err
	}
	// The Kerberos mechanism token (RFC 1964 1.1): the mechanism OID, the
	// AP-REQ token id 01 00, the AP-REQ, under [APPLICATION 0].
	mech, err := asn1.Marshal(gssapi.OIDKRB5.OID())
	if err != nil {
		return "", err
	}
	mech = append(mech, 0x01, 0x00)
	mech = asn1tools.AddASNAppTag(append(mech, apb...), 0)
	tok := spnego.SPNEGOToken{Init: true, NegTokenInit: spnego.NegTokenInit{
		MechTypes:      []asn1.ObjectIdentifier{gssapi.OIDKRB5.OID()},
		MechTokenBytes: mech,
	}}
	b, err := tok.Marshal()
	if err != nil {
		return "", err
	}
	return "Negotiate " + base64.StdEncoding.EncodeToString(b), nil
}

// nextTime returns now, or a microsecond after the last time used if now
// is not later.
func (st *serviceTicket) nextTime(now time.Time) time.Time {
	for {
		last := st.lastMicro.Load()
		t := now.UnixMicro()
		if t <= last {
			t = last + 1
		}
		if st.lastMicro.CompareAndSwap(last, t) {
			return time.UnixMicro(t)
		}
	}
}

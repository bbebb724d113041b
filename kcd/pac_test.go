package kcd

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/jcmturner/gofork/encoding/asn1"
	"github.com/jcmturner/gokrb5/v8/asn1tools"
	"github.com/jcmturner/gokrb5/v8/credentials"
	"github.com/jcmturner/gokrb5/v8/crypto"
	"github.com/jcmturner/gokrb5/v8/iana/adtype"
	"github.com/jcmturner/gokrb5/v8/iana/asnAppTag"
	"github.com/jcmturner/gokrb5/v8/iana/keyusage"
	"github.com/jcmturner/gokrb5/v8/keytab"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/types"
)

// selfReply is an S4U2Self reply for alice whose ticket, encrypted for the
// proxy, carries pac as its PAC.
func selfReply(t *testing.T, pac []byte) (*exchanger, *messages.TGSRep) {
	t.Helper()
	const realm = "CORP.EXAMPLE.TEST"
	kt := keytab.New()
	if err := kt.AddEntry("HTTP/proxy.corp.example.test", realm, "pw", time.Now(), 1, 18); err != nil {
		t.Fatal(err)
	}
	x := &exchanger{realm: realm, principal: principalName("HTTP/proxy.corp.example.test"),
		creds: credentials.New("HTTP/proxy.corp.example.test", realm).WithKeytab(kt)}
	inner, err := asn1.Marshal(types.AuthorizationData{{ADType: adtype.ADWin2KPAC, ADData: pac}})
	if err != nil {
		t.Fatal(err)
	}
	et, err := crypto.GetEtype(18)
	if err != nil {
		t.Fatal(err)
	}
	key, err := types.GenerateEncryptionKey(et)
	if err != nil {
		t.Fatal(err)
	}
	alice := types.PrincipalName{NameType: 10, NameString: []string{"alice@corp.example.test"}}
	b, err := asn1.Marshal(messages.EncTicketPart{Flags: types.NewKrbFlags(), Key: key, CRealm: realm, CName: alice,
		AuthTime: time.Now(), EndTime: time.Now().Add(time.Hour),
		AuthorizationData: types.AuthorizationData{{ADType: adtype.ADIfRelevant, ADData: inner}}})
	if err != nil {
		t.Fatal(err)
	}
	b = asn1tools.AddASNAppTag(b, asnAppTag.EncTicketPart)
	serviceKey, _, err := kt.GetEncryptionKey(x.principal, realm, 1, 18)
	if err != nil {
		t.Fatal(err)
	}
	ed, err := crypto.GetEncryptedData(b, serviceKey, keyusage.KDC_REP_TICKET, 1)
	if err != nil {
		t.Fatal(err)
	}
	rep := &messages.TGSRep{KDCRepFields: messages.KDCRepFields{CName: alice, CRealm: realm,
		Ticket:           messages.Ticket{TktVNO: 5, Realm: realm, SName: x.principal, EncPart: ed},
		DecryptedEncPart: messages.EncKDCRepPart{Key: key}}}
	return x, rep
}

// TestPACsWithoutASID: a PAC without logon information (as MIT krb5 1.20+
// issues) or a malformed one does not fail the delegation, only a SID
// check, and does not panic.
func TestPACsWithoutASID(t *testing.T) {
	minimal := make([]byte, 8) // no buffers
	malformed := make([]byte, 24)
	binary.LittleEndian.PutUint32(malformed[0:], 1)           // one buffer
	binary.LittleEndian.PutUint32(malformed[8:], 1)           // logon info
	binary.LittleEndian.PutUint32(malformed[12:], 0xffff)     // of 65535 bytes
	binary.LittleEndian.PutUint64(malformed[16:], 0xffffffff) // far beyond the PAC
	for name, pac := range map[string][]byte{"no logon information": minimal, "malformed": malformed} {
		t.Run(name, func(t *testing.T) {
			x, rep := selfReply(t, pac)
			if err := x.checkSelfTicket(rep, rep.CName); err != nil {
				t.Fatalf("the S4U2Self check fails on the PAC: %v", err)
			}
			sid, err := x.userSID(rep.Ticket)
			if sid != "" || err == nil || !strings.Contains(err.Error(), "PAC") {
				t.Errorf("SID %q, error %v; want none, with the PAC's problem", sid, err)
			}
		})
	}
}

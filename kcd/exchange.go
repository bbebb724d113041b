package kcd

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"math/big"
	"strings"
	"time"

	"github.com/jcmturner/gofork/encoding/asn1"
	"github.com/jcmturner/gokrb5/v8/credentials"
	"github.com/jcmturner/gokrb5/v8/crypto"
	"github.com/jcmturner/gokrb5/v8/crypto/rfc4757"
	"github.com/jcmturner/gokrb5/v8/iana"
	"github.com/jcmturner/gokrb5/v8/iana/errorcode"
	"github.com/jcmturner/gokrb5/v8/iana/flags"
	"github.com/jcmturner/gokrb5/v8/iana/keyusage"
	"github.com/jcmturner/gokrb5/v8/iana/msgtype"
	"github.com/jcmturner/gokrb5/v8/iana/nametype"
	"github.com/jcmturner/gokrb5/v8/iana/patype"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/types"
)

// Protocol pieces gokrb5 v8.4.4 lacks (RFC 4120, MS-SFU).
const (
	// cnameInAddlTkt is KDC option bit 14: the additional ticket's client
	// is the one to be delegated (S4U2Proxy).
	cnameInAddlTkt = 14
	// hmacMD5Checksum is the keyed checksum type PA-FOR-USER uses
	// (KERB_CHECKSUM_HMAC_MD5, MS-SFU 2.2.1), whatever the session key's
	// encryption type.
	hmacMD5Checksum = -138
)

// requestLifetime is the ticket lifetime asked for; the KDC's policy
// shortens it (typically to 10 hours).
const requestLifetime = 24 * time.Hour

// encTypes are offered for session keys, strongest first; gokrb5 can use
// all of them. RC4 stays last for Active Directory accounts that still
// have no AES keys.
var encTypes = []int32{18, 17, 20, 19, 23}

// credential is a ticket with what is needed to use it.
type credential struct {
	ticket messages.Ticket
	key    types.EncryptionKey
	cname  types.PrincipalName // the client the ticket was issued to
	crealm string
	end    time.Time
	start  time.Time
	sid    string // the client's SID from the S4U2Self ticket's PAC ("" without a PAC)
	sidErr error  // why the PAC gave no SID, if it did not
}

// exchanger performs the Kerberos exchanges of constrained delegation for
// one proxy principal.
type exchanger struct {
	realm     string
	principal types.PrincipalName // the proxy's own name
	creds     *credentials.Credentials
	kdc       *transport
	now       func() time.Time
	observe   func(step string, started time.Time)
}

// login gets the proxy's TGT with its keytab (AS exchange with encrypted
// timestamp pre-authentication, RFC 4120 5.2.7.2).
func (x *exchanger) login(ctx context.Context) (*credential, error) {
	nonce, err := newNonce()
	if err != nil {
		return nil, err
	}
	now := x.now().UTC() // KerberosTime is UTC ("Z"), whatever the local zone
	krbtgt := types.PrincipalName{NameType: nametype.KRB_NT_SRV_INST, NameString: []string{"krbtgt", x.realm}}
	// Tickets derived from a TGT can only be forwardable (as S4U2Proxy
	// needs) if the TGT is.
	options := types.NewKrbFlags()
	types.SetFlag(&options, flags.Forwardable)
	req := messages.ASReq{KDCReqFields: messages.KDCReqFields{
		PVNO:    iana.PVNO,
		MsgType: msgtype.KRB_AS_REQ,
		ReqBody: messages.KDCReqBody{
			KDCOptions: options,
			CName:      x.principal,
			Realm:      x.realm,
			SName:      krbtgt,
			Till:       now.Add(requestLifetime),
			Nonce:      nonce,
			EType:      x.keytabTypes(),
		},
	}}
	if len(req.ReqBody.EType) == 0 {
		return nil, &Error{Step: StepLogin, Kind: ErrProxyLogin, Err: errors.New("the keytab has no key for the proxy principal in the realm")}
	}
	// The first request goes without pre-authentication: the KDC's answer
	// names the encryption type (and salt) it wants the timestamp in.
	rep, kdc, err := x.send(ctx, StepLogin, &req)
	var ke *krbError
	if errors.As(err, &ke) && ke.msg.ErrorCode == errorcode.KDC_ERR_PREAUTH_REQUIRED {
		if err := x.preauthenticate(&req, ke.msg); err != nil {
			return nil, &Error{Step: StepLogin, Kind: ErrProxyLogin, KDC: ke.kdc, Err: err}
		}
		rep, kdc, err = x.send(ctx, StepLogin, &req)
	}
	if err != nil {
		return nil, stepError(StepLogin, err)
	}
	var asRep messages.ASRep
	if err := asRep.Unmarshal(rep); err != nil {
		return nil, &Error{Step: StepLogin, Kind: ErrProtocol, KDC: kdc, Err: err}
	}
	if _, err := asRep.DecryptEncPart(x.creds); err != nil {
		return nil, &Error{Step: StepLogin, Kind: ErrProtocol, KDC: kdc, Err: errors.New("the answer does not decrypt with the keytab")}
	}
	enc := asRep.DecryptedEncPart
	switch {
	case enc.Nonce != nonce:
		err = errors.New("nonce mismatch")
	case !asRep.CName.Equal(x.principal) || !strings.EqualFold(asRep.CRealm, x.realm):
		err = errors.New("ticket issued to another client")
	case !sameName(asRep.Ticket.SName, krbtgt) || !sameName(enc.SName, krbtgt):
		err = errors.New("not a ticket-granting ticket")
	}
	if err != nil {
		return nil, &Error{Step: StepLogin, Kind: ErrProtocol, KDC: kdc, Err: err}
	}
	return &credential{ticket: asRep.Ticket, key: enc.Key, cname: asRep.CName, crealm: asRep.CRealm, start: startTime(enc), end: enc.EndTime}, nil
}

// preauthenticate adds PA-ENC-TIMESTAMP in the encryption type the KDC
// asked for (ETYPE-INFO2 in its error), else our strongest key.
func (x *exchanger) preauthenticate(req *messages.ASReq, ke messages.KRBError) error {
	etypeID := req.ReqBody.EType[0]
	var hints types.PADataSequence
	if err := hints.Unmarshal(ke.EData); err == nil {
	hint:
		for _, pa := range hints {
			if pa.PADataType != patype.PA_ETYPE_INFO2 {
				continue
			}
			info, err := pa.GetETypeInfo2()
			if err != nil {
				break
			}
			for _, e := range info {
				if _, _, err := x.creds.Keytab().GetEncryptionKey(x.principal, x.realm, 0, e.EType); err == nil {
					etypeID = e.EType
					break hint
				}
			}
		}
	}
	key, kvno, err := x.creds.Keytab().GetEncryptionKey(x.principal, x.realm, 0, etypeID)
	if err != nil {
		return err
	}
	now := x.now().UTC()
	ts, err := asn1.Marshal(types.PAEncTSEnc{PATimestamp: now.Truncate(time.Second), PAUSec: now.Nanosecond() / 1000})
	if err != nil {
		return err
	}
	enc, err := crypto.GetEncryptedData(ts, key, keyusage.AS_REQ_PA_ENC_TIMESTAMP, kvno)
	if err != nil {
		return err
	}
	b, err := enc.Marshal()
	if err != nil {
		return err
	}
	req.PAData = types.PADataSequence{{PADataType: patype.PA_ENC_TIMESTAMP, PADataValue: b}}
	return nil
}

// s4u2Self asks for a ticket to the proxy itself on behalf of user
// (MS-SFU 3.1.5.1.1): a TGS-REQ for our own name with PA-FOR-USER.
func (x *exchanger) s4u2Self(ctx context.Context, tgt *credential, user string) (*credential, error) {
	name, realm := userName(user, x.realm)
	forUser, err := paForUser(name, realm, tgt.key)
	if err != nil {
		return nil, &Error{Step: StepS4U2Self, Kind: ErrProtocol, Err: err}
	}
	rep, kdc, err := x.tgs(ctx, StepS4U2Self, tgt, x.principal, nil, forUser)
	if err != nil {
		return nil, err
	}
	cred, err := x.checkTGSRep(rep, x.principal)
	if err == nil {
		err = x.checkSelfTicket(rep, name)
	}
	if err == nil {
		cred.sid, cred.sidErr = x.userSID(rep.Ticket)
	}
	if err != nil {
		return nil, &Error{Step: StepS4U2Self, Kind: ErrProtocol, KDC: kdc, Err: err}
	}
	if !types.IsFlagSet(&rep.DecryptedEncPart.Flags, flags.Forwardable) {
		return nil, &Error{Step: StepS4U2Self, Kind: ErrNotForwardable, KDC: kdc}
	}
	return cred, nil
}

// checkSelfTicket verifies whom the S4U2Self ticket is for. The reply's
// client name and ticket are outside its encrypted part (which the nonce
// makes fresh); the ticket, addressed to the proxy, is decrypted with the
// proxy's keys and must hold the reply's session key, so that it is this
// reply's ticket and not an older one of another user put in its place.
// Its client must be the reply's, must not be the proxy (a KDC that
// ignored PA-FOR-USER issues the proxy a ticket for itself), and for a
// plain name must be that name (an enterprise name may be canonicalised to
// the account name).
func (x *exchanger) checkSelfTicket(rep *messages.TGSRep, requested types.PrincipalName) error {
	tkt := &rep.Ticket
	if err := tkt.DecryptEncPart(x.creds.Keytab(), &x.principal); err != nil {
		return fmt.Errorf("the S4U2Self ticket does not decrypt with the proxy's keys: %w", err)
	}
	enc := tkt.DecryptedEncPart
	client := enc.CName
	switch {
	case enc.Key.KeyType != rep.DecryptedEncPart.Key.KeyType || !bytes.Equal(enc.Key.KeyValue, rep.DecryptedEncPart.Key.KeyValue):
		return errors.New("the S4U2Self ticket is not the one its reply was issued with")
	case !sameName(client, rep.CName) || !strings.EqualFold(enc.CRealm, rep.CRealm):
		return errors.New("the S4U2Self reply names another client than its ticket")
	case sameName(client, x.principal):
		return errors.New("the KDC ignored PA-FOR-USER (no S4U2Self support)")
	case requested.NameType != nametype.KRB_NT_ENTERPRISE && !sameName(client, requested):
		return errors.New("the S4U2Self ticket is for another user than requested")
	}
	return nil
}

// userSID reads the user's SID from the PAC of the decrypted S4U2Self
// ticket. A missing or unreadable PAC is not a delegation failure (MIT
// KDCs issue PACs without logon info); it only fails a SID check later.
func (x *exchanger) userSID(tkt messages.Ticket) (sid string, err error) {
	defer func() {
		if p := recover(); p != nil { // gokrb5 trusts PAC buffer offsets
			sid, err = "", fmt.Errorf("the PAC is malformed: %v", p)
		}
	}()
	hasPAC, pac, err := tkt.GetPACType(x.creds.Keytab(), &x.principal, discardLog)
	switch {
	case !hasPAC:
		return "", errors.New("the KDC's ticket carries no PAC")
	case err != nil:
		return "", fmt.Errorf("the PAC does not verify: %w", err)
	case pac.KerbValidationInfo == nil:
		return "", errors.New("the PAC has no logon information")
	}
	info := pac.KerbValidationInfo
	return fmt.Sprintf("%s-%d", info.LogonDomainID.String(), info.UserID), nil
}

// discardLog takes gokrb5's PAC processing chatter.
var discardLog = log.New(io.Discard, "", 0)

// s4u2Proxy exchanges the S4U2Self ticket for one to spn, still on the
// user's behalf (MS-SFU 3.1.5.2.1): the evidence ticket goes as the
// additional ticket with cname-in-addl-tkt.
func (x *exchanger) s4u2Proxy(ctx context.Context, tgt, self *credential, spn types.PrincipalName) (*credential, error) {
	rep, kdc, err := x.tgs(ctx, StepS4U2Proxy, tgt, spn, &self.ticket, nil)
	if err != nil {
		return nil, err
	}
	cred, err := x.checkTGSRep(rep, spn)
	if err == nil && (!rep.CName.Equal(self.cname) || !strings.EqualFold(rep.CRealm, self.crealm)) {
		err = errors.New("ticket issued to another client than the delegated user")
	}
	if err != nil {
		return nil, &Error{Step: StepS4U2Proxy, Kind: ErrProtocol, KDC: kdc, Err: err}
	}
	cred.sid, cred.sidErr = self.sid, self.sidErr // the same user
	return cred, nil
}

// tgs sends a TGS-REQ for sname signed with the TGT (PA-TGS-REQ), with an
// optional additional ticket and extra pre-authentication data, and
// returns the decrypted reply.
func (x *exchanger) tgs(ctx context.Context, step string, tgt *credential, sname types.PrincipalName, additional *messages.Ticket, extra *types.PAData) (*messages.TGSRep, string, error) {
	nonce, err := newNonce()
	if err != nil {
		return nil, "", err
	}
	now := x.now().UTC() // KerberosTime is UTC ("Z"), whatever the local zone
	body := messages.KDCReqBody{
		KDCOptions: types.NewKrbFlags(),
		Realm:      x.realm,
		SName:      sname,
		Till:       now.Add(requestLifetime),
		Nonce:      nonce,
		EType:      encTypes,
	}
	types.SetFlag(&body.KDCOptions, flags.Forwardable)
	types.SetFlag(&body.KDCOptions, flags.Canonicalize)
	if additional != nil {
		body.AdditionalTickets = []messages.Ticket{*additional}
		types.SetFlag(&body.KDCOptions, cnameInAddlTkt)
	}
	// The authenticator's checksum covers the final body, which is why
	// gokrb5's NewTGSReq (signed before additional tickets are added)
	// cannot be used.
	apReq, err := x.paTGSReq(tgt, body, now)
	if err != nil {
		return nil, "", &Error{Step: step, Kind: ErrProtocol, Err: err}
	}
	req := messages.TGSReq{KDCReqFields: messages.KDCReqFields{
		PVNO:    iana.PVNO,
		MsgType: msgtype.KRB_TGS_REQ,
		PAData:  types.PADataSequence{apReq},
		ReqBody: body,
	}}
	if extra != nil {
		req.PAData = append(req.PAData, *extra)
	}
	b, kdc, err := x.send(ctx, step, &req)
	if err != nil {
		return nil, kdc, stepError(step, err)
	}
	var rep messages.TGSRep
	if err := rep.Unmarshal(b); err != nil {
		return nil, kdc, &Error{Step: step, Kind: ErrProtocol, KDC: kdc, Err: err}
	}
	if err := rep.DecryptEncPart(tgt.key); err != nil {
		return nil, kdc, &Error{Step: step, Kind: ErrProtocol, KDC: kdc, Err: errors.New("the answer does not decrypt with the TGT session key")}
	}
	if rep.DecryptedEncPart.Nonce != nonce {
		return nil, kdc, &Error{Step: step, Kind: ErrProtocol, KDC: kdc, Err: errors.New("nonce mismatch")}
	}
	return &rep, kdc, nil
}

// paTGSReq is the AP-REQ that authenticates a TGS-REQ with the TGT, its
// authenticator carrying a checksum of body.
func (x *exchanger) paTGSReq(tgt *credential, body messages.KDCReqBody, now time.Time) (types.PAData, error) {
	b, err := body.Marshal()
	if err != nil {
		return types.PAData{}, err
	}
	et, err := crypto.GetEtype(tgt.key.KeyType)
	if err != nil {
		return types.PAData{}, err
	}
	sum, err := et.GetChecksumHash(tgt.key.KeyValue, b, keyusage.TGS_REQ_PA_TGS_REQ_AP_REQ_AUTHENTICATOR_CHKSUM)
	if err != nil {
		return types.PAData{}, err
	}
	auth, err := newAuthenticator(tgt.crealm, tgt.cname, now)
	if err != nil {
		return types.PAData{}, err
	}
	auth.Cksum = types.Checksum{CksumType: et.GetHashID(), Checksum: sum}
	ap, err := messages.NewAPReq(tgt.ticket, tgt.key, auth)
	if err != nil {
		return types.PAData{}, err
	}
	apb, err := ap.Marshal()
	if err != nil {
		return types.PAData{}, err
	}
	return types.PAData{PADataType: patype.PA_TGS_REQ, PADataValue: apb}, nil
}

// checkTGSRep verifies that the ticket is for sname in our realm and
// returns it as a credential.
func (x *exchanger) checkTGSRep(rep *messages.TGSRep, sname types.PrincipalName) (*credential, error) {
	enc := rep.DecryptedEncPart
	if !sameName(rep.Ticket.SName, sname) || !sameName(enc.SName, sname) {
		return nil, errors.New("ticket for another service")
	}
	if !strings.EqualFold(rep.Ticket.Realm, x.realm) || !strings.EqualFold(enc.SRealm, x.realm) {
		return nil, errors.New("ticket for another realm")
	}
	return &credential{ticket: rep.Ticket, key: enc.Key, cname: rep.CName, crealm: rep.CRealm, start: startTime(enc), end: enc.EndTime}, nil
}

// send marshals and sends a request, timing it for the metrics.
func (x *exchanger) send(ctx context.Context, step string, req interface{ Marshal() ([]byte, error) }) ([]byte, string, error) {
	b, err := req.Marshal()
	if err != nil {
		return nil, "", &Error{Step: step, Kind: ErrProtocol, Err: err}
	}
	started := time.Now()
	rep, kdc, err := x.kdc.exchange(ctx, b)
	if x.observe != nil {
		x.observe(step, started)
	}
	return rep, kdc, err
}

// keytabTypes are the encryption types the keytab has keys for, in our
// order of preference.
func (x *exchanger) keytabTypes() []int32 {
	var have []int32
	for _, et := range encTypes {
		if _, _, err := x.creds.Keytab().GetEncryptionKey(x.principal, x.realm, 0, et); err == nil {
			have = append(have, et)
		}
	}
	return have
}

// stepError turns a transport failure into an *Error for step.
func stepError(step string, err error) error {
	var ke *krbError
	if errors.As(err, &ke) {
		e := &Error{Step: step, Kind: kindOf(step, ke.msg.ErrorCode), Code: ke.msg.ErrorCode, KDC: ke.kdc}
		if ke.msg.EText != "" {
			// Heimdal and AD explain BADOPTION and friends here; the text
			// names services, not users.
			e.Err = errors.New(ke.msg.EText)
		}
		return e
	}
	var e *Error
	if errors.As(err, &e) {
		e.Step = step
		return e
	}
	return &Error{Step: step, Kind: ErrKDCUnreachable, Err: err}
}

// paForUser is PA-FOR-USER (MS-SFU 2.2.1) naming the user to impersonate,
// its checksum keyed with the TGT session key.
func paForUser(name types.PrincipalName, realm string, key types.EncryptionKey) (*types.PAData, error) {
	var data []byte
	data = binary.LittleEndian.AppendUint32(data, uint32(name.NameType))
	for _, s := range name.NameString {
		data = append(data, s...)
	}
	data = append(data, realm...)
	data = append(data, "Kerberos"...)
	sum, err := rfc4757.Checksum(key.KeyValue, keyusage.KERB_NON_KERB_CKSUM_SALT, data)
	if err != nil {
		return nil, err
	}
	b, err := asn1.Marshal(struct {
		UserName    types.PrincipalName `asn1:"explicit,tag:0"`
		UserRealm   string              `asn1:"generalstring,explicit,tag:1"`
		Cksum       types.Checksum      `asn1:"explicit,tag:2"`
		AuthPackage string              `asn1:"generalstring,explicit,tag:3"`
	}{name, realm, types.Checksum{CksumType: hmacMD5Checksum, Checksum: sum}, "Kerberos"})
	if err != nil {
		return nil, err
	}
	return &types.PAData{PADataType: patype.PA_FOR_USER, PADataValue: b}, nil
}

// userName is the principal PA-FOR-USER names: a UPN as an enterprise
// name (one string, resolved by the KDC; MS-SFU 3.1.5.1.1.1) in the
// service realm, a bare name as a principal of the service realm.
func userName(user, realm string) (types.PrincipalName, string) {
	if strings.Contains(user, "@") {
		return types.PrincipalName{NameType: nametype.KRB_NT_ENTERPRISE, NameString: []string{user}}, realm
	}
	return types.PrincipalName{NameType: nametype.KRB_NT_PRINCIPAL, NameString: []string{user}}, realm
}

// principalName parses "service/host" or "name" (no realm).
func principalName(s string) types.PrincipalName {
	parts := strings.Split(s, "/")
	if len(parts) > 1 {
		return types.PrincipalName{NameType: nametype.KRB_NT_SRV_INST, NameString: parts}
	}
	return types.PrincipalName{NameType: nametype.KRB_NT_PRINCIPAL, NameString: parts}
}

// sameName compares principal names as Kerberos does (name type not
// significant), ignoring case: Active Directory canonicalises host names.
func sameName(a, b types.PrincipalName) bool {
	if len(a.NameString) != len(b.NameString) {
		return false
	}
	for i := range a.NameString {
		if !strings.EqualFold(a.NameString[i], b.NameString[i]) {
			return false
		}
	}
	return true
}

func startTime(enc messages.EncKDCRepPart) time.Time {
	if enc.StartTime.IsZero() {
		return enc.AuthTime
	}
	return enc.StartTime
}

// newAuthenticator is gokrb5's authenticator at our clock's time (tests
// move the clock to provoke KRB_AP_ERR_SKEW).
func newAuthenticator(crealm string, cname types.PrincipalName, now time.Time) (types.Authenticator, error) {
	a, err := types.NewAuthenticator(crealm, cname)
	if err != nil {
		return a, err
	}
	now = now.UTC()
	a.CTime = now.Truncate(time.Second)
	a.Cusec = now.Nanosecond() / 1000
	return a, nil
}

func newNonce() (int, error) {
	n, err := rand.Int(rand.Reader, big.NewInt(math.MaxInt32))
	if err != nil {
		return 0, fmt.Errorf("kcd: nonce: %w", err)
	}
	return int(n.Int64()), nil
}

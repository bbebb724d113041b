package kcd

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/jcmturner/gokrb5/v8/iana/errorcode"
	"github.com/jcmturner/gokrb5/v8/messages"
)

// maxReply bounds a KDC's answer. Tickets with a large PAC (users in many
// groups) reach tens of KiB; a megabyte is never legitimate.
const maxReply = 1 << 20

// transport sends Kerberos messages to the KDCs over TCP (RFC 4120 7.2.2:
// a 4-byte big-endian length, then the message). gokrb5's transport is
// unexported, and S4U needs one that honours contexts and reports which
// KDC failed how.
type transport struct {
	kdcs    []string      // host:port, tried in order from the last that answered
	timeout time.Duration // per KDC attempt, dial to last byte
	// answered is the index of the KDC that answered last: with the first
	// KDC down, each request would otherwise wait out its timeout first.
	answered atomic.Int32
}

// krbError is a KRB-ERROR answer and the KDC that sent it.
type krbError struct {
	msg messages.KRBError
	kdc string
}

func (e *krbError) Error() string { return errorcode.Lookup(e.msg.ErrorCode) }

// exchange sends req to the first KDC that answers and returns its reply
// and address. A KRB-ERROR answer is returned as *krbError; an unreachable
// or busy KDC (KDC_ERR_SVC_UNAVAILABLE) makes it try the next one.
func (t *transport) exchange(ctx context.Context, req []byte) ([]byte, string, error) {
	var errs []error
	first := int(t.answered.Load())
	for n := range t.kdcs {
		i := (first + n) % len(t.kdcs)
		kdc := t.kdcs[i]
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		rep, err := t.roundTrip(ctx, kdc, req)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", kdc, err))
			continue
		}
		if len(rep) > 0 && rep[0] == 0x7e { // [APPLICATION 30] KRB-ERROR
			var ke messages.KRBError
			if err := ke.Unmarshal(rep); err != nil {
				return nil, kdc, &Error{Kind: ErrProtocol, KDC: kdc, Err: fmt.Errorf("undecodable KRB-ERROR: %w", err)}
			}
			if ke.ErrorCode == errorcode.KDC_ERR_SVC_UNAVAILABLE {
				errs = append(errs, fmt.Errorf("%s: %s", kdc, errorcode.Lookup(ke.ErrorCode)))
				continue
			}
			t.answered.Store(int32(i))
			return nil, kdc, &krbError{msg: ke, kdc: kdc}
		}
		t.answered.Store(int32(i))
		return rep, kdc, nil
	}
	return nil, "", &Error{Kind: ErrKDCUnreachable, Err: errors.Join(errs...)}
}

func (t *transport) roundTrip(ctx context.Context, kdc string, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", kdc)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	// The deadline bounds a KDC that accepts and never answers; the
	// AfterFunc makes cancellation of the caller's context immediate.
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	msg := make([]byte, 4+len(req))
	binary.BigEndian.PutUint32(msg, uint32(len(req)))
	copy(msg[4:], req)
	if _, err := conn.Write(msg); err != nil {
		return nil, err
	}
	var size [4]byte
	if _, err := io.ReadFull(conn, size[:]); err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	n := binary.BigEndian.Uint32(size[:])
	if n == 0 || n > maxReply {
		return nil, fmt.Errorf("answer of %d bytes", n)
	}
	rep := make([]byte, n)
	if _, err := io.ReadFull(conn, rep); err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	return rep, nil
}

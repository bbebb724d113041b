package kdctest

import (
	"encoding/binary"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/jcmturner/gokrb5/v8/iana/errorcode"
	"github.com/jcmturner/gokrb5/v8/iana/nametype"
	"github.com/jcmturner/gokrb5/v8/messages"
	"github.com/jcmturner/gokrb5/v8/types"
)

// fakeKDC answers every request, over TCP (one request per connection, as
// KDCs do) and UDP on one port, with a KRB-ERROR BADOPTION whose e-text is
// the request, so a reply tells which request it answers (see answers).
func fakeKDC(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		ln.Close()
		t.Skip("no UDP port beside the TCP one:", err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := readFrame(c)
				if err != nil {
					return
				}
				c.Write(frame(fakeReply(req[4:])))
			}()
		}
	}()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(fakeReply(buf[:n]), from)
		}
	}()
	return ln.Addr().String()
}

func fakeReply(req []byte) []byte {
	e := messages.NewKRBError(types.NewPrincipalName(nametype.KRB_NT_SRV_INST, "krbtgt/X"), "X",
		errorcode.KDC_ERR_BADOPTION, string(req))
	b, err := e.Marshal()
	if err != nil {
		panic(err)
	}
	return b
}

// answers returns the request a fakeKDC reply answers.
func answers(rep []byte) string {
	var e messages.KRBError
	if err := e.Unmarshal(rep); err != nil {
		return "not a KRB-ERROR: " + err.Error()
	}
	return e.EText
}

func frame(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(msg))), msg...)
}

// The relay passes requests and replies through unchanged, over TCP
// (several requests on one client connection) and UDP, and counts them by
// type.
func TestRelay(t *testing.T) {
	r, err := startRelay(fakeKDC(t))
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	asReq := []byte{0x6a, 0x03, 0x02, 0x01, 0x05}
	tgsReq := []byte{0x6c, 0x03, 0x02, 0x01, 0x05}
	other := []byte{0x30, 0x00}

	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, req := range [][]byte{asReq, tgsReq, tgsReq, other} {
		if _, err := c.Write(frame(req)); err != nil {
			t.Fatal(err)
		}
		rep, err := readFrame(c)
		if err != nil {
			t.Fatal(err)
		}
		if int(binary.BigEndian.Uint32(rep)) != len(rep)-4 || answers(rep[4:]) != string(req) {
			t.Fatalf("TCP reply %x does not answer %x", rep, req)
		}
	}

	u, err := net.Dial("udp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := u.Write(asReq); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65536)
	n, err := u.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if answers(buf[:n]) != string(asReq) {
		t.Fatalf("UDP reply %x does not answer %x", buf[:n], asReq)
	}

	if as, tgs := r.as.Load(), r.tgs.Load(); as != 2 || tgs != 2 || r.other.Load() != 1 {
		t.Errorf("counted %d AS, %d TGS, %d other; want 2, 2, 1", as, tgs, r.other.Load())
	}
	if errs := r.kdcErrors(); !slices.Equal(errs, []int32{13, 13, 13, 13, 13}) {
		t.Errorf("KDC errors %v, want five 13", errs)
	}
}

// A KDC that does not answer: the relay counts the request and closes the
// client's connection, as a dead KDC would (no hang).
func TestRelayKDCDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close()
	r, err := startRelay(down)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	c, err := net.Dial("tcp", r.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(frame([]byte{0x6a, 0x00})); err != nil {
		t.Fatal(err)
	}
	if rep, err := readFrame(c); err == nil {
		t.Fatalf("got a reply %x from a KDC that is down", rep)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the relay kept the connection open")
	}
	if r.as.Load() != 1 {
		t.Errorf("counted %d AS-REQs, want 1", r.as.Load())
	}
}

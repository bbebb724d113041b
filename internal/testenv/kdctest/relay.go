package kdctest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jcmturner/gokrb5/v8/messages"
)

// maxMessage bounds one Kerberos message (tickets with a PAC are a few KiB).
const maxMessage = 1 << 20

// relay forwards Kerberos messages between clients and one KDC, over TCP
// (RFC 4120 7.2.2: a 4-byte big-endian length, then the DER message) and
// UDP on the same port number, and counts the requests by type. Each TCP
// request goes to the KDC on a connection of its own, so what the KDC sees is
// exactly what was counted.
type relay struct {
	backend string // the KDC's "ip:port", TCP and UDP
	tcp     net.Listener
	udp     net.PacketConn

	as, tgs, other atomic.Int64

	errMu  sync.Mutex
	errors []int32 // the KRB-ERROR codes the KDC answered, in order

	mu     sync.Mutex
	conns  map[io.Closer]struct{} // open client connections, closed by close
	closed bool
	wg     sync.WaitGroup
}

// startRelay listens on 127.0.0.1, TCP and UDP on one free port.
func startRelay(backend string) (*relay, error) {
	var lastErr error
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		pc, err := net.ListenPacket("udp", ln.Addr().String())
		if err != nil { // the port is taken for UDP: try another
			ln.Close()
			lastErr = err
			continue
		}
		r := &relay{backend: backend, tcp: ln, udp: pc, conns: map[io.Closer]struct{}{}}
		r.wg.Add(2)
		go r.acceptTCP()
		go r.serveUDP()
		return r, nil
	}
	return nil, fmt.Errorf("kdctest: relay: no port free for both TCP and UDP: %v", lastErr)
}

func (r *relay) addr() string { return r.tcp.Addr().String() }

// count classifies a request by its outer ASN.1 tag: AS-REQ is
// [APPLICATION 10], TGS-REQ [APPLICATION 12], both constructed.
func (r *relay) count(msg []byte) {
	switch {
	case len(msg) > 0 && msg[0] == 0x6a:
		r.as.Add(1)
	case len(msg) > 0 && msg[0] == 0x6c:
		r.tgs.Add(1)
	default:
		r.other.Add(1)
	}
}

// noteReply records the error code of a KRB-ERROR reply ([APPLICATION 30]).
func (r *relay) noteReply(msg []byte) {
	if len(msg) == 0 || msg[0] != 0x7e {
		return
	}
	var e messages.KRBError
	if err := e.Unmarshal(msg); err != nil {
		return
	}
	r.errMu.Lock()
	r.errors = append(r.errors, e.ErrorCode)
	r.errMu.Unlock()
}

// kdcErrors returns the KRB-ERROR codes the KDC answered so far.
func (r *relay) kdcErrors() []int32 {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return append([]int32(nil), r.errors...)
}

func (r *relay) track(c io.Closer) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.conns[c] = struct{}{}
	return true
}

func (r *relay) untrack(c io.Closer) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
}

// close stops listening, drops open connections and waits for the handlers.
func (r *relay) close() {
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.tcp.Close()
	r.udp.Close()
	r.wg.Wait()
}

func (r *relay) acceptTCP() {
	defer r.wg.Done()
	for {
		c, err := r.tcp.Accept()
		if err != nil {
			return
		}
		if !r.track(c) {
			c.Close()
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer r.untrack(c)
			defer c.Close()
			r.serveTCP(c)
		}()
	}
}

// serveTCP relays requests from one client connection until it closes. A KDC
// that cannot be reached closes the client's connection, as a dead KDC would.
func (r *relay) serveTCP(c net.Conn) {
	for {
		req, err := readFrame(c)
		if err != nil {
			return
		}
		r.count(req[4:])
		rep, err := r.exchangeTCP(req)
		if err != nil {
			return
		}
		r.noteReply(rep[4:])
		if _, err := c.Write(rep); err != nil {
			return
		}
	}
}

func (r *relay) exchangeTCP(req []byte) ([]byte, error) {
	kdc, err := net.DialTimeout("tcp", r.backend, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if !r.track(kdc) {
		kdc.Close()
		return nil, net.ErrClosed
	}
	defer r.untrack(kdc)
	defer kdc.Close()
	kdc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := kdc.Write(req); err != nil {
		return nil, err
	}
	return readFrame(kdc)
}

// readFrame reads one length-prefixed message and returns it with its prefix.
func readFrame(c io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxMessage { // also a set high bit (RFC 4120's reserved extension bit)
		return nil, errors.New("kdctest: relay: message too long")
	}
	buf := make([]byte, 4+n)
	copy(buf, hdr[:])
	if _, err := io.ReadFull(c, buf[4:]); err != nil {
		return nil, err
	}
	return buf, nil
}

func (r *relay) serveUDP() {
	defer r.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := r.udp.ReadFrom(buf)
		if err != nil {
			return
		}
		req := append([]byte(nil), buf[:n]...)
		r.count(req)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.exchangeUDP(req, from)
		}()
	}
}

func (r *relay) exchangeUDP(req []byte, from net.Addr) {
	kdc, err := net.Dial("udp", r.backend)
	if err != nil {
		return
	}
	if !r.track(kdc) {
		kdc.Close()
		return
	}
	defer r.untrack(kdc)
	defer kdc.Close()
	kdc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := kdc.Write(req); err != nil {
		return
	}
	rep := make([]byte, 65536)
	n, err := kdc.Read(rep)
	if err != nil {
		return
	}
	r.noteReply(rep[:n])
	r.udp.WriteTo(rep[:n], from)
}

package cluster

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
)

const (
	// rpcForward opens a connection that carries commands forwarded to
	// the leader, beside Raft's own RPCs (whose first byte is 0 to 4) on
	// the same port and under the same mutual TLS.
	rpcForward byte = 'F'
	// maxHandshakes bounds the connections not yet authenticated, and
	// maxHandshakesFrom those from one address: more are closed at once,
	// so that idle sockets from a host cannot starve the real peers.
	maxHandshakes     = 1024
	maxHandshakesFrom = 16
	// handshakeTimeout bounds a handshake and the first byte after it.
	handshakeTimeout = 2 * time.Second
	// MaxCommand bounds a forwarded command: a table of ten thousand
	// services is well under it.
	MaxCommand = 64 << 20
)

// stream is Raft's StreamLayer over mutual TLS. Accept never waits on a
// handshake: each connection is authenticated in its own goroutine with
// a deadline, at most maxHandshakes at once, and only then handed to
// Raft, or to onRPC when it carries forwarded commands.
type stream struct {
	ln        net.Listener
	advertise net.Addr
	tls       *TLS
	members   func(string) bool
	// expect names the member that should answer at a Raft address,
	// or "" when it is not known.
	expect func(addr string) string
	log    *slog.Logger
	onRPC  func(peer string, c net.Conn)

	conns    chan net.Conn
	mu       sync.Mutex
	pending  map[netip.Addr]int // handshakes in progress by source
	inflight int
	done     chan struct{}
	close    sync.Once
	refused  atomic.Uint64
	lastWarn atomic.Int64 // unix nanoseconds of the last refusal logged
}

var _ raft.StreamLayer = (*stream)(nil)

func newStream(bind string, advertise net.Addr, t *TLS, members func(string) bool, expect func(string) string,
	log *slog.Logger, onRPC func(string, net.Conn)) (*stream, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	s := &stream{ln: ln, advertise: advertise, tls: t, members: members, expect: expect, log: log, onRPC: onRPC,
		conns: make(chan net.Conn), pending: map[netip.Addr]int{}, done: make(chan struct{})}
	go s.serve()
	return s, nil
}

func (s *stream) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.done:
				return
			default:
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: do not spin
			continue
		}
		from := remoteIP(c)
		s.mu.Lock()
		room := s.inflight < maxHandshakes && s.pending[from] < maxHandshakesFrom
		if room {
			s.inflight++
			s.pending[from]++
		}
		s.mu.Unlock()
		if !room {
			s.refuse(c, errors.New("too many connections awaiting authentication"))
			continue
		}
		go s.authenticate(c, from)
	}
}

// refuse closes c, counts it and logs at most once a minute: a scan of
// the port must not flood the log.
func (s *stream) refuse(c net.Conn, err error) {
	c.Close()
	n := s.refused.Add(1)
	now := time.Now().UnixNano()
	last := s.lastWarn.Load()
	if now-last >= int64(time.Minute) && s.lastWarn.CompareAndSwap(last, now) {
		s.log.Warn("raft: peer refused", "peer", c.RemoteAddr().String(), "err", err, "refused_total", n)
	}
}

func (s *stream) authenticate(c net.Conn, from netip.Addr) {
	release := sync.OnceFunc(func() {
		s.mu.Lock()
		s.inflight--
		if s.pending[from]--; s.pending[from] == 0 {
			delete(s.pending, from)
		}
		s.mu.Unlock()
	})
	defer release()
	tc := tls.Server(c, s.tls.config(nil, s.members, from))
	tc.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		s.refuse(c, fmt.Errorf("TLS handshake failed: %w", err))
		return
	}
	name, err := s.tls.peerName(tc.ConnectionState(), s.members, from)
	if err != nil { // checked in the handshake already
		s.refuse(c, err)
		return
	}
	br := bufio.NewReader(tc)
	first, err := br.Peek(1)
	if err != nil {
		tc.Close()
		return
	}
	tc.SetDeadline(time.Time{})
	release()
	if first[0] == rpcForward {
		br.Discard(1)
		s.onRPC(name, &peeked{Conn: tc, r: br})
		return
	}
	conn := claims(tc, br, name, func(err error) { s.refuse(tc, err) })
	select {
	case s.conns <- conn:
	case <-s.done:
		conn.Close()
	}
}

// claims hands Raft a peer's requests only once each is known to come
// under the member name of its certificate: a request is decoded (as
// Raft decodes it), the ID in its header compared with name, and only
// then its bytes passed on. Anything else closes the connection.
func claims(c net.Conn, br *bufio.Reader, name string, refuse func(error)) net.Conn {
	pr, pw := io.Pipe()
	go func() {
		rec := &recorder{r: br}
		dec := codec.NewDecoder(rec, &codec.MsgpackHandle{})
		for {
			rec.buf = rec.buf[:0]
			kind, err := rec.ReadByte()
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			var hdr raft.RPCHeader
			var snapshot int64
			switch kind {
			case 0: // AppendEntries
				var req raft.AppendEntriesRequest
				err, hdr = dec.Decode(&req), req.RPCHeader
			case 1: // RequestVote
				var req raft.RequestVoteRequest
				err, hdr = dec.Decode(&req), req.RPCHeader
			case 2: // InstallSnapshot, then Size bytes of snapshot
				var req raft.InstallSnapshotRequest
				err, hdr, snapshot = dec.Decode(&req), req.RPCHeader, req.Size
			case 3: // TimeoutNow
				var req raft.TimeoutNowRequest
				err, hdr = dec.Decode(&req), req.RPCHeader
			case 4: // RequestPreVote
				var req raft.RequestPreVoteRequest
				err, hdr = dec.Decode(&req), req.RPCHeader
			default:
				err = fmt.Errorf("unknown Raft request type %d", kind)
			}
			if err == nil && string(hdr.ID) != name {
				err = fmt.Errorf("%s, by its certificate, speaks to Raft as %q", name, hdr.ID)
			}
			if err == nil {
				_, err = pw.Write(rec.buf)
			}
			if err == nil && snapshot > 0 {
				_, err = io.CopyN(pw, br, snapshot)
			}
			if err != nil {
				refuse(err)
				pw.CloseWithError(err)
				return
			}
		}
	}()
	return &claimed{peeked: peeked{Conn: c, r: pr}, pipe: pr}
}

// claimed is a connection whose requests claims checks; closing it ends
// the checking goroutine too, even one waiting for Raft to read.
type claimed struct {
	peeked
	pipe *io.PipeReader
}

func (c *claimed) Close() error {
	c.pipe.Close()
	return c.peeked.Close()
}

// recorder keeps the bytes a decoder takes from r, exactly: r is a
// ByteScanner, so the decoder reads no further than its value.
type recorder struct {
	r   *bufio.Reader
	buf []byte
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.buf = append(r.buf, p[:n]...)
	return n, err
}

func (r *recorder) ReadByte() (byte, error) {
	b, err := r.r.ReadByte()
	if err == nil {
		r.buf = append(r.buf, b)
	}
	return b, err
}

func (r *recorder) UnreadByte() error {
	if err := r.r.UnreadByte(); err != nil {
		return err
	}
	r.buf = r.buf[:len(r.buf)-1]
	return nil
}

func remoteIP(c net.Conn) netip.Addr {
	ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	return ap.Addr()
}

// peeked is a connection whose reads come from r: bytes read ahead, or
// checked first.
type peeked struct {
	net.Conn
	r io.Reader
}

func (p *peeked) Read(b []byte) (int, error) { return p.r.Read(b) }

func (s *stream) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

func (s *stream) Close() error {
	s.close.Do(func() { close(s.done) })
	return s.ln.Close()
}

func (s *stream) Addr() net.Addr { return s.advertise }

// Dial connects to a member's Raft address; the peer must be the member
// known at that address, when one is.
func (s *stream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return s.dial(string(address), s.expect(string(address)), timeout)
}

func (s *stream) dial(address, want string, timeout time.Duration) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil, fmt.Errorf("raft address %q: %w", address, err)
	}
	cfg := s.tls.config(func(name string) error {
		if want != "" && name != want {
			return fmt.Errorf("%s answers as %s, not %s", address, name, want)
		}
		return nil
	}, s.members, ap.Addr())
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", address, cfg)
	if err != nil {
		return nil, fmt.Errorf("raft over TLS to %s: %w", address, err)
	}
	return c, nil
}

// call sends one forwarded request to the member want at address and
// reads its answer.
func (s *stream) call(address, want string, req []byte, timeout time.Duration) ([]byte, error) {
	c, err := s.dial(address, want, min(timeout, 2*time.Second))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte{rpcForward}); err != nil {
		return nil, err
	}
	if err := writeFrame(c, req); err != nil {
		return nil, err
	}
	return readFrame(c, MaxCommand)
}

func writeFrame(w io.Writer, b []byte) error {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(b)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

func readFrame(r io.Reader, limit int) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if int64(size) > int64(limit) {
		return nil, fmt.Errorf("a message of %d bytes is over the limit of %d", size, limit)
	}
	b := make([]byte, size)
	_, err := io.ReadFull(r, b)
	return b, err
}

package healthcheck

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tcpProber runs TCP checks with plain system calls: a check is a
// non-blocking socket (set to close with a reset), a connect, one
// registration in the prober's epoll instance and, when it passed, a
// disconnect that keeps the socket for the next check (else a close). The epoll
// instance itself is waited on through Go's poller, so one goroutine
// collects the answers of every check in flight, in batches, and times
// them out from one heap of deadlines with one timer. net.Dialer costs
// about twice the system calls (deadlines, addresses, options, its own
// registration), a goroutine per dial and a timer per attempt; at
// thousands of checks a second that was most of the checker's CPU.
type tcpProber struct {
	// closeIdle closes the epoll instance when no check is in flight
	// (a prober of one standalone checker); else Close does.
	closeIdle bool

	mu      sync.Mutex
	ep      *os.File // the epoll instance, nil until needed
	epfd    int      // ep's descriptor
	rc      syscall.RawConn
	pending map[uint32]*probe // by id
	nextID  uint32
	running bool // the collecting goroutine
	// deadlines of the checks in flight, earliest first; an entry whose
	// check has ended is skipped when it comes up.
	deadlines timeHeap[uint32] // ids
	// spare holds sockets of checks that passed, disconnected and still
	// registered (disarmed) in ep, by address family, for later checks:
	// a socket and its file cost as much to make and free as the
	// handshake's own packets.
	spare map[int][]int
}

// maxSpare bounds the spare sockets of each family: more than the checks
// in flight at once is never needed.
const maxSpare = 256

type probe struct {
	fd     int
	family int
	reused bool // a spare socket, already in ep
	begun  time.Time
	done   func(Result) // called once, never under the prober's lock
}

// end answers the probe's check with what its connect came to.
func (pr *probe) end(err error) {
	switch {
	case err == nil:
		pr.done(up)
	case err == errTimeout:
		pr.done(fail("connect: timeout after %s", time.Since(pr.begun).Round(time.Millisecond)))
	default:
		pr.done(fail("connect: %w", err))
	}
}

// errTimeout is a check that ran out of time.
var errTimeout = errors.New("timeout")

func newTCPProber(closeIdle bool) *tcpProber {
	return &tcpProber{closeIdle: closeIdle, pending: map[uint32]*probe{}, spare: map[int][]int{}}
}

// Close releases the epoll instance; checks in flight fail.
func (p *tcpProber) Close() error {
	p.mu.Lock()
	ended, err := p.closeLocked()
	p.mu.Unlock()
	endAll(ended, errStopped)
	return err
}

var errStopped = errors.New("checker stopped")

// closeLocked closes the epoll instance and returns the checks that were
// in flight, for the caller to end once it has let the lock go.
func (p *tcpProber) closeLocked() ([]*probe, error) {
	if p.ep == nil {
		return nil, nil
	}
	var ended []*probe
	for id, pr := range p.pending {
		delete(p.pending, id)
		rawClose(pr.fd)
		ended = append(ended, pr)
	}
	for fam, fds := range p.spare {
		for _, fd := range fds {
			rawClose(fd)
		}
		delete(p.spare, fam)
	}
	err := p.ep.Close()
	// Its collector sees the close and leaves.
	p.ep, p.rc, p.running = nil, nil, false
	p.deadlines.clear()
	return ended, err
}

func endAll(prs []*probe, err error) {
	for _, pr := range prs {
		pr.end(err)
	}
}

// tcpTarget is where a TCP check connects, resolved once.
type tcpTarget struct {
	family int
	to     []byte        // struct sockaddr_in or sockaddr_in6, as connect(2) takes it
	from   unix.Sockaddr // bindto, or nil
}

func newTCPTarget(addr netip.AddrPort, bind netip.Addr) tcpTarget {
	t := tcpTarget{family: unix.AF_INET}
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		t.family = unix.AF_INET6
	}
	t.to = rawSockaddr(t.family, addr)
	if bind.IsValid() {
		t.from = sockaddr(netip.AddrPortFrom(bind, 0))
	}
	return t
}

// rawSockaddr lays out a as the kernel's struct sockaddr_in (AF_INET) or
// sockaddr_in6.
func rawSockaddr(family int, a netip.AddrPort) []byte {
	var b []byte
	if family == unix.AF_INET {
		b = make([]byte, unix.SizeofSockaddrInet4)
		a4 := a.Addr().Unmap().As4()
		copy(b[4:8], a4[:])
	} else {
		b = make([]byte, unix.SizeofSockaddrInet6)
		a16 := a.Addr().As16()
		copy(b[8:24], a16[:])
	}
	binary.NativeEndian.PutUint16(b[0:2], uint16(family))
	binary.BigEndian.PutUint16(b[2:4], a.Port())
	return b
}

// rawConnect and rawClose skip the Go scheduler's system call bookkeeping,
// which is for calls that may block. A check's socket is non-blocking and
// closes with a reset, so neither blocks; but each can take tens of
// microseconds when the packet's path runs in the call (a bridge, or the
// host's own conntrack and NAT), long enough for the runtime to treat the
// thread as blocked and wake other threads around it, at thousands of
// checks a second.
func rawConnect(fd int, sa []byte) error {
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa[0])), uintptr(len(sa)))
	if e != 0 {
		return e
	}
	return nil
}

func rawClose(fd int) { unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

// rawDisconnect is connect(2) with AF_UNSPEC: the connection ends (with a
// reset, for an established one) and the socket can connect again.
func rawDisconnect(fd int) error {
	sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	_, _, e := unix.RawSyscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa.Family))
	if e != 0 {
		return e
	}
	return nil
}

// rawLingerReset sets SO_LINGER to close with a reset.
func rawLingerReset(fd int) error {
	l := unix.Linger{Onoff: 1}
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_LINGER, uintptr(unsafe.Pointer(&l)), unsafe.Sizeof(l), 0)
	if e != 0 {
		return e
	}
	return nil
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() || a.Addr().Is4In6() {
		return &unix.SockaddrInet4{Port: int(a.Port()), Addr: a.Addr().Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: int(a.Port()), Addr: a.Addr().As16()}
}

// start connects to t and returns at once; done gets the result by the
// deadline, from this call (a result known at once) or from the prober's
// collector. cancel ends a check in flight without an answer: it reports
// false when the answer is already given or on its way.
func (p *tcpProber) start(t tcpTarget, by time.Time, done func(Result)) (cancel func() bool) {
	begun := time.Now()
	fd, reused := -1, false
	if t.from == nil {
		fd, reused = p.takeSpare(t.family)
	}
	if !reused {
		var err error
		if fd, err = unix.Socket(t.family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0); err != nil {
			done(fail("socket: %w", err))
			return noCancel
		}
		// Close with a reset: no FIN exchange and no TIME_WAIT socket
		// left per check (thousands a second with many servers), as
		// HAProxy does.
		if err := rawLingerReset(fd); err != nil {
			rawClose(fd)
			done(fail("socket: %w", err))
			return noCancel
		}
	}
	if t.from != nil {
		if err := unix.Bind(fd, t.from); err != nil {
			rawClose(fd)
			done(fail("bind: %w", err))
			return noCancel
		}
	}
	switch err := rawConnect(fd, t.to); err {
	case nil:
		rawClose(fd)
		done(up)
		return noCancel
	case unix.EINPROGRESS:
	default:
		rawClose(fd)
		done(fail("connect: %w", err))
		return noCancel
	}
	id, err := p.watch(&probe{fd: fd, family: t.family, reused: reused, begun: begun, done: done}, by)
	if err != nil {
		rawClose(fd)
		done(fail("connect: %w", err))
		return noCancel
	}
	return func() bool { return p.cancel(id) }
}

func noCancel() bool { return false }

// takeSpare returns a spare socket of the family, if there is one.
func (p *tcpProber) takeSpare(family int) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fds := p.spare[family]
	if len(fds) == 0 {
		return -1, false
	}
	fd := fds[len(fds)-1]
	p.spare[family] = fds[:len(fds)-1]
	return fd, true
}

// recycle ends the connection of a check that passed, with a reset, and
// keeps its socket, still registered in ep but disarmed since its one
// event was read, for a later check. connect(2) with AF_UNSPEC does what
// close does to the connection and leaves the socket as socket(2) made it.
// Sockets of failed, timed-out or cancelled checks are closed instead: a
// connect still in progress could yet raise an event.
func (p *tcpProber) recycle(ep *os.File, pr *probe) {
	if p.closeIdle || rawDisconnect(pr.fd) != nil {
		rawClose(pr.fd)
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ep != ep || len(p.spare[pr.family]) >= maxSpare {
		rawClose(pr.fd)
		return
	}
	p.spare[pr.family] = append(p.spare[pr.family], pr.fd)
}

// cancel ends check id if it is still in flight.
func (p *tcpProber) cancel(id uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	pr, ok := p.pending[id]
	if ok {
		delete(p.pending, id)
		rawClose(pr.fd) // which also takes it out of the epoll set
	}
	return ok
}

// check is start for a caller that waits: it connects to t by the
// deadline, and ctx ending ends it too.
func (p *tcpProber) check(ctx context.Context, t tcpTarget, by time.Time) Result {
	begun := time.Now()
	answer := make(chan Result, 1)
	cancel := p.start(t, by, func(r Result) { answer <- r })
	select {
	case r := <-answer:
		return r
	case <-ctx.Done():
	}
	if !cancel() {
		return <-answer // it came as ctx ended
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fail("connect: timeout after %s", time.Since(begun).Round(time.Millisecond))
	}
	return fail("connect: %w", ctx.Err())
}

// watch registers pr's socket for the collector, to answer by the
// deadline.
func (p *tcpProber) watch(pr *probe, by time.Time) (uint32, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ep == nil {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return 0, fmt.Errorf("epoll: %w", err)
		}
		if err := unix.SetNonblock(epfd, true); err != nil {
			unix.Close(epfd)
			return 0, fmt.Errorf("epoll: %w", err)
		}
		p.ep, p.epfd = os.NewFile(uintptr(epfd), "tcp-checks"), epfd
		if p.rc, err = p.ep.SyscallConn(); err != nil {
			p.ep.Close()
			p.ep = nil
			return 0, fmt.Errorf("epoll: %w", err)
		}
	}
	p.nextID++
	id := p.nextID
	// The id, not the descriptor, names the check: a descriptor closed
	// by a timed-out check may be reused before its last event is read.
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT, Fd: int32(pr.fd), Pad: int32(id)}
	// A spare socket is in the set already, disarmed: armed again, with
	// the new id, after its connect started, so that its state before
	// (closed, which polls as hung up) is never reported.
	op := unix.EPOLL_CTL_ADD
	if pr.reused {
		op = unix.EPOLL_CTL_MOD
	}
	// The instance's descriptor stays open while p.mu is held.
	ctl := func(op int) unix.Errno {
		_, _, e := unix.RawSyscall6(unix.SYS_EPOLL_CTL, uintptr(p.epfd), uintptr(op), uintptr(pr.fd), uintptr(unsafe.Pointer(&ev)), 0, 0)
		return e
	}
	e := ctl(op)
	if e == unix.ENOENT && op == unix.EPOLL_CTL_MOD {
		e = ctl(unix.EPOLL_CTL_ADD) // its instance was closed since it was spared
	}
	if e != 0 {
		return 0, fmt.Errorf("epoll: %w", e)
	}
	p.pending[id] = pr
	first := p.deadlines.push(by, id)
	if !p.running {
		p.running = true
		go p.collect(p.ep, p.rc)
	} else if first {
		// The earliest deadline now: the collector must wake for it.
		p.ep.SetReadDeadline(by)
	}
	return id, nil
}

// expire times out the checks of ep whose deadline has passed and sets
// ep's read deadline to the next one, under the lock that watch sets it
// under. It reports false when the collector is to leave: ep is closed,
// or no check is left in flight and the prober lets ep go when idle.
func (p *tcpProber) expire(ep *os.File, now time.Time) bool {
	var expired []*probe
	defer func() { endAll(expired, errTimeout) }()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ep != ep {
		return false // closed: a later instance has its own collector
	}
	for p.deadlines.len() > 0 {
		at, id := p.deadlines.head()
		pr, ok := p.pending[id]
		if ok && at.After(now) {
			break
		}
		if ok {
			delete(p.pending, id)
			rawClose(pr.fd)
			expired = append(expired, pr)
		}
		p.deadlines.pop()
	}
	if len(p.pending) == 0 {
		p.deadlines.clear()
		if p.closeIdle {
			p.running = false
			p.closeLocked() // nothing in flight to end
			return false
		}
		// A runner's prober keeps its collector, parked until the next
		// check answers: one that left whenever nothing was in flight
		// was started again thousands of times a second.
		ep.SetReadDeadline(time.Time{})
		return true
	}
	next, _ := p.deadlines.head()
	ep.SetReadDeadline(next)
	return true
}

// collect answers the checks whose connect finished, until ep is closed
// (or, for a prober that closes when idle, none is in flight).
func (p *tcpProber) collect(ep *os.File, rc syscall.RawConn) {
	events := make([]unix.EpollEvent, 128)
	// drain answers every check whose connect has finished; it reports
	// whether there was any.
	drain := func(epfd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(epfd), events, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n <= 0 {
				return n > 0
			}
			for _, ev := range events[:n] {
				p.answer(ep, ev)
			}
			if n < len(events) {
				return true
			}
		}
	}
	for p.expire(ep, time.Now()) {
		err := rc.Read(drain)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Woken for a deadline: answers that came in meanwhile
			// count before it is enforced (a collector held up by a busy
			// host must not fail checks that were answered in time).
			err = rc.Control(func(epfd uintptr) { drain(epfd) })
		}
		if err != nil {
			var ended []*probe
			p.mu.Lock()
			if p.ep == ep {
				ended, _ = p.closeLocked() // its checks fail; the next check starts afresh
			}
			p.mu.Unlock()
			endAll(ended, err)
			return
		}
	}
}

func (p *tcpProber) answer(ep *os.File, ev unix.EpollEvent) {
	p.mu.Lock()
	pr, ok := p.pending[uint32(ev.Pad)]
	if ok {
		delete(p.pending, uint32(ev.Pad))
	}
	p.mu.Unlock()
	if !ok {
		return // its check timed out and closed it
	}
	var err error
	if ev.Events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
		soerr, gerr := unix.GetsockoptInt(pr.fd, unix.SOL_SOCKET, unix.SO_ERROR)
		switch {
		case gerr != nil:
			err = gerr
		case soerr != 0:
			err = syscall.Errno(soerr)
		default:
			err = errors.New("connection closed by the server")
		}
	}
	if err == nil {
		p.recycle(ep, pr)
	} else {
		rawClose(pr.fd)
	}
	pr.end(err)
}

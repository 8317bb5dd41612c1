package healthcheck

import (
	"context"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fullListener listens on loopback with an accept queue that it fills and
// never drains: further SYNs are dropped, so a connect there times out.
func fullListener(t *testing.T) netip.AddrPort {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	// Fill the queue: connections until one hangs.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp4", addr.String(), 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i > 16 {
			t.Fatal("the accept queue never filled")
		}
	}
	return addr
}

// openListener listens on IPv4 loopback, accepting and closing
// connections.
func openListener(t *testing.T) netip.AddrPort {
	return netip.MustParseAddrPort(acceptor(t, "tcp4", "127.0.0.1:0", nil).Addr().String())
}

// acceptor listens on addr, accepting and closing connections (counted in
// accepted when not nil) until the test ends or the caller closes it.
func acceptor(t *testing.T, network, addr string, accepted *atomic.Int64) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
			if accepted != nil {
				accepted.Add(1)
			}
		}
	}()
	return ln
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	return netip.MustParseAddrPort(ln.Addr().String())
}

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// TestTCPProber runs many checks at once through one prober against a
// listening port, a closed one and one that drops SYNs: each gets its own
// answer, timeouts come from the prober's deadlines, and no descriptor is
// left behind.
func TestTCPProber(t *testing.T) {
	open, closed, full := openListener(t), closedPort(t), fullListener(t)

	before := openFDs(t)
	p := newTCPProber(false)
	targets := []struct {
		addr netip.AddrPort
		want string // "" = up
	}{{open, ""}, {closed, "connection refused"}, {full, "timeout"}}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan string, 300)
	start := time.Now()
	for i := range 300 {
		tg := targets[i%len(targets)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Deadlines out of order, so the heap has work to do.
			timeout := time.Duration(100+i%7*30) * time.Millisecond
			r := p.check(ctx, newTCPTarget(tg.addr, netip.Addr{}), time.Now().Add(timeout))
			switch {
			case tg.want == "" && r.Err != nil:
				errs <- tg.addr.String() + ": " + r.Err.Error()
			case tg.want != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), tg.want)):
				errs <- tg.addr.String() + ": want " + tg.want + ", got " + errString(r.Err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("300 checks took %s: the timeouts were not kept", took)
	}
	// A stop while checks are in flight answers them at once.
	done := make(chan Result, 1)
	go func() { done <- p.check(ctx, newTCPTarget(full, netip.Addr{}), time.Now().Add(time.Hour)) }()
	waitPending(t, p, 1)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.Err == nil {
			t.Fatal("a check cut short by Close passed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close left a check waiting")
	}
	sameFDs(t, before)
}

// TestTCPCheckerAlone: a checker made by NewChecker has a prober of its
// own, which lets its epoll instance go when no check is in flight.
func TestTCPCheckerAlone(t *testing.T) {
	full := fullListener(t)
	before := openFDs(t)
	c, err := NewChecker(Spec{Type: "tcp", Addr: full, Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if r := c.Check(ctx); r.Err == nil || !strings.Contains(r.Err.Error(), "timeout") {
		t.Fatalf("check of a port that drops SYNs: %v", r.Err)
	}
	p := c.(tcpChecker).p
	if err := waitFor(func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.ep == nil
	}); err != nil {
		t.Fatal("the epoll instance stayed open after the check")
	}
	sameFDs(t, before)
}

// sameFDs waits until as many descriptors are open as before: the test's
// own listener may still be closing what it accepted.
func sameFDs(t *testing.T, before int) {
	t.Helper()
	if err := waitFor(func() bool { return openFDs(t) == before }); err != nil {
		t.Fatalf("%d descriptors open after the checks, %d before", openFDs(t), before)
	}
}

func errString(err error) string {
	if err == nil {
		return "success"
	}
	return err.Error()
}

func waitPending(t *testing.T, p *tcpProber, n int) {
	t.Helper()
	if err := waitFor(func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.pending) == n
	}); err != nil {
		t.Fatalf("never %d checks in flight", n)
	}
}

func waitFor(cond func() bool) error {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return context.DeadlineExceeded
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// TestTCPProberIPv6: the prober's own sockaddr_in6 reaches an IPv6
// listener, and a closed IPv6 port is refused.
func TestTCPProberIPv6(t *testing.T) {
	ln := acceptor(t, "tcp6", "[::1]:0", nil)
	open := netip.MustParseAddrPort(ln.Addr().String())
	p := newTCPProber(false)
	defer p.Close()
	check := func(a netip.AddrPort) Result {
		return p.check(context.Background(), newTCPTarget(a, netip.Addr{}), time.Now().Add(2*time.Second))
	}
	if r := check(open); r.Err != nil {
		t.Fatalf("check of %s: %v", open, r.Err)
	}
	ln.Close()
	if r := check(open); r.Err == nil || !strings.Contains(r.Err.Error(), "connection refused") {
		t.Fatalf("check of the closed %s: %v", open, errString(r.Err))
	}
}

// TestTCPProberReusesSockets: a check that passed leaves its socket,
// disconnected, for the next check, which still makes a new connection;
// a refused check after reuse is still refused, and Close frees the
// spare sockets.
func TestTCPProberReusesSockets(t *testing.T) {
	var accepted atomic.Int64
	const checks = 200
	open := netip.MustParseAddrPort(acceptor(t, "tcp4", "127.0.0.1:0", &accepted).Addr().String())
	closed := closedPort(t)
	before := openFDs(t)
	p := newTCPProber(false)
	check := func(a netip.AddrPort) Result {
		return p.check(context.Background(), newTCPTarget(a, netip.Addr{}), time.Now().Add(2*time.Second))
	}
	for i := range checks {
		if r := check(open); r.Err != nil {
			t.Fatalf("check %d: %v", i, r.Err)
		}
	}
	// Every check was a connection of its own.
	if err := waitFor(func() bool { return accepted.Load() == checks }); err != nil {
		t.Fatalf("%d connections accepted for %d checks", accepted.Load(), checks)
	}
	p.mu.Lock()
	spare := len(p.spare[unix.AF_INET])
	p.mu.Unlock()
	if spare != 1 {
		t.Fatalf("%d spare sockets after one check at a time, want 1", spare)
	}
	if n := openFDs(t) - before; n > 2 {
		t.Fatalf("%d more descriptors open after %d checks: sockets are not reused", n, checks)
	}
	if r := check(closed); r.Err == nil || !strings.Contains(r.Err.Error(), "connection refused") {
		t.Fatalf("check of a closed port with a reused socket: %v", errString(r.Err))
	}
	if r := check(open); r.Err != nil {
		t.Fatalf("check after a refused one: %v", r.Err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	sameFDs(t, before)
}

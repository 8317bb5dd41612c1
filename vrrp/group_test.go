package vrrp

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

// hub is a fake link: what one conn writes, every other conn reads.
type hub struct {
	mu    sync.Mutex
	conns []*fakeConn
}

type packet struct {
	b        []byte
	src, dst netip.Addr
	ttl      int
}

type fakeConn struct {
	hub    *hub
	rx     chan packet
	closed chan struct{}
	once   sync.Once
}

var _ Conn = (*fakeConn)(nil)

func (h *hub) listen() *fakeConn {
	c := &fakeConn{hub: h, rx: make(chan packet, 64), closed: make(chan struct{})}
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
	return c
}

// inject delivers a packet to every conn, as if from the wire.
func (h *hub) inject(p packet, except *fakeConn) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		if c != except {
			select {
			case c.rx <- p:
			default:
			}
		}
	}
}

func (c *fakeConn) ReadFrom(b []byte) (int, netip.Addr, netip.Addr, int, error) {
	select {
	case p := <-c.rx:
		return copy(b, p.b), p.src, p.dst, p.ttl, nil
	case <-c.closed:
		return 0, netip.Addr{}, netip.Addr{}, 0, net.ErrClosed
	}
}

func (c *fakeConn) WriteTo(b []byte, src, dst netip.Addr) error {
	c.hub.inject(packet{b: slices.Clone(b), src: src, dst: dst, ttl: 255}, c)
	return nil
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// fakeAddrs records the addresses a group holds.
type fakeAddrs struct {
	mu   sync.Mutex
	held map[netip.Prefix]bool
}

var _ Addresses = (*fakeAddrs)(nil)

func (f *fakeAddrs) Add(_ string, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.held[p] = true
	return nil
}

func (f *fakeAddrs) Remove(_ string, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.held, p)
	return nil
}

func (f *fakeAddrs) holds(p netip.Prefix) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held[p]
}

type fakeAnnouncer struct {
	mu    sync.Mutex
	count int
}

var _ Announcer = (*fakeAnnouncer)(nil)

func (f *fakeAnnouncer) Announce(string, []netip.Addr, int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count++
	return nil
}

type node struct {
	g      *Group
	addrs  *fakeAddrs
	ann    *fakeAnnouncer
	cancel context.CancelFunc
	done   chan struct{}
}

func startNode(t *testing.T, h *hub, src netip.Addr, c Config) *node {
	n := &node{addrs: &fakeAddrs{held: map[netip.Prefix]bool{}}, ann: &fakeAnnouncer{}, done: make(chan struct{})}
	n.g = NewGroup(Deps{
		Listen:    func(string, bool) (Conn, error) { return h.listen(), nil },
		Addresses: n.addrs,
		Announcer: n.ann,
		Primary:   func(string, bool, []netip.Prefix) (netip.Addr, error) { return src, nil },
		Log:       slog.New(slog.DiscardHandler),
	})
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	go func() {
		n.g.Run(ctx, []Config{c})
		close(n.done)
	}()
	t.Cleanup(func() { cancel(); <-n.done })
	return n
}

func (n *node) status(t *testing.T) InstanceStatus {
	t.Helper()
	for _, s := range n.g.Status() {
		return s
	}
	return InstanceStatus{}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestGroupOverFakeWire runs two groups over a fake link: election, drop
// counting of malformed packets, and a resignation on stop.
func TestGroupOverFakeWire(t *testing.T) {
	h := &hub{}
	vipP := netip.MustParsePrefix("192.0.2.100/24")
	c := func(prio uint8) Config {
		return Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, Version: 3,
			AdvertInt: 20 * time.Millisecond, Preempt: true, VIPs: []netip.Prefix{vipP}, GARPRepeat: 1}
	}
	a := startNode(t, h, me, c(150))
	b := startNode(t, h, peer, c(100))
	waitFor(t, "a MASTER, b BACKUP following a", func() bool {
		return a.status(t).State == Master && b.status(t).State == Backup && b.status(t).Master == me.String()
	})
	if !a.addrs.holds(vipP) || b.addrs.holds(vipP) {
		t.Fatal("the VIP is not on the master alone")
	}

	// Malformed and foreign packets are counted, never fatal.
	good := (&Advert{Version: 3, VRID: 51, Priority: 200, Interval: 20 * time.Millisecond, Addrs: []netip.Addr{vip1}}).Marshal(lowIP, GroupIPv4, true)
	badSum := slices.Clone(good)
	badSum[7] ^= 1
	for _, p := range []packet{
		{b: good[:5], src: lowIP, dst: GroupIPv4, ttl: 255}, // truncated
		{b: good, src: lowIP, dst: GroupIPv4, ttl: 64},      // TTL not 255
		{b: badSum, src: lowIP, dst: GroupIPv4, ttl: 255},   // checksum
	} {
		h.inject(p, nil)
	}
	waitFor(t, "drops counted", func() bool {
		d := b.status(t).Drops
		return d[DropLength] >= 1 && d[DropTTL] >= 1 && d[DropChecksum] >= 1
	})
	if s := b.status(t); s.State != Backup || s.Master != me.String() {
		t.Fatalf("bad packets moved b: %+v", s.Info)
	}

	// a stops: it resigns, b takes over for the priority-0 advert.
	a.cancel()
	<-a.done
	waitFor(t, "b MASTER", func() bool { return b.status(t).State == Master })
	if r := b.status(t).LastTransition.Reason; r != "the master resigned (priority 0)" {
		t.Fatalf("b took over for %q", r)
	}
	if a.addrs.holds(vipP) || !b.addrs.holds(vipP) {
		t.Fatal("the VIP did not move")
	}
	b.ann.mu.Lock()
	announced := b.ann.count
	b.ann.mu.Unlock()
	if announced == 0 {
		t.Fatal("the new master did not announce the VIP")
	}
}

// TestGroupDropDuringReconfigure drops bad packets while reloads change
// the instance in place: under -race this caught drop() reading the
// instance's settings without its lock.
func TestGroupDropDuringReconfigure(t *testing.T) {
	h := &hub{}
	c := Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 100, Version: 3,
		AdvertInt: 20 * time.Millisecond, VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}}
	n := startNode(t, h, me, c)
	waitFor(t, "running", func() bool { return n.status(t).State != Init })
	bad := (&Advert{Version: 3, VRID: 51, Priority: 200, Interval: 20 * time.Millisecond, Addrs: []netip.Addr{vip1}}).Marshal(lowIP, GroupIPv4, true)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			h.inject(packet{b: bad, src: lowIP, dst: GroupIPv4, ttl: 64}, nil) // TTL not 255
			time.Sleep(time.Millisecond)
		}
	}()
	for i := range 20 {
		c.Priority = uint8(100 + i)
		n.g.Update([]Config{c})
	}
	waitFor(t, "drops counted", func() bool { return n.status(t).Drops[DropTTL] > 0 })
	close(stop)
	<-done
}

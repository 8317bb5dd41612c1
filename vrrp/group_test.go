package vrrp_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/directord/directord/vrrp"
	"github.com/directord/directord/vrrp/route"
	"github.com/directord/directord/vrrp/vrrptest"
)

var (
	me    = netip.MustParseAddr("192.0.2.11")
	peer  = netip.MustParseAddr("192.0.2.12") // higher than me
	lowIP = netip.MustParseAddr("192.0.2.5")  // lower than me
	vip1  = netip.MustParseAddr("192.0.2.100")
)

type node struct {
	g      *vrrp.Group
	addrs  *vrrptest.Addrs
	ann    *vrrptest.Announcer
	cancel context.CancelFunc
	done   chan struct{}
}

func startNode(t *testing.T, h *vrrptest.Hub, src netip.Addr, c vrrp.Config) *node {
	wire := vrrptest.NewNode(h, src)
	n := &node{addrs: wire.Addrs, ann: wire.Announcer}
	n.g, n.cancel, n.done = runGroup(t, wire.Deps(slog.New(slog.DiscardHandler)), c)
	return n
}

// runGroup runs a group of one instance on deps until the test ends, or
// until cancel; done closes when Run has returned.
func runGroup(t *testing.T, deps vrrp.Deps, c vrrp.Config) (g *vrrp.Group, cancel context.CancelFunc, done chan struct{}) {
	g = vrrp.NewGroup(deps)
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() {
		g.Run(ctx, []vrrp.Config{c})
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return g, cancel, done
}

func (n *node) status(t *testing.T) vrrp.InstanceStatus {
	t.Helper()
	for _, s := range n.g.Status() {
		return s
	}
	return vrrp.InstanceStatus{}
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
	h := &vrrptest.Hub{}
	vipP := netip.MustParsePrefix("192.0.2.100/24")
	c := func(prio uint8) vrrp.Config {
		return vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, Version: 3,
			AdvertInt: 20 * time.Millisecond, Preempt: true, VIPs: []netip.Prefix{vipP}, GARPRepeat: 1}
	}
	a := startNode(t, h, me, c(150))
	b := startNode(t, h, peer, c(100))
	waitFor(t, "a MASTER, b BACKUP following a", func() bool {
		return a.status(t).State == vrrp.Master && b.status(t).State == vrrp.Backup && b.status(t).Master == me.String()
	})
	if !a.addrs.Holds(vipP) || b.addrs.Holds(vipP) {
		t.Fatal("the VIP is not on the master alone")
	}

	// Malformed and foreign packets are counted, never fatal.
	good := (&vrrp.Advert{Version: 3, VRID: 51, Priority: 200, Interval: 20 * time.Millisecond, Addrs: []netip.Addr{vip1}}).Marshal(lowIP, vrrp.GroupIPv4, true)
	badSum := slices.Clone(good)
	badSum[7] ^= 1
	for _, p := range []vrrptest.Packet{
		{B: good[:5], Src: lowIP, Dst: vrrp.GroupIPv4, TTL: 255}, // truncated
		{B: good, Src: lowIP, Dst: vrrp.GroupIPv4, TTL: 64},      // TTL not 255
		{B: badSum, Src: lowIP, Dst: vrrp.GroupIPv4, TTL: 255},   // checksum
	} {
		h.Inject(p, nil)
	}
	waitFor(t, "drops counted", func() bool {
		d := b.status(t).Drops
		return d[vrrp.DropLength] >= 1 && d[vrrp.DropTTL] >= 1 && d[vrrp.DropChecksum] >= 1
	})
	if s := b.status(t); s.State != vrrp.Backup || s.Master != me.String() {
		t.Fatalf("bad packets moved b: %+v", s.Info)
	}

	// a stops: it resigns, b takes over for the priority-0 advert.
	a.cancel()
	<-a.done
	waitFor(t, "b MASTER", func() bool { return b.status(t).State == vrrp.Master })
	if r := b.status(t).LastTransition.Reason; r != "the master resigned (priority 0)" {
		t.Fatalf("b took over for %q", r)
	}
	if a.addrs.Holds(vipP) || !b.addrs.Holds(vipP) {
		t.Fatal("the VIP did not move")
	}
	if b.ann.Count() == 0 {
		t.Fatal("the new master did not announce the VIP")
	}
}

// TestGroupDropDuringReconfigure drops bad packets while reloads change
// the instance in place: under -race this caught drop() reading the
// instance's settings without its lock.
func TestGroupDropDuringReconfigure(t *testing.T) {
	h := &vrrptest.Hub{}
	c := vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 100, Version: 3,
		AdvertInt: 20 * time.Millisecond, VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}}
	n := startNode(t, h, me, c)
	waitFor(t, "running", func() bool { return n.status(t).State != vrrp.Init })
	bad := (&vrrp.Advert{Version: 3, VRID: 51, Priority: 200, Interval: 20 * time.Millisecond, Addrs: []netip.Addr{vip1}}).Marshal(lowIP, vrrp.GroupIPv4, true)
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
			h.Inject(vrrptest.Packet{B: bad, Src: lowIP, Dst: vrrp.GroupIPv4, TTL: 64}, nil) // TTL not 255
			time.Sleep(time.Millisecond)
		}
	}()
	for i := range 20 {
		c.Priority = uint8(100 + i)
		n.g.Update([]vrrp.Config{c})
	}
	waitFor(t, "drops counted", func() bool { return n.status(t).Drops[vrrp.DropTTL] > 0 })
	close(stop)
	<-done
}

// TestGroupFaultAtStartIsATransition: an instance whose interface does not
// exist yet waits in FAULT; that is counted and notified like any
// transition (on main it was neither).
func TestGroupFaultAtStartIsATransition(t *testing.T) {
	deps := vrrptest.NewNode(&vrrptest.Hub{}, me).Deps(slog.New(slog.DiscardHandler))
	deps.Listen = func(string, bool) (vrrp.Conn, error) { return nil, errors.New("no such interface eth9") }
	var mu sync.Mutex
	var notified []vrrp.Transition
	deps.Notify = func(_ string, tr vrrp.Transition) {
		mu.Lock()
		notified = append(notified, tr)
		mu.Unlock()
	}
	g, _, _ := runGroup(t, deps, vrrp.Config{Name: "VI_1", Interface: "eth9", VRID: 51, Priority: 100, Version: 3,
		AdvertInt: time.Second, VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}})
	waitFor(t, "FAULT", func() bool {
		st := g.Status()
		return len(st) == 1 && st[0].State == vrrp.Fault
	})
	st := g.Status()[0]
	mu.Lock()
	defer mu.Unlock()
	if st.Transitions != 1 || len(notified) != 1 || notified[0].To != vrrp.Fault || !strings.Contains(notified[0].Reason, "eth9") {
		t.Fatalf("transitions %d, notified %+v", st.Transitions, notified)
	}
}

// TestVIPChangeInPlace: a reload that adds and removes virtual addresses
// changes them on the master in place, announces the new one and tells
// the peer at once, with no transition on either side (keepalived applies
// the diff too). On main it restarted the instance: the master resigned,
// the peer took over, the master preempted back.
func TestVIPChangeInPlace(t *testing.T) {
	h := &vrrptest.Hub{}
	p1, p2 := netip.MustParsePrefix("192.0.2.100/24"), netip.MustParsePrefix("192.0.2.101/24")
	c := func(prio uint8, vips ...netip.Prefix) vrrp.Config {
		return vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, Version: 3,
			AdvertInt: 20 * time.Millisecond, Preempt: true, VIPs: vips, GARPRepeat: 1}
	}
	a := startNode(t, h, me, c(150, p1))
	b := startNode(t, h, peer, c(100, p1))
	waitFor(t, "a MASTER, b BACKUP", func() bool {
		return a.status(t).State == vrrp.Master && b.status(t).State == vrrp.Backup && b.status(t).Master == me.String()
	})
	ta, tb, ann := a.status(t).Transitions, b.status(t).Transitions, a.ann.Count()
	started, inPlace := a.g.Update([]vrrp.Config{c(150, p2)})
	if len(started) != 0 || !slices.Equal(inPlace, []string{"VI_1"}) {
		t.Fatalf("started %v, in place %v", started, inPlace)
	}
	b.g.Update([]vrrp.Config{c(100, p2)})
	if !a.addrs.Holds(p2) || a.addrs.Holds(p1) || b.addrs.Holds(p2) {
		t.Fatal("the master does not hold exactly the new VIP")
	}
	if a.ann.Count() == ann {
		t.Fatal("the new VIP was not announced")
	}
	// Some adverts later, nobody moved.
	sent := a.status(t).AdvertsSent
	waitFor(t, "adverts", func() bool { return a.status(t).AdvertsSent > sent+10 })
	if a.status(t).Transitions != ta || b.status(t).Transitions != tb || a.status(t).State != vrrp.Master {
		t.Fatalf("transitions: a %d→%d, b %d→%d", ta, a.status(t).Transitions, tb, b.status(t).Transitions)
	}
}

// TestOwnerKeepsHostAddress: an address owner (priority 255) owns an
// address the host already has; stopping the instance must not take it
// away (on main it removed what it had not added). Its source may be the
// owned address itself when the interface has no other.
func TestOwnerKeepsHostAddress(t *testing.T) {
	h := &vrrptest.Hub{}
	own := netip.MustParsePrefix("192.0.2.100/24")
	wire := vrrptest.NewNode(h, me)
	if _, err := wire.Addrs.Add("eth0", own); err != nil { // the host's own address
		t.Fatal(err)
	}
	var vipsAsked []netip.Prefix
	deps := wire.Deps(slog.New(slog.DiscardHandler))
	deps.Primary = func(_ string, _ bool, vips []netip.Prefix) (netip.Addr, error) {
		vipsAsked = vips
		return own.Addr(), nil
	}
	g, cancel, done := runGroup(t, deps, vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: vrrp.PriorityOwner, Version: 3,
		AdvertInt: 20 * time.Millisecond, VIPs: []netip.Prefix{own}})
	waitFor(t, "MASTER", func() bool { s := g.Status(); return len(s) == 1 && s[0].State == vrrp.Master })
	if len(vipsAsked) != 0 {
		t.Fatalf("the owner's source excludes its owned addresses %v: with no other address it would wait in FAULT", vipsAsked)
	}
	cancel()
	<-done
	if !wire.Addrs.Holds(own) {
		t.Fatal("stopping the owner took the host's own address away")
	}
}

// TestRenumberedMaster: the master's interface loses its address. It goes
// FAULT (its VIP leaves with it) instead of holding the VIP while its
// adverts cannot leave; with the new address it comes back and sends from
// it. On main it stayed MASTER with the VIP: two masters once the backup
// took over.
func TestRenumberedMaster(t *testing.T) {
	h := &vrrptest.Hub{}
	vipP := netip.MustParsePrefix("192.0.2.100/24")
	wire := vrrptest.NewNode(h, me)
	var mu sync.Mutex
	src, srcErr := me, error(nil)
	changed := make(chan func(string), 1)
	deps := wire.Deps(slog.New(slog.DiscardHandler))
	deps.Primary = func(string, bool, []netip.Prefix) (netip.Addr, error) {
		mu.Lock()
		defer mu.Unlock()
		return src, srcErr
	}
	deps.WatchAddrs = func(ctx context.Context, fn func(string)) error {
		changed <- fn
		<-ctx.Done()
		return nil
	}
	g, _, _ := runGroup(t, deps, vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 150, Version: 3,
		AdvertInt: 20 * time.Millisecond, VIPs: []netip.Prefix{vipP}})
	notify := <-changed
	state := func() vrrp.InstanceStatus { return g.Status()[0] }
	waitFor(t, "MASTER", func() bool { return len(g.Status()) == 1 && state().State == vrrp.Master })
	mu.Lock()
	src, srcErr = netip.Addr{}, errors.New("eth0 has no usable IPv4 address")
	mu.Unlock()
	notify("eth0")
	waitFor(t, "FAULT without a source", func() bool { return state().State == vrrp.Fault })
	if wire.Addrs.Holds(vipP) {
		t.Fatal("the VIP stayed on a master without a source address")
	}
	renumbered := netip.MustParseAddr("192.0.2.21")
	mu.Lock()
	src, srcErr = renumbered, nil
	mu.Unlock()
	notify("eth0")
	waitFor(t, "MASTER from the new address", func() bool {
		s := state()
		return s.State == vrrp.Master && s.Source == renumbered.String()
	})
}

// TestRecreatedInterface: an interface deleted and made again has a new
// index; its socket is opened again when it comes up (on main the socket
// stayed bound to the old index and heard nothing: the backup became a
// second master).
func TestRecreatedInterface(t *testing.T) {
	h := &vrrptest.Hub{}
	wire := vrrptest.NewNode(h, me)
	var mu sync.Mutex
	index, opened := 7, 0
	links := make(chan func(string, bool), 1)
	deps := wire.Deps(slog.New(slog.DiscardHandler))
	deps.Listen = func(string, bool) (vrrp.Conn, error) {
		mu.Lock()
		opened++
		mu.Unlock()
		return h.Listen(), nil
	}
	deps.Index = func(string) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return index, nil
	}
	deps.WatchLinks = func(ctx context.Context, fn func(string, bool)) error {
		links <- fn
		<-ctx.Done()
		return nil
	}
	g, _, _ := runGroup(t, deps, vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 100, Version: 3,
		AdvertInt: 20 * time.Millisecond, VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}})
	link := <-links
	waitFor(t, "running", func() bool { return len(g.Status()) == 1 && g.Status()[0].State != vrrp.Init })
	link("eth0", false)
	mu.Lock()
	index = 8 // made again
	mu.Unlock()
	link("eth0", true)
	waitFor(t, "the socket opened again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return opened == 2
	})
	// It hears the master again on the new socket.
	master := startNode(t, h, peer, vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 150, Version: 3,
		AdvertInt: 20 * time.Millisecond, Preempt: true, VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}})
	waitFor(t, "BACKUP following the master", func() bool {
		s := g.Status()[0]
		return master.status(t).State == vrrp.Master && s.State == vrrp.Backup && s.Master == peer.String()
	})
}

// TestManyVIPsFitTheAdvert: 100 IPv6 virtual addresses do not fit one
// advert on a 1500-byte link. As keepalived, the master advertises those
// that fit (90) and holds the rest unadvertised; the backup reads the
// advert whole and follows it. On main the advert listed all 100 (1,608
// bytes) and the peer truncated it: two masters.
func TestManyVIPsFitTheAdvert(t *testing.T) {
	h := &vrrptest.Hub{}
	var vips []netip.Prefix
	for i := range 100 {
		vips = append(vips, netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i + 1)}), 64))
	}
	c := func(prio uint8) vrrp.Config {
		return vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, Version: 3,
			AdvertInt: 20 * time.Millisecond, Preempt: true, VIPs: vips}
	}
	tap := h.Listen()
	a := startNode(t, h, netip.MustParseAddr("fe80::11"), c(150))
	b := startNode(t, h, netip.MustParseAddr("fe80::12"), c(100))
	waitFor(t, "a MASTER, b BACKUP", func() bool {
		return a.status(t).State == vrrp.Master && b.status(t).State == vrrp.Backup
	})
	for _, p := range vips {
		if !a.addrs.Holds(p) {
			t.Fatalf("the master does not hold %s", p)
		}
	}
	buf := make([]byte, 65536)
	for {
		n, src, dst, _, err := tap.ReadFrom(buf)
		if err != nil {
			t.Fatal(err)
		}
		adv, _, reason := vrrp.Parse(buf[:n], src, dst)
		if reason != "" || src != netip.MustParseAddr("fe80::11") {
			continue
		}
		if len(adv.Addrs) != 90 || 40+n > 1500 {
			t.Fatalf("an advert of %d addresses, %d bytes with its IPv6 header", len(adv.Addrs), 40+n)
		}
		break
	}
	if s := b.status(t); s.Drops[vrrp.DropLength] != 0 {
		t.Fatalf("the backup dropped adverts: %v", s.Drops)
	}
}

// garp_lower_prio_repeat: a master that hears a lower priority announces
// its addresses with that many gratuitous ARPs.
func TestGARPLowerPrio(t *testing.T) {
	h := &vrrptest.Hub{}
	c := vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 150, Version: 3, AdvertInt: 20 * time.Millisecond,
		Preempt: true, VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}, GARPRepeat: 1, GARPLowerPrioRepeat: 5}
	a := startNode(t, h, me, c)
	waitFor(t, "MASTER", func() bool { return a.status(t).State == vrrp.Master })
	if r := a.ann.LastRepeat(); r != 1 {
		t.Fatalf("becoming master: %d GARPs", r)
	}
	low := (&vrrp.Advert{Version: 3, VRID: 51, Priority: 50, Interval: 20 * time.Millisecond, Addrs: []netip.Addr{vip1}}).Marshal(lowIP, vrrp.GroupIPv4, true)
	h.Inject(vrrptest.Packet{B: low, Src: lowIP, Dst: vrrp.GroupIPv4, TTL: 255}, nil)
	waitFor(t, "the lower-priority burst", func() bool { return a.ann.LastRepeat() == 5 })
}

// A master holds its virtual routes and rules, and with use_vmac its
// addresses on the VMAC; a backup holds none; a master that steps down
// or stops takes them away, and the VMAC goes with the instance.
func TestRoutesAndVMAC(t *testing.T) {
	h := &vrrptest.Hub{}
	rt, _ := route.Parse("198.51.100.0/24 via 192.0.2.1")
	rule, _ := route.ParseRule("from 192.0.2.100 table 100")
	c := func(prio uint8) vrrp.Config {
		return vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, Version: 3,
			AdvertInt: 20 * time.Millisecond, Preempt: true, VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}, GARPRepeat: 1,
			VMAC: "vrrp.51", Routes: []vrrp.Route{rt}, Rules: []vrrp.Rule{rule}}
	}
	wa, wb := vrrptest.NewNode(h, me), vrrptest.NewNode(h, peer)
	a := &node{addrs: wa.Addrs, ann: wa.Announcer}
	a.g, a.cancel, a.done = runGroup(t, wa.Deps(slog.New(slog.DiscardHandler)), c(150))
	b := &node{addrs: wb.Addrs, ann: wb.Announcer}
	b.g, b.cancel, b.done = runGroup(t, wb.Deps(slog.New(slog.DiscardHandler)), c(100))
	waitFor(t, "a MASTER, b BACKUP", func() bool {
		return a.status(t).State == vrrp.Master && b.status(t).State == vrrp.Backup
	})
	want := []string{"from 192.0.2.100/32 table 100", "vrrp.51: 198.51.100.0/24 via 192.0.2.1"}
	if got := wa.Routing.Held(); !slices.Equal(got, want) {
		t.Fatalf("master holds %q, want %q", got, want)
	}
	if got := wb.Routing.Held(); len(got) != 0 {
		t.Fatalf("backup holds %q", got)
	}
	if on := wa.Addrs.On(netip.MustParsePrefix("192.0.2.100/24")); on != "vrrp.51" {
		t.Fatalf("the VIP is on %q, want the VMAC vrrp.51", on)
	}
	if l := wa.VMACs.Link("vrrp.51"); l != "eth0 00:00:5e:00:01:33" {
		t.Fatalf("VMAC %q", l)
	}
	a.cancel()
	<-a.done
	waitFor(t, "b MASTER", func() bool { return b.status(t).State == vrrp.Master })
	if got := wa.Routing.Held(); len(got) != 0 {
		t.Fatalf("a stopped master still holds %q", got)
	}
	if l := wa.VMACs.Link("vrrp.51"); l != "" {
		t.Fatalf("a stopped instance left its VMAC: %q", l)
	}
	if got := wb.Routing.Held(); !slices.Equal(got, want) {
		t.Fatalf("the new master holds %q, want %q", got, want)
	}
}

// stalledConn is a socket whose read loop never gets to run (a process
// the host did not schedule) while adverts wait in it: only ReadPending
// hands them over.
type stalledConn struct {
	closed chan struct{}
	once   sync.Once
	advert []byte
	from   netip.Addr
	mu     sync.Mutex
	reads  int
}

func (c *stalledConn) ReadFrom([]byte) (int, netip.Addr, netip.Addr, int, error) {
	<-c.closed
	return 0, netip.Addr{}, netip.Addr{}, 0, net.ErrClosed
}

// ReadPending has one advert from the master each time it is asked: the
// master sent while this process was not running.
func (c *stalledConn) ReadPending(b []byte) (int, netip.Addr, netip.Addr, int, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reads++
	if c.reads%2 == 0 {
		return 0, netip.Addr{}, netip.Addr{}, 0, false, nil
	}
	return copy(b, c.advert), c.from, vrrp.GroupIPv4, 255, true, nil
}

func (c *stalledConn) WriteTo([]byte, netip.Addr, netip.Addr) error { return nil }
func (c *stalledConn) Close() error                                 { c.once.Do(func() { close(c.closed) }); return nil }

// TestBackupHearsWaitingAdverts: a backup whose master-down deadline passed
// while the master's adverts waited unread in its socket (the process was
// not run) hears them before it judges, and stays backup.
func TestBackupHearsWaitingAdverts(t *testing.T) {
	adv := (&vrrp.Advert{Version: 3, VRID: 51, Priority: 200, Interval: 10 * time.Millisecond, Addrs: []netip.Addr{vip1}}).Marshal(peer, vrrp.GroupIPv4, true)
	conn := &stalledConn{closed: make(chan struct{}), advert: adv, from: peer}
	deps := vrrptest.NewNode(&vrrptest.Hub{}, me).Deps(slog.New(slog.DiscardHandler))
	deps.Listen = func(string, bool) (vrrp.Conn, error) { return conn, nil }
	c := vrrp.Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 100, Version: 3,
		AdvertInt: 10 * time.Millisecond, Preempt: true, VIPs: []netip.Prefix{netip.PrefixFrom(vip1, 24)}, GARPRepeat: 1}
	g, _, _ := runGroup(t, deps, c)
	state := func() vrrp.InstanceStatus {
		for _, s := range g.Status() {
			return s
		}
		return vrrp.InstanceStatus{}
	}
	// Twenty master-down intervals (3 × 10 ms and the skew each).
	for end := time.Now().Add(20 * 40 * time.Millisecond); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
		if s := state(); s.State == vrrp.Master {
			t.Fatalf("took over from a master whose adverts were waiting: %s", s.LastTransition.Reason)
		}
	}
	if s := state(); s.State != vrrp.Backup || s.Master != peer.String() {
		t.Fatalf("want BACKUP following %s, have %s following %q", peer, s.State, s.Master)
	}
}

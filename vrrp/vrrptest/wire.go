// Package vrrptest is a fake link for VRRP: what one group sends, every
// other group on the same Hub reads. With it a vrrp.Group, or a whole
// daemon, runs without root, raw sockets or network namespaces.
package vrrptest

import (
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/directord/directord/vrrp"
)

// Hub is a fake link.
type Hub struct {
	mu    sync.Mutex
	conns []*Conn
}

// Packet is one message on the link.
type Packet struct {
	B        []byte
	Src, Dst netip.Addr
	TTL      int
}

// Conn is one group's socket on the hub.
type Conn struct {
	hub    *Hub
	rx     chan Packet
	closed chan struct{}
	once   sync.Once
}

var _ vrrp.Conn = (*Conn)(nil)

// Listen opens a socket on the hub.
func (h *Hub) Listen() *Conn {
	c := &Conn{hub: h, rx: make(chan Packet, 64), closed: make(chan struct{})}
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
	return c
}

// Inject delivers a packet to every socket but except, as if from the
// wire; a socket whose queue is full loses it.
func (h *Hub) Inject(p Packet, except *Conn) {
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

func (c *Conn) ReadFrom(b []byte) (int, netip.Addr, netip.Addr, int, error) {
	select {
	case p := <-c.rx:
		return copy(b, p.B), p.Src, p.Dst, p.TTL, nil
	case <-c.closed:
		return 0, netip.Addr{}, netip.Addr{}, 0, net.ErrClosed
	}
}

func (c *Conn) WriteTo(b []byte, src, dst netip.Addr) error {
	c.hub.Inject(Packet{B: slices.Clone(b), Src: src, Dst: dst, TTL: 255}, c)
	return nil
}

func (c *Conn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// Addrs records the addresses a group holds.
type Addrs struct {
	mu   sync.Mutex
	held map[netip.Prefix]bool
	on   map[netip.Prefix]string // the interface each is on
}

var _ vrrp.Addresses = (*Addrs)(nil)

func (f *Addrs) Add(ifname string, p netip.Prefix) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held == nil {
		f.held, f.on = map[netip.Prefix]bool{}, map[netip.Prefix]string{}
	}
	if f.held[p] {
		return false, nil
	}
	f.held[p], f.on[p] = true, ifname
	return true, nil
}

// On is the interface p was added on ("" when not held).
func (f *Addrs) On(p netip.Prefix) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.held[p] {
		return ""
	}
	return f.on[p]
}

func (f *Addrs) Remove(_ string, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.held, p)
	return nil
}

// Holds reports whether p is held.
func (f *Addrs) Holds(p netip.Prefix) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.held[p]
}

// Announcer counts announcements.
type Announcer struct {
	mu     sync.Mutex
	count  int
	repeat int
}

var _ vrrp.Announcer = (*Announcer)(nil)

func (f *Announcer) Announce(_ string, _ []netip.Addr, repeat int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.count++
	f.repeat = repeat
	return nil
}

// LastRepeat is the repeat count of the latest announcement.
func (f *Announcer) LastRepeat() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.repeat
}

// Count is the number of announcements made.
func (f *Announcer) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count
}

// Routing records the routes and rules a group holds, by their text
// (routes with the device they went to).
type Routing struct {
	mu   sync.Mutex
	held map[string]bool
}

var _ vrrp.Routing = (*Routing)(nil)

func (f *Routing) set(key string, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held == nil {
		f.held = map[string]bool{}
	}
	if on {
		f.held[key] = true
	} else {
		delete(f.held, key)
	}
	return nil
}

func (f *Routing) AddRoute(dev string, r vrrp.Route) error { return f.set(dev+": "+r.String(), true) }
func (f *Routing) RemoveRoute(dev string, r vrrp.Route) error {
	return f.set(dev+": "+r.String(), false)
}
func (f *Routing) AddRule(r vrrp.Rule) error    { return f.set(r.String(), true) }
func (f *Routing) RemoveRule(r vrrp.Rule) error { return f.set(r.String(), false) }

// Held lists what is held, sorted.
func (f *Routing) Held() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]string, 0, len(f.held))
	for k := range f.held {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// VMACs records the VMAC interfaces a group made.
type VMACs struct {
	mu    sync.Mutex
	links map[string]string // name -> "base mac"
}

var _ vrrp.VMACs = (*VMACs)(nil)

func (f *VMACs) Ensure(base, name string, mac net.HardwareAddr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.links == nil {
		f.links = map[string]string{}
	}
	f.links[name] = base + " " + mac.String()
	return nil
}

func (f *VMACs) Remove(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.links, name)
	return nil
}

// Link is "base mac" of the VMAC name, "" when there is none.
func (f *VMACs) Link(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.links[name]
}

// Node is one group's view of the hub: its sockets send from Src.
type Node struct {
	Hub       *Hub
	Src       netip.Addr
	Addrs     *Addrs
	Announcer *Announcer
	Routing   *Routing
	VMACs     *VMACs
}

// NewNode returns a node on h sending from src.
func NewNode(h *Hub, src netip.Addr) *Node {
	return &Node{Hub: h, Src: src, Addrs: &Addrs{}, Announcer: &Announcer{}, Routing: &Routing{}, VMACs: &VMACs{}}
}

// Deps are vrrp.Deps over the hub.
func (n *Node) Deps(log *slog.Logger) vrrp.Deps {
	return vrrp.Deps{
		Listen:    func(string, bool) (vrrp.Conn, error) { return n.Hub.Listen(), nil },
		Addresses: n.Addrs,
		Announcer: n.Announcer,
		Routing:   n.Routing,
		VMACs:     n.VMACs,
		Primary:   func(string, bool, []netip.Prefix) (netip.Addr, error) { return n.Src, nil },
		Log:       log,
	}
}

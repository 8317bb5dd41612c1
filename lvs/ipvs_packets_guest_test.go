package lvs

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/directord/directord/lvs/lvstest/echo"
	"github.com/vishvananda/netns"
)

// Packets through the kernel's IPVS, in the qemu guest: a client and two
// real servers in network namespaces of their own, the guest's own
// namespace the director. The real servers answer each connection with
// their name and echo lines, as the namespace lab of the nftables tests.

// ipvsLab is the guest's namespaces.
type ipvsLab struct {
	t  *testing.T
	ip string // iproute2's ip
}

const (
	labVIP    = "192.0.2.100"
	labClient = "192.0.2.50"
	// labClients is how many client addresses there are, from
	// labClient up (the source-hashing tests need several).
	labClients = 8
	// labSorryPort is the port of the sorry server in rs2's namespace;
	// it answers "sorry".
	labSorryPort = 8081
)

// labClientAddr is the client's i-th address.
func labClientAddr(i int) string { return fmt.Sprintf("192.0.2.%d", 50+i) }

func labReal(i int) string { return fmt.Sprintf("203.0.113.%d", 11+i) }

// newIPVSLab builds the namespaces: client (192.0.2.50, routed through
// the director's 192.0.2.1) and rs1, rs2 (203.0.113.11, .12, each on a
// link of its own from the director's 203.0.113.1), each real server
// with a TCP server on port 8080 and the VIP on lo with the ARP sysctls
// direct routing needs, and a tunnel for TUN.
func newIPVSLab(t *testing.T) *ipvsLab {
	t.Helper()
	ip := os.Getenv("DIRECTORD_GUEST_IP")
	if ip == "" {
		t.Fatal("no iproute2 in the guest (DIRECTORD_GUEST_IP): make test installs it on the host, the guest takes it from there")
	}
	l := &ipvsLab{t: t, ip: ip}
	// iproute2 keeps named namespaces in /var/run/netns; the guest has
	// /run only.
	if _, err := os.Stat("/var/run"); err != nil {
		if err := os.MkdirAll("/var", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/run", "/var/run"); err != nil {
			t.Fatal(err)
		}
	}
	l.run("link", "set", "lo", "up")
	l.sysctl("", "net/ipv4/ip_forward", "1")
	// Replies of direct routing and tunnelling come back from the real
	// servers with the VIP, one of the director's own addresses, as
	// their source: the director routes them on to the client.
	l.sysctl("", "net/ipv4/conf/all/accept_local", "1")
	l.sysctl("", "net/ipv4/conf/all/rp_filter", "0")
	l.sysctl("", "net/ipv4/conf/default/rp_filter", "0")
	l.sysctl("", "net/ipv4/conf/default/accept_local", "1")
	l.run("netns", "add", "client")
	t.Cleanup(func() { exec.Command(ip, "netns", "del", "client").Run() })
	l.run("link", "add", "c0", "type", "veth", "peer", "name", "eth0", "netns", "client")
	t.Cleanup(func() { exec.Command(ip, "link", "del", "c0").Run() })
	l.run("addr", "add", "192.0.2.1/24", "dev", "c0")
	l.run("link", "set", "c0", "up")
	l.run("addr", "add", labVIP+"/32", "dev", "lo")
	t.Cleanup(func() { exec.Command(ip, "addr", "del", labVIP+"/32", "dev", "lo").Run() })
	l.in("client", "link", "set", "lo", "up")
	for i := range labClients {
		l.in("client", "addr", "add", labClientAddr(i)+"/24", "dev", "eth0")
	}
	l.in("client", "link", "set", "eth0", "up")
	l.in("client", "route", "add", "default", "via", "192.0.2.1")
	for i := range 2 {
		ns, link := fmt.Sprintf("rs%d", i+1), fmt.Sprintf("r%d", i+1)
		l.run("netns", "add", ns)
		t.Cleanup(func() { exec.Command(ip, "netns", "del", ns).Run() })
		l.run("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
		t.Cleanup(func() { exec.Command(ip, "link", "del", link).Run() })
		l.run("addr", "add", "203.0.113.1/32", "dev", link)
		l.run("link", "set", link, "up")
		l.run("route", "add", labReal(i)+"/32", "dev", link)
		l.in(ns, "link", "set", "lo", "up")
		l.in(ns, "addr", "add", labReal(i)+"/32", "dev", "eth0")
		l.in(ns, "link", "set", "eth0", "up")
		l.in(ns, "route", "add", "203.0.113.1/32", "dev", "eth0")
		l.in(ns, "route", "add", "default", "via", "203.0.113.1")
		// Direct routing and tunnelling deliver the VIP itself: it is on
		// lo (and the tunnel), never answered for in ARP.
		l.in(ns, "addr", "add", labVIP+"/32", "dev", "lo")
		l.sysctl(ns, "net/ipv4/conf/all/arp_ignore", "1")
		l.sysctl(ns, "net/ipv4/conf/all/arp_announce", "2")
		l.in(ns, "link", "set", "tunl0", "up")
		l.sysctl(ns, "net/ipv4/conf/all/rp_filter", "0")
		l.sysctl(ns, "net/ipv4/conf/tunl0/rp_filter", "0")
		l.serve(ns, ns, 8080) // NAT maps the port
		l.serve(ns, ns, 80)   // DR and TUN keep it
		l.serveUDP(ns, 5353)
	}
	l.serve("rs2", "sorry", labSorryPort)
	return l
}

func (l *ipvsLab) run(args ...string) {
	l.t.Helper()
	if out, err := exec.Command(l.ip, args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

func (l *ipvsLab) in(ns string, args ...string) {
	l.t.Helper()
	l.run(append([]string{"netns", "exec", ns, l.ip}, args...)...)
}

// sysctl writes /proc/sys/key in ns ("" for the director).
func (l *ipvsLab) sysctl(ns, key, value string) {
	l.t.Helper()
	l.do(ns, func() error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) })
}

// do runs fn on a thread in ns ("" for the director's own).
func (l *ipvsLab) do(ns string, fn func() error) {
	l.t.Helper()
	if ns == "" {
		if err := fn(); err != nil {
			l.t.Fatal(err)
		}
		return
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread is left to end with the goroutine: it may stay in ns
		h, err := netns.GetFromName(ns)
		if err != nil {
			done <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	if err := <-done; err != nil {
		l.t.Fatalf("in %s: %v", ns, err)
	}
}

// serve starts a TCP server in ns on port (echo.Serve) as name.
func (l *ipvsLab) serve(ns, name string, port int) {
	var ln net.Listener
	l.do(ns, func() (err error) { ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port)); return err })
	l.t.Cleanup(func() { ln.Close() })
	go echo.Serve(ln, name, nil, nil)
}

// serveUDP starts a UDP server in ns on port (echo.ServeUDP) as ns.
func (l *ipvsLab) serveUDP(ns string, port int) {
	var pc net.PacketConn
	l.do(ns, func() (err error) { pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", port)); return err })
	l.t.Cleanup(func() { pc.Close() })
	go echo.ServeUDP(pc, ns)
}

// askUDP sends one datagram from a socket of its own (a new connection
// for IPVS) from the client to the VIP's port 53 and returns the name
// in the answer.
func (l *ipvsLab) askUDP() (string, error) {
	var c net.Conn
	var err error
	l.do("client", func() error {
		c, err = net.Dial("udp4", labVIP+":53")
		return nil
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return echo.AskUDP(c)
}

// open connects from the client to the VIP's port 80 and reads the
// server's name.
func (l *ipvsLab) open() (*echo.Conn, error) { return l.openFrom(labClient) }

// openFrom is open from one of the client's addresses.
func (l *ipvsLab) openFrom(src string) (*echo.Conn, error) {
	var c net.Conn
	var err error
	l.do("client", func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err = d.Dial("tcp4", labVIP+":80")
		return nil
	})
	if err != nil {
		return nil, err
	}
	return echo.Greeted(c)
}

// openTo opens connections until one reaches server (rr alternates:
// a few suffice) and closes the others.
func (l *ipvsLab) openTo(t *testing.T, server string) *echo.Conn {
	t.Helper()
	for range 10 {
		c, err := l.open()
		if err != nil {
			t.Fatal(err)
		}
		if c.Server == server {
			t.Cleanup(func() { c.Close() })
			return c
		}
		c.Close()
	}
	t.Fatalf("10 connections and none to %s", server)
	return nil
}

// tally opens n connections, each closed at once, and counts them by
// server.
func (l *ipvsLab) tally(n int) map[string]int {
	l.t.Helper()
	return l.tallyFrom(labClient, n)
}

// tallyFrom is tally from one of the client's addresses.
func (l *ipvsLab) tallyFrom(src string, n int) map[string]int {
	l.t.Helper()
	got := map[string]int{}
	for range n {
		c, err := l.openFrom(src)
		if err != nil {
			l.t.Fatal(err)
		}
		got[c.Server]++
		c.Close()
	}
	return got
}

func labService(sched string, m Method, weights ...int) VirtualServer {
	vs := VirtualServer{Service: Service{Key: Key{Protocol: TCP, Addr: netip.MustParseAddrPort(labVIP + ":80")}, Scheduler: sched}}
	for i, w := range weights {
		port := uint16(8080)
		if m != NAT {
			port = 80 // DR and TUN keep the service's port
		}
		vs.Reals = append(vs.Reals, Real{Addr: netip.AddrPortFrom(netip.MustParseAddr(labReal(i)), port), Weight: w, Method: m})
	}
	return vs
}

// TestGuestIPVSPackets: real TCP (and UDP) through IPVS for each
// forwarding method, an upper threshold, wrr's proportions, persistence,
// a drain with a live connection, the repair of a service deleted behind
// directord's back, sh's and mh's stickiness, and a sorry server below
// quorum.
func TestGuestIPVSPackets(t *testing.T) {
	d := guestIPVS(t)
	l := newIPVSLab(t)
	r := guestRec(t, d)
	set := func(vs VirtualServer) {
		t.Helper()
		r.Set([]VirtualServer{vs})
		if _, err := r.Reconcile(); err != nil {
			t.Fatal(err)
		}
	}

	// IPVS counts a server's closed connections (until they expire)
	// towards its threshold, and keeps them with a deleted server it
	// reuses: the servers here are endpoints no earlier test used, and
	// this runs first.
	t.Run("upper threshold", func(t *testing.T) {
		vs := labService("rr", NAT, 1, 1)
		for i := range vs.Reals {
			vs.Reals[i].Addr = netip.AddrPortFrom(vs.Reals[i].Addr.Addr(), 80)
		}
		vs.Reals[0].Upper = 1
		set(vs)
		held := l.openTo(t, "rs1")
		defer held.Close()
		// rs1 has its one connection: IPVS takes it out of the rotation.
		if got := l.tally(4); got["rs2"] != 4 {
			t.Fatalf("with rs1 at its upper threshold, 4 connections went %v", got)
		}
		if ans, err := held.Echo("over?"); err != nil || ans != "rs1 over?" {
			t.Fatalf("the connection at the threshold: %q, %v", ans, err)
		}
	})
	t.Run("nat wrr 3:1", func(t *testing.T) {
		set(labService("wrr", NAT, 3, 1))
		if got := l.tally(40); got["rs1"] != 30 || got["rs2"] != 10 {
			t.Fatalf("40 connections went %v; want 30 and 10", got)
		}
	})
	t.Run("persistence", func(t *testing.T) {
		vs := labService("rr", NAT, 1, 1)
		vs.Persistence = time.Minute
		set(vs)
		if got := l.tally(6); len(got) != 1 {
			t.Fatalf("a persistent client went to %v", got)
		}
	})
	t.Run("drain with a live connection", func(t *testing.T) {
		set(labService("rr", NAT, 1, 1))
		held := l.openTo(t, "rs1")
		defer held.Close()
		vs := labService("rr", NAT, 1, 1)
		vs.Reals = vs.Reals[1:] // rs1 leaves: weight 0 while its connection lasts
		set(vs)
		if got := l.tally(4); got["rs2"] != 4 {
			t.Fatalf("new connections while rs1 drains: %v", got)
		}
		if ans, err := held.Echo("still there?"); err != nil || ans != "rs1 still there?" {
			t.Fatalf("the connection to the draining server: %q, %v", ans, err)
		}
		es, _ := d.List()
		if rs, ok := es[0].Real(netip.MustParseAddrPort(labReal(0) + ":8080")); !ok || rs.Weight != 0 || rs.Active != 1 {
			t.Fatalf("draining rs1 in the kernel: %+v", es[0].Reals)
		}
	})
	t.Run("repaired after deletion", func(t *testing.T) {
		set(labService("rr", NAT, 1, 1))
		if err := d.h.(interface{ Flush() error }).Flush(); err != nil { // ipvsadm -C
			t.Fatal(err)
		}
		if _, err := r.Reconcile(); err != nil {
			t.Fatal(err)
		}
		if got := l.tally(2); got["rs1"] != 1 || got["rs2"] != 1 {
			t.Fatalf("after ipvsadm -C and a reconcile: %v", got)
		}
	})
	t.Run("udp rr", func(t *testing.T) {
		vs := VirtualServer{Service: Service{Key: Key{Protocol: UDP, Addr: netip.MustParseAddrPort(labVIP + ":53")}, Scheduler: "rr"}}
		for i := range 2 {
			vs.Reals = append(vs.Reals, Real{Addr: netip.MustParseAddrPort(labReal(i) + ":5353"), Weight: 1, Method: NAT})
		}
		set(vs)
		got := map[string]int{}
		for range 4 {
			name, err := l.askUDP()
			if err != nil {
				t.Fatal(err)
			}
			got[name]++
		}
		if got["rs1"] != 2 || got["rs2"] != 2 {
			t.Fatalf("4 UDP exchanges from 4 sockets went %v; want 2 and 2", got)
		}
	})
	// sh and mh: each client address stays on one server, and the
	// clients are spread over both (the hashes are fixed, so this holds
	// or fails every time).
	for _, sched := range []string{"sh", "mh"} {
		t.Run(sched+" sticks", func(t *testing.T) {
			set(labService(sched, NAT, 1, 1))
			servers := map[string]int{}
			for i := range labClients {
				got := l.tallyFrom(labClientAddr(i), 4)
				if len(got) != 1 {
					t.Fatalf("client %s went to %v", labClientAddr(i), got)
				}
				for s := range got {
					servers[s]++
				}
			}
			if servers["rs1"] == 0 || servers["rs2"] == 0 {
				t.Fatalf("%d clients by %s: %v", labClients, sched, servers)
			}
		})
	}
	t.Run("quorum and sorry server", func(t *testing.T) {
		vs := labService("rr", NAT, 1, 1)
		vs.Quorum = 2
		vs.Sorry = &Real{Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", labReal(1), labSorryPort)), Weight: 1, Method: NAT}
		set(vs)
		if got := l.tally(2); got["rs1"] != 1 || got["rs2"] != 1 {
			t.Fatalf("with quorum: %v", got)
		}
		rs1 := vs.Reals[0].Addr
		r.SetHealth(vs.Key, rs1, Health{Up: false, Weight: -1})
		if _, err := r.Reconcile(); err != nil {
			t.Fatal(err)
		}
		if got := l.tally(3); got["sorry"] != 3 {
			t.Fatalf("below quorum (live weight 1 of 2): %v; want all to the sorry server", got)
		}
		r.SetHealth(vs.Key, rs1, Health{Up: true, Weight: -1})
		if _, err := r.Reconcile(); err != nil {
			t.Fatal(err)
		}
		if got := l.tally(2); got["rs1"] != 1 || got["rs2"] != 1 {
			t.Fatalf("quorum regained: %v", got)
		}
	})
	for _, m := range []Method{DR, Tunnel} {
		t.Run(string(m), func(t *testing.T) {
			set(labService("rr", m, 1, 1))
			if got := l.tally(4); got["rs1"] != 2 || got["rs2"] != 2 {
				t.Fatalf("4 connections by %s went %v", m, got)
			}
		})
	}
}

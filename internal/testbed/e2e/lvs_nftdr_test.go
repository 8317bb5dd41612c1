package e2e

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/lvs"
)

func drVS(sched string, reals ...lvs.Real) lvs.VirtualServer {
	vs := tcpVS(sched, reals...)
	vs.Service.Key.Addr = netip.MustParseAddrPort(fmt.Sprintf("%s:%d", scene.VIP, scene.TCPPort))
	for i := range vs.Reals {
		vs.Reals[i].Method = lvs.DR
	}
	return vs
}

// TestNFTDirectRouting: stateless direct routing in the netdev ingress
// hook of the interface facing the clients. The real servers hold the VIP
// on lo (docs/forwarding.md) and answer the client themselves; the
// director keeps no conntrack entry for the flows; mh spreads them, and a
// server leaving moves its own flows and (Maglev) almost none of the
// others'.
func TestNFTDirectRouting(t *testing.T) {
	// The first transaction is refused: the netdev table it would have
	// made is not there, and the next one makes it.
	var refused atomic.Bool
	s := newNFTSceneWith(t, 3, lvs.NFTOptions{DRInterface: "eth0", Refuse: func(lvs.Key) bool { return !refused.Swap(true) }})
	// The director does not own the VIP here: a reply from the VIP
	// crossing it on the way back would be a martian (in production the
	// replies go to the router). The client reaches the VIP through it.
	s.Director.IP("addr", "del", scene.VIP+"/32", "dev", "eth0")
	s.Client.IP("neigh", "replace", scene.VIP, "lladdr", scene.MAC(s.Director), "dev", "eth0", "nud", "permanent")
	for _, h := range s.Reals {
		h.AddAddr("lo", scene.VIP+"/32")
		s.Sysctl(h, "net/ipv4/conf/all/arp_ignore", "1")
		s.Sysctl(h, "net/ipv4/conf/all/arp_announce", "2")
	}
	vip := fmt.Sprintf("%s:%d", scene.VIP, scene.TCPPort)
	reals := []lvs.Real{backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1), backend(2, scene.TCPPort, 1)}
	s.rec.Set([]lvs.VirtualServer{drVS("mh", reals...)})
	if _, err := s.rec.Reconcile(); err == nil {
		t.Fatal("the refused transaction reported no error")
	}
	if out, err := s.Director.Run("nft", "list", "table", "netdev", lvs.NFTDRTable); err == nil {
		t.Fatalf("a refused transaction left the netdev table:\n%s", out)
	}
	// Nor does the data plane believe it made it: reading the kernel
	// finds no drift to repair.
	if _, err := s.nft.List(); err != nil {
		t.Fatal(err)
	}
	if r := s.nft.TakeRepairs(); len(r) != 0 {
		t.Fatalf("the refused netdev table was taken for drift: %+v", r)
	}
	s.set(t, drVS("mh", reals...))

	var conns []*scene.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	got := map[string]int{}
	for i := range 90 {
		c, err := s.Open(scene.ClientAddr(i%scene.Clients), vip)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		got[c.Server]++
	}
	t.Logf("90 connections: %v", got)
	for _, h := range s.Reals {
		if got[h.Name] < 10 {
			t.Fatalf("mh over 3 servers gave %v", got)
		}
	}
	// Stateless: nothing of the flows in the director's conntrack table.
	out, _ := s.Director.Run("conntrack", "-L", "-d", scene.VIP)
	if n := strings.Count(out, "dport="); n != 0 {
		t.Fatalf("director tracks %d connections to the VIP:\n%s", n, out)
	}
	// The service's counters come from the netdev table.
	es, err := s.nft.ListStats()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Stats.PacketsIn < 90*2 {
		t.Fatalf("direct-routing counters %+v", es)
	}

	// rs3 leaves: its clients are sent elsewhere (and reset by a server
	// that does not know them); the others carry on. Maglev moves at most
	// 0.4 % of the other flows' buckets: one connection of 60 may move.
	s.set(t, drVS("mh", reals[:2]...))
	moved := 0
	for i, c := range conns {
		if c.Server == "rs3" {
			continue
		}
		want := fmt.Sprintf("%s hello %d", c.Server, i)
		if ans, err := c.Echo(fmt.Sprintf("hello %d", i)); err != nil || ans != want {
			moved++
			t.Logf("connection %d to %s: %q %v", i, c.Server, ans, err)
		}
	}
	if moved > 1 {
		t.Fatalf("%d connections to rs1 and rs2 broke when rs3 left", moved)
	}
	after := tally(t, 30, func() (string, error) { return s.Ask("", vip) })
	if after["rs3"] != 0 || len(after) != 2 {
		t.Fatalf("after rs3 left: %v", after)
	}

	// Drift: a map of the netdev table emptied by hand is found at the
	// next reconcile, which rebuilds the table.
	s.Director.MustRun("nft", "flush", "map", "netdev", lvs.NFTDRTable, "svc4")
	if _, err := s.rec.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if out := s.Director.MustRun("nft", "list", "map", "netdev", lvs.NFTDRTable, "svc4"); !strings.Contains(out, "192.0.2.100 . tcp . 8080") {
		t.Fatalf("the flushed dispatch map was not rebuilt:\n%s", out)
	}
	if again := tally(t, 30, func() (string, error) { return s.Ask("", vip) }); again["rs3"] != 0 || len(again) != 2 {
		t.Fatalf("after the repair: %v", again)
	}

	// A slot pointed at the other server, the count unchanged, is drift
	// too.
	m := regexp.MustCompile(`map (sl\d+) \{`).FindStringSubmatch(s.Director.MustRun("nft", "list", "table", "netdev", lvs.NFTDRTable))
	if m == nil {
		t.Fatal("no slot map in the netdev table")
	}
	els := regexp.MustCompile(`(\d+) : ([^,}\n]+)`).FindAllStringSubmatch(s.Director.MustRun("nft", "list", "map", "netdev", lvs.NFTDRTable, m[1]), -1)
	other := slices.IndexFunc(els, func(e []string) bool { return strings.TrimSpace(e[2]) != strings.TrimSpace(els[0][2]) })
	if other < 0 {
		t.Fatalf("the slots of %s do not name two servers: %v", m[1], els)
	}
	s.Director.MustRun("nft", fmt.Sprintf("delete element netdev %[1]s %[2]s { %[3]s } ; add element netdev %[1]s %[2]s { %[3]s : %[4]s }",
		lvs.NFTDRTable, m[1], els[0][1], strings.TrimSpace(els[other][2])))
	if n, err := s.rec.Reconcile(); err != nil || n == 0 {
		t.Fatalf("a slot pointed elsewhere: the next reconcile did %d operations (%v)", n, err)
	}
	if again := tally(t, 30, func() (string, error) { return s.Ask("", vip) }); again["rs3"] != 0 || len(again) != 2 {
		t.Fatalf("after the second repair: %v", again)
	}
}

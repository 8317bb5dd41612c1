package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/lvs"
)

// nftScene is a lab with the nftables data plane driven from the test
// process into the director's namespace.
type nftScene struct {
	*scene.LVS
	nft *lvs.NFT
	rec *lvs.Reconciler
}

func newNFTScene(t *testing.T, reals int) *nftScene {
	t.Helper()
	return newNFTSceneWith(t, reals, lvs.NFTOptions{})
}

// newNFTSceneWith is newNFTScene with the data plane's options (its NetNS
// is the director's).
func newNFTSceneWith(t *testing.T, reals int, o lvs.NFTOptions) *nftScene {
	t.Helper()
	lab.Require(t, "nft")
	l := lab.New(t)
	s := scene.NewLVS(l, reals)
	ns, err := scene.NetNS(s.Director)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	o.NetNS = int(ns.Fd())
	o.CheckBaseline = true // every commit's piecewise drift baseline checked against the whole table
	nft, err := lvs.NewNFT(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nft.Close() })
	rec, err := lvs.NewReconciler(nft, lvs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &nftScene{LVS: s, nft: nft, rec: rec}
}

func (s *nftScene) set(t *testing.T, vss ...lvs.VirtualServer) int {
	t.Helper()
	s.rec.Set(vss)
	n, err := s.rec.Reconcile()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

var (
	vipTCP = netip.MustParseAddrPort(fmt.Sprintf("%s:80", scene.VIP))
	vipUDP = netip.MustParseAddrPort(fmt.Sprintf("%s:53", scene.VIP))
)

func backend(i, port, weight int) lvs.Real {
	return lvs.Real{Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", scene.RealAddr(i), port)), Weight: weight, Method: lvs.NAT}
}

func tcpVS(sched string, reals ...lvs.Real) lvs.VirtualServer {
	return lvs.VirtualServer{Name: "web", Service: lvs.Service{Key: lvs.Key{Protocol: lvs.TCP, Addr: vipTCP}, Scheduler: sched}, Reals: reals}
}

// holdEach opens connections to addr until it holds one to each of n
// servers, by server name; they close at the test's end.
func (s *nftScene) holdEach(t *testing.T, addr string, n int) map[string]*scene.Conn {
	t.Helper()
	held := map[string]*scene.Conn{}
	for tries := 0; len(held) < n; tries++ {
		if tries == 10*n {
			t.Fatalf("%d connections reached only %d servers", tries, len(held))
		}
		c, err := s.Open("", addr)
		if err != nil {
			t.Fatal(err)
		}
		if held[c.Server] != nil {
			c.Close()
			continue
		}
		held[c.Server] = c
		t.Cleanup(func() { c.Close() })
	}
	return held
}

// spread opens n connections and counts them by server.
func (s *nftScene) spread(t *testing.T, src string, n int) map[string]int {
	t.Helper()
	return tally(t, n, func() (string, error) { return s.Ask(src, vipTCP.String()) })
}

func TestNFTWeightedRoundRobin(t *testing.T) {
	s := newNFTScene(t, 2)
	s.set(t, tcpVS("wrr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 2)))
	got := s.spread(t, "", 90)
	// numgen counts exactly: every 3 connections, 1 to rs1 and 2 to rs2.
	if got["rs1"] != 30 || got["rs2"] != 60 {
		t.Fatalf("wrr 1:2 over 90 connections gave %v", got)
	}
	// The counters say the same.
	es, err := s.nft.ListStats()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Stats.Connections != 90 {
		t.Fatalf("service counters %+v", es)
	}
	for _, r := range es[0].Reals {
		want := map[int]uint64{1: 30, 2: 60}[r.Weight]
		if r.Stats.Connections != want {
			t.Fatalf("%s counted %d connections, want %d", r.Addr, r.Stats.Connections, want)
		}
		// Each connection: SYN, ACK, FIN, ACK at least from the client;
		// from the server a SYN-ACK and the name, whose segment may
		// carry the FIN too.
		if r.Stats.PacketsIn < 3*want || r.Stats.PacketsOut < 2*want || r.Stats.BytesOut < r.Stats.PacketsOut*40 {
			t.Fatalf("%s traffic counters %+v for %d connections", r.Addr, r.Stats, want)
		}
	}
	if es[0].Stats.PacketsIn != es[0].Reals[0].Stats.PacketsIn+es[0].Reals[1].Stats.PacketsIn {
		t.Fatalf("service packets %d are not the sum of its servers'", es[0].Stats.PacketsIn)
	}

	// A weight change is one operation and one transaction; nothing
	// else changes, so the counters go on.
	if n := s.set(t, tcpVS("wrr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1))); n != 1 {
		t.Fatalf("weight change took %d operations", n)
	}
	if n := s.set(t, tcpVS("wrr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1))); n != 0 {
		t.Fatalf("no change took %d operations", n)
	}
	got = s.spread(t, "", 40)
	if got["rs1"] != 20 || got["rs2"] != 20 {
		t.Fatalf("wrr 1:1 gave %v", got)
	}
	es, err = s.nft.ListStats()
	if err != nil {
		t.Fatal(err)
	}
	if es[0].Stats.Connections != 130 {
		t.Fatalf("service counter %d after a weight change, want 130", es[0].Stats.Connections)
	}
	// The servers' counts go on too, though their slots were rewritten.
	for _, r := range es[0].Reals {
		want := map[string]uint64{scene.RealAddr(0): 50, scene.RealAddr(1): 80}[r.Addr.Addr().String()]
		if r.Stats.Connections != want {
			t.Fatalf("%s counted %d connections after the weight change, want %d", r.Addr, r.Stats.Connections, want)
		}
	}
	// The kernel's own tool can list what directord made.
	out, err := s.Director.Run("nft", "list", "table", "inet", lvs.NFTTable)
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	t.Logf("nft list table inet %s:\n%s", lvs.NFTTable, out)
}

func TestNFTUDPRoundRobin(t *testing.T) {
	s := newNFTScene(t, 3)
	vs := lvs.VirtualServer{Name: "dns", Service: lvs.Service{Key: lvs.Key{Protocol: lvs.UDP, Addr: vipUDP}, Scheduler: "rr"},
		Reals: []lvs.Real{backend(0, scene.UDPPort, 1), backend(1, scene.UDPPort, 5), backend(2, scene.UDPPort, 1)}}
	s.set(t, vs)
	got := tally(t, 30, func() (string, error) { return s.AskUDP(vipUDP.String()) })
	// rr ignores weights other than 0, as IPVS's rr does.
	if got["rs1"] != 10 || got["rs2"] != 10 || got["rs3"] != 10 {
		t.Fatalf("udp rr over 30 flows gave %v", got)
	}
}

func TestNFTSourceHash(t *testing.T) {
	s := newNFTScene(t, 3)
	s.set(t, tcpVS("sh", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1), backend(2, scene.TCPPort, 1)))
	seen := map[string]bool{}
	for i := range scene.Clients {
		src := scene.ClientAddr(i)
		got := s.spread(t, src, 5)
		if len(got) != 1 {
			t.Fatalf("sh sent client %s to %v", src, got)
		}
		for name := range got {
			seen[name] = true
		}
	}
	// The hash spreads clients: eight addresses do not all land on one
	// server (the seed is fixed, so this is deterministic).
	if len(seen) < 2 {
		out, _ := s.Director.Run("nft", "list", "table", "inet", lvs.NFTTable)
		t.Fatalf("%d clients all went to %v\n%s", scene.Clients, seen, out)
	}
}

// TestNFTMaglev: mh on nftables keeps a client on one server, spreads
// clients, and when a server leaves only its clients move (the table is
// Maglev's: the same on every director without any sync).
func TestNFTMaglev(t *testing.T) {
	s := newNFTScene(t, 3)
	reals := []lvs.Real{backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1), backend(2, scene.TCPPort, 1)}
	s.set(t, tcpVS("mh", reals...))
	before := s.manyClients(t, 3)
	servers := map[string]int{}
	for _, name := range before {
		servers[name]++
	}
	if len(servers) != 3 {
		t.Fatalf("32 clients over %v", servers)
	}
	s.set(t, tcpVS("mh", reals[1:]...)) // rs1 leaves (weight 0, draining)
	s.onlyTheirsMoved(t, before, "rs1")
}

// TestNFTSourceHashDrainMovesOnlyItsClients: draining one sh server (weight
// 0) moves its clients and no other (the buckets stay 256, as IPVS's).
// The finding 10: 2 of 6 other clients moved.
func TestNFTSourceHashDrainMovesOnlyItsClients(t *testing.T) {
	s := newNFTScene(t, 3)
	// rs1 drains: the first in the layout. (nftables's jhash scales the
	// hash to the slots, so removing the last slot alone would move no
	// other client even with the slots laid out anew.)
	reals := func(w0 int) []lvs.Real {
		return []lvs.Real{backend(0, scene.TCPPort, w0), backend(1, scene.TCPPort, 1), backend(2, scene.TCPPort, 1)}
	}
	s.set(t, tcpVS("sh", reals(1)...))
	before := s.manyClients(t, 1)
	s.set(t, tcpVS("sh", reals(0)...)) // rs1 at weight 0
	s.onlyTheirsMoved(t, before, "rs1")
	t.Logf("clients before the drain: %v", before)
}

// manyClients gives the client 32 addresses (with fewer, the clients of
// the servers that stay can keep their server by chance even when a
// table is laid out anew) and returns the server each reaches through
// the VIP, checking that each of its tries lands on one.
func (s *nftScene) manyClients(t *testing.T, tries int) map[string]string {
	t.Helper()
	for i := scene.Clients; i < 32; i++ {
		s.Client.AddAddr("eth0", scene.ClientAddr(i)+"/24")
	}
	on := map[string]string{}
	for i := range 32 {
		got := s.spread(t, scene.ClientAddr(i), tries)
		if len(got) != 1 {
			t.Fatalf("client %s went to %v", scene.ClientAddr(i), got)
		}
		for name := range got {
			on[scene.ClientAddr(i)] = name
		}
	}
	return on
}

// onlyTheirsMoved checks, after server gone left or drained, that its
// clients went elsewhere and every other client stayed on its server.
func (s *nftScene) onlyTheirsMoved(t *testing.T, before map[string]string, gone string) {
	t.Helper()
	for src, was := range before {
		now, err := s.Ask(src, vipTCP.String())
		switch {
		case err != nil:
			t.Fatal(err)
		case was == gone && now == gone:
			t.Errorf("client %s stayed on %s, which left", src, gone)
		case was != gone && now != was:
			t.Errorf("client %s moved from %s to %s though %s did not change", src, was, now, was)
		}
	}
}

func TestNFTPersistence(t *testing.T) {
	s := newNFTScene(t, 2)
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1))
	vs.Persistence = 2 * time.Second
	s.set(t, vs)
	got := s.spread(t, "", 10)
	if len(got) != 1 {
		t.Fatalf("persistent rr spread one client over %v", got)
	}
	var first string
	for name := range got {
		first = name
	}
	// Another client is scheduled afresh: rr gives it the other server.
	if name, err := s.Ask("192.0.2.51", vipTCP.String()); err != nil || name == first {
		t.Fatalf("second client went to %q (%v), want the other server than %s", name, err, first)
	}
	// The entry lives for the timeout after the last connection; when
	// it is gone the client is scheduled again (rr: the next server).
	start := time.Now()
	if err := lab.Eventually(10*time.Second, func() error {
		out, err := s.Director.Run("nft", "list", "table", "inet", lvs.NFTTable)
		if err != nil {
			return err
		}
		if strings.Contains(out, scene.ClientIP+" ") {
			return errors.New("persistence entry still there")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if held := time.Since(start); held < time.Second {
		t.Fatalf("persistence entry gone after %s, timeout 2s", held)
	}
	name, err := s.Ask("", vipTCP.String())
	if err != nil {
		t.Fatal(err)
	}
	if name != first {
		t.Logf("after the timeout the client moved from %s to %s", first, name)
	}
	// The kernel's own tool can list everything directord made.
	out, err := s.Director.Run("nft", "list", "table", "inet", lvs.NFTTable)
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	t.Logf("nft list table inet %s:\n%s", lvs.NFTTable, out)
}

func TestNFTDrain(t *testing.T) {
	s := newNFTScene(t, 2)
	s.set(t, tcpVS("rr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1)))
	held := s.holdEach(t, vipTCP.String(), 2)
	// rs2 leaves the configuration: weight 0, no new connections, the
	// open one goes on.
	if n := s.set(t, tcpVS("rr", backend(0, scene.TCPPort, 1))); n != 1 {
		t.Fatalf("removing a server took %d operations, want 1 (weight 0)", n)
	}
	if got := s.spread(t, "", 10); got["rs1"] != 10 {
		t.Fatalf("new connections while rs2 drains: %v", got)
	}
	if ans, err := held["rs2"].Echo("still there?"); err != nil || ans != "rs2 still there?" {
		t.Fatalf("open connection to the draining server: %q, %v", ans, err)
	}
	es, _ := s.nft.List()
	if r, ok := es[0].Real(backend(1, scene.TCPPort, 0).Addr); !ok || r.Weight != 0 {
		t.Fatalf("draining server %+v", es[0].Reals)
	}
	// While the connection is open, reconciling keeps the server.
	if n, err := s.rec.Reconcile(); err != nil || n != 0 {
		t.Fatalf("reconcile while draining: %d ops, %v", n, err)
	}
	// Once it closes, the server is deleted.
	held["rs2"].Close()
	if err := lab.Eventually(10*time.Second, func() error {
		if _, err := s.rec.Reconcile(); err != nil {
			return err
		}
		es, _ := s.nft.List()
		if len(es[0].Reals) != 1 {
			return fmt.Errorf("still %d real servers", len(es[0].Reals))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if ans, err := held["rs1"].Echo("and you?"); err != nil || ans != "rs1 and you?" {
		t.Fatalf("connection to the remaining server: %q, %v", ans, err)
	}
}

func TestNFTRebuildsWhenFlushed(t *testing.T) {
	s := newNFTScene(t, 1)
	s.set(t, tcpVS("rr", backend(0, scene.TCPPort, 1)))
	s.Director.MustRun("nft", "flush", "ruleset")
	if n := s.set(t, tcpVS("rr", backend(0, scene.TCPPort, 1))); n != 2 {
		t.Fatalf("rebuilding after nft flush ruleset took %d operations, want 2", n)
	}
	if name, err := s.Ask("", vipTCP.String()); err != nil || name != "rs1" {
		t.Fatalf("after rebuild: %q, %v", name, err)
	}
}

// withRepairs gives s a reconciler that records the repairs it makes.
func withRepairs(t *testing.T, s *nftScene) *[]lvs.Repair {
	t.Helper()
	var repairs []lvs.Repair
	rec, err := lvs.NewReconciler(s.nft, lvs.Options{OnRepair: func(x lvs.Repair) { repairs = append(repairs, x) }})
	if err != nil {
		t.Fatal(err)
	}
	s.rec = rec
	return &repairs
}

// Edits inside directord's own table (its rules flushed, a dispatch map
// emptied) are found and repaired at the next reconcile, and reported; on
// main three reconciles did nothing and the VIP refused connections for
// good. A change elsewhere in nftables is not taken for drift.
func TestNFTDriftRepaired(t *testing.T) {
	s := newNFTScene(t, 2)
	got := withRepairs(t, s)
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1))
	s.set(t, vs)
	answers := func(when string) {
		t.Helper()
		if name, err := s.Ask("", vipTCP.String()); err != nil || !strings.HasPrefix(name, "rs") {
			t.Fatalf("%s: %q, %v", when, name, err)
		}
	}
	answers("programmed")

	// Another table committed: the generation moves, directord's table
	// is the same: no repair.
	s.Director.MustRun("nft", "add", "table", "inet", "other")
	if n := s.set(t, vs); n != 0 || len(*got) != 0 {
		t.Fatalf("a foreign table: %d operations, repairs %+v", n, *got)
	}

	args := func(a ...string) func() []string { return func() []string { return a } }
	for _, edit := range []struct {
		name string
		args func() []string // the nft command, made when its turn comes
	}{
		{"rules flushed", args("flush", "table", "inet", lvs.NFTTable)},
		{"the service map emptied", args("flush", "map", "inet", lvs.NFTTable, "svc4")},
		// The services' slots, in a map they share.
		{"the slot map emptied", args("flush", "map", "inet", lvs.NFTTable, "slots4_0")},
		{"one slot deleted", args("delete", "element", "inet", lvs.NFTTable, "slots4_0",
			fmt.Sprintf("{ %s . tcp . %d . 0x00000001 }", vipTCP.Addr(), vipTCP.Port()))},
		// As many elements as before, one of them changed.
		{"one slot pointed elsewhere", args(fmt.Sprintf("delete element inet %[1]s slots4_0 { %[2]s . tcp . %[3]d . 0x00000001 } ; "+
			"add element inet %[1]s slots4_0 { %[2]s . tcp . %[3]d . 0x00000001 : %[4]s . %[5]d }",
			lvs.NFTTable, vipTCP.Addr(), vipTCP.Port(), scene.RealAddr(0), scene.TCPPort))},
		{"the service's dispatch moved to another port", func() []string {
			m := regexp.MustCompile(`goto (s\d+)`).FindStringSubmatch(s.Director.MustRun("nft", "list", "map", "inet", lvs.NFTTable, "svc4"))
			if m == nil {
				t.Fatal("no service chain in nft list map svc4")
			}
			return []string{fmt.Sprintf("delete element inet %[1]s svc4 { %[2]s . tcp . %[3]d } ; add element inet %[1]s svc4 { %[2]s . tcp . %[4]d : goto %[5]s }",
				lvs.NFTTable, vipTCP.Addr(), vipTCP.Port(), vipTCP.Port()+1, m[1])}
		}},
	} {
		*got = nil
		s.Director.MustRun("nft", edit.args()...)
		if n := s.set(t, vs); n == 0 || len(*got) == 0 || (*got)[0].Kind != "table" {
			t.Fatalf("%s: the next reconcile did %d operations, repairs %+v", edit.name, n, *got)
		}
		answers("after repairing " + edit.name)
		if n := s.set(t, vs); n != 0 {
			t.Fatalf("%s: the reconcile after the repair did %d operations", edit.name, n)
		}
	}
}

// TestNFTDriftRepairedPersistent: a persistent service's slots are in a map
// of its own (to its servers' chains); one of them deleted by hand is
// drift too.
func TestNFTDriftRepairedPersistent(t *testing.T) {
	s := newNFTScene(t, 2)
	got := withRepairs(t, s)
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1))
	vs.Persistence = time.Minute
	s.set(t, vs)
	m := regexp.MustCompile(`map (sl\d+) \{`).FindStringSubmatch(s.Director.MustRun("nft", "list", "maps", "inet"))
	if m == nil {
		t.Fatal("no slot map of the service's own in nft list maps")
	}
	s.Director.MustRun("nft", "delete", "element", "inet", lvs.NFTTable, m[1], "{ 0 }")
	if n := s.set(t, vs); n == 0 || len(*got) == 0 || (*got)[0].Kind != "table" {
		t.Fatalf("a slot deleted from %s: the next reconcile did %d operations, repairs %+v", m[1], n, *got)
	}
	if name, err := s.Ask("", vipTCP.String()); err != nil || !strings.HasPrefix(name, "rs") {
		t.Fatalf("after the repair: %q, %v", name, err)
	}
	if n := s.set(t, vs); n != 0 {
		t.Fatalf("the reconcile after the repair did %d operations", n)
	}
}

// TestNFTMasquerade: real servers that do not route back through the
// director (no default route) answer only when the service masquerades.
func TestNFTMasquerade(t *testing.T) {
	s := newNFTScene(t, 1)
	s.Reals[0].IP("route", "del", "default")
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1))
	s.set(t, vs)
	if name, err := s.Ask("", vipTCP.String()); err == nil {
		t.Fatalf("without masquerade the reply found its way (%s): the test proves nothing", name)
	}
	vs.Masquerade = true
	if n := s.set(t, vs); n != 1 {
		t.Fatalf("turning masquerade on took %d operations", n)
	}
	if name, err := s.Ask("", vipTCP.String()); err != nil || name != "rs1" {
		t.Fatalf("with masquerade: %q, %v", name, err)
	}
	// Off again: the element goes, and so does the reply path.
	vs.Masquerade = false
	s.set(t, vs)
	out := s.Director.MustRun("nft", "list", "set", "inet", lvs.NFTTable, "masq4")
	if strings.Contains(out, "203.0.113.11") {
		t.Fatalf("masquerade element left:\n%s", out)
	}
}

// TestNFTRefusedApplyChangesNothing: a batch the data plane refuses
// half-way (an lc service after a weight change) changes neither the
// kernel's table nor the model: the other service keeps answering, with
// its old weight.
func TestNFTRefusedApplyChangesNothing(t *testing.T) {
	s := newNFTScene(t, 1)
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1))
	s.set(t, vs)
	bad := lvs.Service{Key: lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort("192.0.2.100:81")}, Scheduler: "lc"}
	err := s.nft.Apply([]lvs.Op{
		{Kind: lvs.UpdateReal, Service: vs.Service, Real: backend(0, scene.TCPPort, 5)},
		{Kind: lvs.AddService, Service: bad},
	})
	if err == nil {
		t.Fatal("an lc service was accepted by nftables")
	}
	es, err := s.nft.List()
	if err != nil || len(es) != 1 || len(es[0].Reals) != 1 || es[0].Reals[0].Weight != 1 {
		t.Fatalf("after a refused apply the data plane lists %+v, %v; want the service as it was", es, err)
	}
	if name, err := s.Ask("", vipTCP.String()); err != nil || name != "rs1" {
		t.Fatalf("after the refused apply: %q, %v", name, err)
	}
	if n := s.set(t, vs); n != 0 {
		t.Fatalf("nothing to do took %d operations", n)
	}
}

// TestNFTRefusedServiceIsolated: a service the kernel refuses is named,
// with the kernel's error, and every other service is programmed and
// answers; once the kernel takes it, it is programmed too.
func TestNFTRefusedServiceIsolated(t *testing.T) {
	var mu sync.Mutex
	badPort := uint16(81)
	s := newNFTSceneWith(t, 1, lvs.NFTOptions{Refuse: func(k lvs.Key) bool {
		mu.Lock()
		defer mu.Unlock()
		return k.Addr.Port() == badPort
	}})
	sc, rec := s.LVS, s.rec
	var vss []lvs.VirtualServer
	for port := 80; port <= 83; port++ {
		k := lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", scene.VIP, port))}
		vss = append(vss, lvs.VirtualServer{Name: fmt.Sprint(port), Service: lvs.Service{Key: k, Scheduler: "rr"}, Reals: []lvs.Real{backend(0, scene.TCPPort, 1)}})
	}
	rec.Set(vss)
	if _, err := rec.Reconcile(); err == nil || !strings.Contains(err.Error(), ":81") {
		t.Fatalf("reconcile: %v; want the refused service named", err)
	}
	if e := rec.Last().Refused["tcp "+scene.VIP+":81"]; !strings.Contains(e, "no such file or directory") {
		t.Fatalf("refused: %v; want the kernel's ENOENT for the service", rec.Last().Refused)
	}
	for _, port := range []int{80, 82, 83} {
		if name, err := sc.Ask("", fmt.Sprintf("%s:%d", scene.VIP, port)); err != nil || name != "rs1" {
			t.Fatalf("port %d beside the refused service: %q, %v", port, name, err)
		}
	}
	if _, err := sc.Ask("", scene.VIP+":81"); err == nil {
		t.Fatal("the refused service answers")
	}
	mu.Lock()
	badPort = 0
	mu.Unlock()
	if _, err := rec.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if name, err := sc.Ask("", scene.VIP+":81"); err != nil || name != "rs1" || len(rec.Last().Refused) != 0 {
		t.Fatalf("once the kernel takes it: %q, %v, refused %v", name, err, rec.Last().Refused)
	}
}

// TestNFTFirewallMark: a firewall-mark service balances what an
// operator's rule marks, and a real server without a port keeps the
// connection's own port.
func TestNFTFirewallMark(t *testing.T) {
	s := newNFTScene(t, 2)
	s.Director.MustRun("nft", "add table ip marker; add chain ip marker pre { type filter hook prerouting priority mangle; }; "+
		"add rule ip marker pre ip daddr "+scene.VIP+" tcp dport "+fmt.Sprint(scene.TCPPort)+" meta mark set 7")
	keep := func(i int) lvs.Real {
		return lvs.Real{Addr: netip.AddrPortFrom(netip.MustParseAddr(scene.RealAddr(i)), 0), Weight: 1, Method: lvs.NAT}
	}
	s.set(t, lvs.VirtualServer{Name: "marked", Service: lvs.Service{Key: lvs.Key{FWMark: 7}, Scheduler: "rr"}, Reals: []lvs.Real{keep(0), keep(1)}})
	got := tally(t, 10, func() (string, error) { return s.Ask("", fmt.Sprintf("%s:%d", scene.VIP, scene.TCPPort)) })
	if got["rs1"] != 5 || got["rs2"] != 5 {
		t.Fatalf("fwmark rr over 10 connections gave %v", got)
	}
	es, err := s.nft.ListStats()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Stats.Connections != 10 || es[0].Reals[0].Stats.Connections != 5 {
		t.Fatalf("fwmark counters %+v", es)
	}
}

// TestNFTFirewallMarkFirst: a marked packet that also matches an address
// service goes to the firewall-mark service, as IPVS checks marks first.
func TestNFTFirewallMarkFirst(t *testing.T) {
	s := newNFTScene(t, 2)
	vip := fmt.Sprintf("%s:%d", scene.VIP, scene.TCPPort)
	s.Director.MustRun("nft", "add table ip marker; add chain ip marker pre { type filter hook prerouting priority mangle; }; "+
		"add rule ip marker pre ip daddr "+scene.VIP+" tcp dport "+fmt.Sprint(scene.TCPPort)+" meta mark set 7")
	byAddr := lvs.VirtualServer{Name: "addr", Service: lvs.Service{Key: lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort(vip)}, Scheduler: "rr"},
		Reals: []lvs.Real{backend(0, scene.TCPPort, 1)}}
	byMark := lvs.VirtualServer{Name: "marked", Service: lvs.Service{Key: lvs.Key{FWMark: 7}, Scheduler: "rr"},
		Reals: []lvs.Real{backend(1, scene.TCPPort, 1)}}
	s.set(t, byAddr, byMark)
	if got := tally(t, 4, func() (string, error) { return s.Ask("", vip) }); got["rs2"] != 4 {
		t.Fatalf("marked connections went %v; want all to the mark's rs2", got)
	}
}

// TestNFTManyEndpoints: 5,000 real-server endpoints (the health-check
// benchmark's table) go in as one transaction, though their elements do
// not fit one netlink attribute; after it nothing is left to do.
func TestNFTManyEndpoints(t *testing.T) {
	s := newNFTScene(t, 1)
	var vss []lvs.VirtualServer
	for i := range 50 {
		vs := lvs.VirtualServer{Name: fmt.Sprint(i), Service: lvs.Service{Key: lvs.Key{Protocol: lvs.TCP,
			Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", scene.VIP, 1000+i))}, Scheduler: "rr"}}
		for p := range 100 {
			vs.Reals = append(vs.Reals, lvs.Real{Addr: netip.MustParseAddrPort(fmt.Sprintf("203.0.113.%d:%d", 11+i, 10000+p)), Weight: 1, Method: lvs.NAT})
		}
		vss = append(vss, vs)
	}
	// The first service's first server is rs1's listener.
	vss[0].Reals[0].Addr = backend(0, scene.TCPPort, 1).Addr
	if n := s.set(t, vss...); n != 5050 {
		t.Fatalf("%d operations, want 5050", n)
	}
	if n := s.set(t, vss...); n != 0 {
		t.Fatalf("a second reconcile took %d operations", n)
	}
	if name, err := s.Ask("", fmt.Sprintf("%s:1000", scene.VIP)); err != nil || name != "rs1" {
		t.Fatalf("first connection: %q, %v", name, err)
	}
}

// TestNFTSlotMapsShared: services share slot maps 64 at a time; a map is
// deleted when its last service goes and its room is used again, and the
// drift baseline (checked against the whole table at every commit) and the
// traffic follow.
func TestNFTSlotMapsShared(t *testing.T) {
	s := newNFTScene(t, 1)
	svc := func(i int) lvs.VirtualServer {
		vs := lvs.VirtualServer{Name: fmt.Sprint(i), Service: lvs.Service{Key: lvs.Key{Protocol: lvs.TCP,
			Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", scene.VIP, 1000+i))}, Scheduler: "wrr"}}
		vs.Reals = []lvs.Real{backend(0, scene.TCPPort, 1+i%3)}
		return vs
	}
	var vss []lvs.VirtualServer
	for i := range 150 {
		vss = append(vss, svc(i))
	}
	maps := func() []string {
		t.Helper()
		out := s.Director.MustRun("nft", "list", "maps", "inet")
		var names []string
		for _, m := range regexp.MustCompile(`map (slots4_\d+) \{`).FindAllStringSubmatch(out, -1) {
			names = append(names, m[1])
		}
		slices.Sort(names)
		return names
	}
	s.set(t, vss...)
	if got := maps(); !slices.Equal(got, []string{"slots4_0", "slots4_1", "slots4_2"}) {
		t.Fatalf("150 services: slot maps %v", got)
	}
	// The first 100 go: slots4_0 empties and is deleted.
	s.set(t, vss[100:]...)
	if got := maps(); !slices.Equal(got, []string{"slots4_1", "slots4_2"}) {
		t.Fatalf("50 services left: slot maps %v", got)
	}
	// 70 new ones fill slots4_0 again (64) and slots4_1's room.
	for i := 150; i < 220; i++ {
		vss = append(vss, svc(i))
	}
	s.set(t, vss[100:]...)
	if got := maps(); !slices.Equal(got, []string{"slots4_0", "slots4_1", "slots4_2"}) {
		t.Fatalf("120 services: slot maps %v", got)
	}
	if n := s.set(t, vss[100:]...); n != 0 {
		t.Fatalf("a reconcile with nothing to do took %d operations", n)
	}
	// nft shows the rule as it would read one written by hand.
	const rule = "dnat ip to ip daddr . meta l4proto . th dport . numgen inc mod 1 map @slots4_1"
	if out := s.Director.MustRun("nft", "list", "table", "inet", lvs.NFTTable); !strings.Contains(out, rule) {
		t.Fatalf("nft list table shows no %q:\n%s", rule, out)
	}
	for _, port := range []int{1100, 1149, 1150, 1219} {
		if name, err := s.Ask("", fmt.Sprintf("%s:%d", scene.VIP, port)); err != nil || name != "rs1" {
			t.Fatalf("port %d: %q, %v", port, name, err)
		}
	}
}

// TestNFTIPv6: IPv6 services schedule and DNAT through the shared slot
// maps (their key and registers are laid out for 16-byte addresses): rr
// spreads clients over both servers, sh keeps a client on one.
func TestNFTIPv6(t *testing.T) {
	s := newNFTScene(t, 2)
	s.AddIPv6()
	real6 := func(i int) lvs.Real {
		return lvs.Real{Addr: netip.AddrPortFrom(netip.MustParseAddr(scene.RealAddr6(i)), scene.TCPPort), Weight: 1, Method: lvs.NAT}
	}
	vs := func(port uint16, sched string) lvs.VirtualServer {
		return lvs.VirtualServer{Name: sched, Service: lvs.Service{Key: lvs.Key{Protocol: lvs.TCP,
			Addr: netip.AddrPortFrom(netip.MustParseAddr(scene.VIP6), port)}, Scheduler: sched},
			Reals: []lvs.Real{real6(0), real6(1)}}
	}
	s.set(t, vs(80, "rr"), vs(81, "sh"))
	ask := func(port int) string {
		t.Helper()
		name, err := s.Ask("", fmt.Sprintf("[%s]:%d", scene.VIP6, port))
		if err != nil {
			t.Fatalf("port %d: %v", port, err)
		}
		return name
	}
	rr := map[string]int{}
	for range 6 {
		rr[ask(80)]++
	}
	if rr["rs1"] != 3 || rr["rs2"] != 3 {
		t.Fatalf("rr over IPv6: %v, want 3 each", rr)
	}
	first := ask(81)
	for range 5 {
		if got := ask(81); got != first {
			t.Fatalf("sh over IPv6 moved the client from %s to %s", first, got)
		}
	}
}

// Persistence entries from the sync peer are bounded: a client of the
// other family is left out, and a timeout is cut to the service's
// persistence (on main a peer could pin a client for as long as it said).
func TestNFTPersistFromPeerBounded(t *testing.T) {
	s := newNFTScene(t, 2)
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1))
	vs.Persistence = 30 * time.Second
	s.set(t, vs)
	real0 := vs.Reals[0].Addr
	if err := s.nft.AddPersist([]lvs.PersistEntry{
		{Service: vs.Key, Real: real0, Client: netip.MustParseAddr("192.0.2.77"), Expires: 48 * time.Hour},
		{Service: vs.Key, Real: real0, Client: netip.MustParseAddr("2001:db8::77"), Expires: time.Minute},
	}); err != nil {
		t.Fatal(err)
	}
	es, err := s.nft.PersistEntries()
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 1 || es[0].Client != netip.MustParseAddr("192.0.2.77") || es[0].Expires > 30*time.Second {
		t.Fatalf("persistence entries %+v", es)
	}
}

// TestNFTPersistentClientLeavesQuiescentServer: a persistent client of a
// server at weight 0 (drained, or failed with inhibit_on_failure) is
// scheduled afresh on its next connection, and stays where it went when
// the server comes back (IPVS with expire_quiescent_template).
func TestNFTPersistentClientLeavesQuiescentServer(t *testing.T) {
	s := newNFTScene(t, 2)
	vs := func(w0, w1 int) lvs.VirtualServer {
		v := tcpVS("rr", backend(0, scene.TCPPort, w0), backend(1, scene.TCPPort, w1))
		v.Persistence = time.Minute
		return v
	}
	s.set(t, vs(1, 1))
	first, err := s.Ask("", vipTCP.String())
	if err != nil {
		t.Fatal(err)
	}
	other := map[string]string{"rs1": "rs2", "rs2": "rs1"}[first]
	w := map[string]int{first: 0, other: 1}
	s.set(t, vs(w["rs1"], w["rs2"]))
	if got := s.spread(t, "", 5); got[other] != 5 {
		t.Fatalf("the persistent client of %s at weight 0 went to %v; want %s", first, got, other)
	}
	s.set(t, vs(1, 1))
	if got := s.spread(t, "", 5); got[other] != 5 {
		t.Fatalf("after %s came back the client went to %v; want it to stay on %s", first, got, other)
	}
}

// TestNFTPersistenceLivesWhileConnected: a persistent client with an open
// connection keeps its entry past the persistence timeout (IPVS keeps a
// template while connections use it), and goes back to the same server.
func TestNFTPersistenceLivesWhileConnected(t *testing.T) {
	s := newNFTScene(t, 2)
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1))
	vs.Persistence = time.Second
	s.set(t, vs)
	c, err := s.Open("", vipTCP.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.rec.Run(ctx, 200*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-done })
	// Three timeouts with the connection open and idle.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		es, err := s.nft.PersistEntries()
		if err != nil {
			t.Fatal(err)
		}
		if len(es) != 1 || es[0].Client.String() != scene.ClientIP {
			t.Fatalf("persistence entries with the connection open: %+v", es)
		}
	}
	for range 3 {
		if name, err := s.Ask("", vipTCP.String()); err != nil || name != c.Server {
			t.Fatalf("new connection went to %q (%v); the open one is on %s", name, err, c.Server)
		}
	}
	// Closed, the entry ages out as before.
	c.Close()
	if err := lab.Eventually(10*time.Second, func() error {
		if es, _ := s.nft.PersistEntries(); len(es) != 0 {
			return fmt.Errorf("entries %+v", es)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestNFTFlows: the nftables plane lists its connections from conntrack
// and its persistence entries as templates (directorctl lvs --conns,
// --persistence), and nothing of traffic that is not its services'.
func TestNFTFlows(t *testing.T) {
	s := newNFTScene(t, 1)
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1))
	vs.Persistence = time.Minute
	s.set(t, vs)
	c, err := s.Open("", vipTCP.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	client := netip.MustParseAddrPort(c.LocalAddr().String())
	real := backend(0, scene.TCPPort, 1).Addr
	fs, err := s.nft.Flows()
	if err != nil {
		t.Fatal(err)
	}
	var conn, tmpl int
	for _, f := range fs {
		switch {
		case f.Service != vs.Key || f.Real != real:
			t.Errorf("flow %+v", f)
		case f.Template && f.Client == netip.AddrPortFrom(client.Addr(), 0) && f.State == "NONE" && f.Expires > 50*time.Second:
			tmpl++
		case !f.Template && f.Client == client && f.State == "ESTABLISHED" && f.Expires > time.Minute:
			conn++
		default:
			t.Errorf("flow %+v", f)
		}
	}
	if conn != 1 || tmpl != 1 {
		t.Fatalf("flows %+v; want the connection from %s and one template", fs, client)
	}
}

// TestNFTTimeouts: [dataplane] timeouts give the services' new
// connections their own conntrack timeouts (ipvsadm --set tcp tcpfin udp):
// an established TCP connection expires after tcp, not conntrack's five
// days, and a UDP flow after udp.
func TestNFTTimeouts(t *testing.T) {
	s := newNFTScene(t, 1)
	if err := s.nft.SetTimeouts(lvs.Timeouts{TCP: 15 * time.Minute, TCPFin: 2 * time.Minute, UDP: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	udp := lvs.VirtualServer{Name: "dns", Service: lvs.Service{Key: lvs.Key{Protocol: lvs.UDP, Addr: vipUDP}, Scheduler: "rr"},
		Reals: []lvs.Real{{Addr: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", scene.RealAddr(0), scene.UDPPort)), Weight: 1, Method: lvs.NAT}}}
	s.set(t, tcpVS("rr", backend(0, scene.TCPPort, 1)), udp)
	c, err := s.Open("", vipTCP.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := s.AskUDP(vipUDP.String()); err != nil {
		t.Fatal(err)
	}
	fs, err := s.nft.Flows()
	if err != nil {
		t.Fatal(err)
	}
	var tcp, udpOK bool
	for _, f := range fs {
		switch f.Protocol {
		case lvs.TCP:
			tcp = f.State == "ESTABLISHED" && f.Expires > 14*time.Minute && f.Expires <= 15*time.Minute
		case lvs.UDP:
			udpOK = f.Expires > 4*time.Minute && f.Expires <= 5*time.Minute
		}
	}
	if !tcp || !udpOK {
		t.Fatalf("flows %+v; want TCP expiring within 15m, UDP within 5m", fs)
	}
	if got, _ := s.nft.Timeouts(); got.TCP != 15*time.Minute {
		t.Fatalf("timeouts %+v", got)
	}
}

// TestNFTFirewallMarkDrainAndTraffic: a firewall-mark service's real
// servers without a port count their packets and bytes, and a server
// drained with a connection open is kept until it closes, as on IPVS.
func TestNFTFirewallMarkDrainAndTraffic(t *testing.T) {
	s := newNFTScene(t, 2)
	vip := fmt.Sprintf("%s:%d", scene.VIP, scene.TCPPort)
	s.Director.MustRun("nft", "add table ip marker; add chain ip marker pre { type filter hook prerouting priority mangle; }; "+
		"add rule ip marker pre ip daddr "+scene.VIP+" tcp dport "+fmt.Sprint(scene.TCPPort)+" meta mark set 7")
	keep := func(i int) lvs.Real {
		return lvs.Real{Addr: netip.AddrPortFrom(netip.MustParseAddr(scene.RealAddr(i)), 0), Weight: 1, Method: lvs.NAT}
	}
	marked := func(reals ...lvs.Real) lvs.VirtualServer {
		return lvs.VirtualServer{Name: "marked", Service: lvs.Service{Key: lvs.Key{FWMark: 7}, Scheduler: "rr"}, Reals: reals}
	}
	s.set(t, marked(keep(0), keep(1)))
	held := s.holdEach(t, vip, 2)
	es, err := s.nft.ListStats()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range es[0].Reals {
		if r.Stats.PacketsIn == 0 || r.Stats.BytesIn == 0 || r.Stats.PacketsOut == 0 || r.Stats.BytesOut == 0 {
			t.Errorf("fwmark real server %s without a port counted %+v", r.Addr, r.Stats)
		}
	}
	// rs2 drains: weight 0 while its connection is open.
	s.set(t, marked(keep(0)))
	for range 3 {
		if _, err := s.rec.Reconcile(); err != nil {
			t.Fatal(err)
		}
	}
	if es, _ := s.nft.List(); len(es[0].Reals) != 2 {
		t.Fatalf("a draining fwmark server with an open connection was deleted: %+v", es[0].Reals)
	}
	if ans, err := held["rs2"].Echo("still there?"); err != nil || ans != "rs2 still there?" {
		t.Fatalf("open connection to the draining server: %q, %v", ans, err)
	}
	held["rs2"].Close()
	if err := lab.Eventually(10*time.Second, func() error {
		if _, err := s.rec.Reconcile(); err != nil {
			return err
		}
		if es, _ := s.nft.List(); len(es[0].Reals) != 1 {
			return fmt.Errorf("still %d real servers", len(es[0].Reals))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestNFTZero: Zero sets the counters directord shows to zero, as
// ipvsadm -Z, and they count on from there; a server deleted and added
// again counts from zero.
func TestNFTZero(t *testing.T) {
	s := newNFTScene(t, 2)
	vs := tcpVS("rr", backend(0, scene.TCPPort, 1), backend(1, scene.TCPPort, 1))
	s.set(t, vs)
	stats := func() lvs.Entry {
		t.Helper()
		es, err := s.nft.ListStats()
		if err != nil || len(es) != 1 {
			t.Fatalf("ListStats: %+v, %v", es, err)
		}
		return es[0]
	}
	s.spread(t, "", 4)
	if e := stats(); e.Stats.Connections != 4 || e.Stats.PacketsIn == 0 {
		t.Fatalf("before zeroing: %+v", e.Stats)
	}
	// The connections' last packets (their FINs) settle first.
	last := stats().Stats
	if err := lab.Eventually(5*time.Second, func() error {
		now := stats().Stats
		if now.PacketsIn != last.PacketsIn || now.PacketsOut != last.PacketsOut {
			last = now
			return fmt.Errorf("packets still counted")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.nft.Zero(); err != nil {
		t.Fatal(err)
	}
	e := stats()
	if e.Stats.Connections != 0 || e.Stats.PacketsIn != 0 || e.Stats.BytesOut != 0 {
		t.Fatalf("after zeroing, the service: %+v", e.Stats)
	}
	for _, r := range e.Reals {
		if r.Stats.Connections != 0 || r.Stats.PacketsIn != 0 || r.Stats.PacketsOut != 0 {
			t.Fatalf("after zeroing, %s: %+v", r.Addr, r.Stats)
		}
	}
	s.spread(t, "", 2)
	if e := stats(); e.Stats.Connections != 2 || e.Reals[0].Stats.Connections != 1 || e.Reals[1].Stats.Connections != 1 || e.Stats.PacketsIn == 0 {
		t.Fatalf("two connections after zeroing: %+v", e)
	}
	// rs2 leaves and comes back: its endpoint's elements are new.
	s.set(t, tcpVS("rr", backend(0, scene.TCPPort, 1)))
	if err := lab.Eventually(10*time.Second, func() error {
		if _, err := s.rec.Reconcile(); err != nil {
			return err
		}
		if es, _ := s.nft.List(); len(es[0].Reals) != 1 {
			return fmt.Errorf("rs2 not gone")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.set(t, vs)
	s.spread(t, "", 2)
	if e := stats(); e.Reals[1].Stats.Connections != 1 {
		t.Fatalf("rs2 back after zeroing: %+v", e.Reals[1].Stats)
	}
}

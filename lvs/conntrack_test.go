package lvs

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	ctlib "github.com/ti-mo/conntrack"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNetNS is a network namespace of the test's own (root only).
func newNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// TestDumpConnsOfFiltersInKernel: a draining server's connections are
// counted from a dump the kernel filters: among a thousand entries of
// other servers and services, only the server's own come out of the
// kernel (on main the whole table was copied out and searched).
func TestDumpConnsOfFiltersInKernel(t *testing.T) {
	ns := newNetNS(t)
	ct, err := ctlib.Dial(&netlink.Config{NetNS: int(ns)})
	if err != nil {
		t.Fatal(err)
	}
	defer ct.Close()
	vip := netip.MustParseAddr("192.0.2.100")
	rs, other := netip.MustParseAddrPort("203.0.113.11:8080"), netip.MustParseAddrPort("203.0.113.12:8080")
	add := func(i int, dport uint16, to netip.AddrPort, state uint8, mark uint32) {
		t.Helper()
		client := netip.AddrFrom4([4]byte{198, 51, 100, byte(1 + i%200)})
		f := ctlib.NewFlow(unix.IPPROTO_TCP, ctlib.StatusConfirmed|ctlib.StatusSeenReply, client, vip, uint16(10000+i), dport, 600, mark)
		f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort = to.Addr(), to.Port()
		f.ProtoInfo.TCP = &ctlib.ProtoInfoTCP{State: state}
		if err := ct.Create(f); err != nil {
			t.Fatalf("create entry %d: %v", i, err)
		}
	}
	i := 0
	for ; i < 1000; i++ {
		add(i, 80, other, tcpEstablished, 0) // another server of the service
	}
	for ; i < 1010; i++ {
		add(i, 81, rs, tcpEstablished, 0) // the server, for another service
	}
	for ; i < 1013; i++ {
		add(i, 80, rs, tcpEstablished, 0)
	}
	for ; i < 1015; i++ {
		add(i, 80, rs, 1, 0) // SYN_SENT
	}
	add(i, 80, rs, tcpTimeWait, 0) // over: not counted
	i++
	for ; i < 1020; i++ {
		add(i, 443, rs, tcpEstablished, 7) // the mark's service
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(ns)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range []struct {
		k                Key
		flows            int
		active, inactive int
	}{
		{Key{Protocol: TCP, Addr: netip.AddrPortFrom(vip, 80)}, 6, 3, 2},
		{Key{Protocol: TCP, Addr: netip.AddrPortFrom(vip, 81)}, 10, 10, 0},
		{Key{FWMark: 7}, 4, 4, 0},
	} {
		t.Run(tc.k.String(), func(t *testing.T) {
			flows, err := dumpConnsOf(c, tc.k, rs)
			if err != nil {
				t.Fatal(err)
			}
			if len(flows) != tc.flows {
				t.Fatalf("the kernel sent %d entries, want %d (filtered)", len(flows), tc.flows)
			}
			a, in := countConns(flows, tc.k, rs)
			if a != tc.active || in != tc.inactive {
				t.Fatalf("active %d, inactive %d; want %d, %d", a, in, tc.active, tc.inactive)
			}
			for _, f := range flows {
				if !flowTo(f, tc.k, rs) {
					t.Fatalf("an entry not to %s: %s", rs, fmt.Sprint(*f))
				}
			}
		})
	}
}

// TestHeldBy: each open connection is looked up as the persistence entry
// it keeps: by its mark's service before its destination's (as IPVS
// looks marks up first), on the server it was NATed to (a mark's server
// without a port as such), for its client's prefix.
func TestHeldBy(t *testing.T) {
	web := Key{Protocol: TCP, Addr: netip.MustParseAddrPort("192.0.2.100:80")}
	mark := Key{FWMark: 7}
	rs := netip.MustParseAddrPort("203.0.113.11:8080")
	anyPort := netip.MustParseAddrPort("203.0.113.12:0")
	n := &NFT{svcs: map[Key]*nsvc{
		web:  {svc: Service{Key: web, Persistence: time.Minute, PersistenceBits: 24}, pers: map[netip.AddrPort]*nftables.Set{rs: {}}},
		mark: {svc: Service{Key: mark, Persistence: time.Minute}, pers: map[netip.AddrPort]*nftables.Set{anyPort: {}}},
	}}
	flow := func(client, dst string, dport uint16, real string, rport uint16, m uint32) *vnl.ConntrackFlow {
		return &vnl.ConntrackFlow{Mark: m,
			Forward: vnl.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: net.ParseIP(client), DstIP: net.ParseIP(dst), DstPort: dport},
			Reverse: vnl.IPTuple{Protocol: unix.IPPROTO_TCP, SrcIP: net.ParseIP(real), SrcPort: rport}}
	}
	for _, tc := range []struct {
		name string
		f    *vnl.ConntrackFlow
		want PersistEntry
		ok   bool
	}{
		{"address service, client's /24", flow("198.51.100.77", "192.0.2.100", 80, "203.0.113.11", 8080, 0),
			PersistEntry{Service: web, Real: rs, Client: netip.MustParseAddr("198.51.100.0")}, true},
		{"the mark's service first", flow("198.51.100.77", "192.0.2.100", 80, "203.0.113.12", 443, 7),
			PersistEntry{Service: mark, Real: anyPort, Client: netip.MustParseAddr("198.51.100.77")}, true},
		{"another service", flow("198.51.100.77", "192.0.2.100", 81, "203.0.113.11", 8080, 0), PersistEntry{}, false},
		{"a server without persistence", flow("198.51.100.77", "192.0.2.100", 80, "203.0.113.13", 8080, 0), PersistEntry{}, false},
		{"an unknown mark: by destination", flow("198.51.100.77", "192.0.2.100", 80, "203.0.113.11", 8080, 9),
			PersistEntry{Service: web, Real: rs, Client: netip.MustParseAddr("198.51.100.0")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := n.heldBy(tc.f)
			if ok != tc.ok || got != tc.want {
				t.Fatalf("heldBy = %+v, %v; want %+v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

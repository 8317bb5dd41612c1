package lvs

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tcpEstablished is conntrack's TCP_CONNTRACK_ESTABLISHED.
const (
	tcpEstablished = 3
	tcpTimeWait    = 7
)

// countConns counts the conntrack entries of flows that NAT to addr for
// the service k (flowTo). TCP connections in TIME_WAIT or CLOSE are over
// and not counted (IPVS counts them as inactive until they expire, two
// minutes later).
func countConns(flows []*netlink.ConntrackFlow, k Key, addr netip.AddrPort) (active, inactive int) {
	for _, f := range flows {
		if !flowTo(f, k, addr) {
			continue
		}
		tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP)
		switch {
		case ok && tcp.State == tcpEstablished:
			active++
		case !openFlow(f):
		default:
			inactive++
		}
	}
	return active, inactive
}

// conntrackDump is one family's conntrack table, kept briefly: the
// reconciler asks for the counts of every draining server in a row, and
// one dump serves them all.
type conntrackDump struct {
	at    time.Time
	flows []*netlink.ConntrackFlow
}

// dumpFresh is how long a dump serves.
const dumpFresh = 500 * time.Millisecond

// conntrack returns the family's table, dumped at most dumpFresh ago.
func conntrack(h *netlink.Handle, cache map[bool]conntrackDump, six bool, now time.Time) ([]*netlink.ConntrackFlow, error) {
	if d, ok := cache[six]; ok && now.Sub(d.at) < dumpFresh {
		return d.flows, nil
	}
	flows, err := dumpConntrack(h, six)
	if err != nil {
		return nil, err
	}
	cache[six] = conntrackDump{at: now, flows: flows}
	return flows, nil
}

// dumpConntrack reads the family's conntrack table.
func dumpConntrack(h *netlink.Handle, six bool) ([]*netlink.ConntrackFlow, error) {
	fam := netlink.InetFamily(unix.AF_INET)
	if six {
		fam = unix.AF_INET6
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: %w", err)
	}
	return flows, nil
}

// flowTo says whether the conntrack entry f is a connection of the
// service k NATed to addr: the original destination is the VIP (or the
// mark is the service's), the reply comes from the real server.
func flowTo(f *netlink.ConntrackFlow, k Key, addr netip.AddrPort) bool {
	src, ok := netip.AddrFromSlice(f.Reverse.SrcIP)
	if !ok || src.Unmap() != addr.Addr() || (addr.Port() != 0 && f.Reverse.SrcPort != addr.Port()) {
		return false
	}
	if k.FWMark != 0 {
		return f.Mark == k.FWMark
	}
	dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
	return dst.Unmap() == k.Addr.Addr() && f.Forward.DstPort == k.Addr.Port() && f.Forward.Protocol == protoNum(k.Protocol)
}

// openFlow: not a TCP connection in TIME_WAIT or CLOSE, which is over.
func openFlow(f *netlink.ConntrackFlow) bool {
	tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP)
	return !ok || tcp.State < tcpTimeWait
}

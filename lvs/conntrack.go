package lvs

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tcpEstablished is conntrack's TCP_CONNTRACK_ESTABLISHED.
const (
	tcpEstablished = 3
	tcpTimeWait    = 7
)

// conntrackConns counts the conntrack entries that NAT to addr for the
// service k: the original destination is the VIP, the reply comes from
// the real server.
// TCP connections in TIME_WAIT or CLOSE are over and not counted (IPVS
// counts them as inactive until they expire, two minutes later).
func conntrackConns(h *netlink.Handle, k Key, addr netip.AddrPort) (active, inactive int, err error) {
	fam := netlink.InetFamily(unix.AF_INET)
	if addr.Addr().Is6() {
		fam = unix.AF_INET6
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
	if err != nil {
		return 0, 0, fmt.Errorf("conntrack dump: %w", err)
	}
	for _, f := range flows {
		src, ok := netip.AddrFromSlice(f.Reverse.SrcIP)
		if !ok || src.Unmap() != addr.Addr() || (addr.Port() != 0 && f.Reverse.SrcPort != addr.Port()) {
			continue
		}
		if k.FWMark == 0 {
			dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
			if dst.Unmap() != k.Addr.Addr() || f.Forward.DstPort != k.Addr.Port() || f.Forward.Protocol != protoNum(k.Protocol) {
				continue
			}
		} else if f.Mark != k.FWMark {
			continue
		}
		tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP)
		switch {
		case ok && tcp.State == tcpEstablished:
			active++
		case ok && tcp.State >= tcpTimeWait:
		default:
			inactive++
		}
	}
	return active, inactive, nil
}

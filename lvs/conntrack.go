package lvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	mdnl "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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

// The ctnetlink attributes of a filtered dump that package nl lacks
// (linux/netfilter/nfnetlink_conntrack.h).
const (
	ctaMarkMask         = 21
	ctaFilter           = 25
	ctaFilterOrigFlags  = 1
	ctaFilterReplyFlags = 2
	ctaFilterIPSrc      = 1 << 0
	ctaFilterIPDst      = 1 << 1
	ctaFilterProtoNum   = 1 << 3
	ctaFilterSrcPort    = 1 << 4
	ctaFilterDstPort    = 1 << 5
)

// dumpConnsOf dumps the conntrack entries of service k's connections
// NATed to addr, filtered by the kernel (Linux 5.8 and later): the reply
// comes from the real server's address and port (its address left to
// flowTo for IPv6, which some kernel versions compare inverted; a mark's
// service's protocol and port too), and the original goes to the
// service's address, protocol and port (or carries its mark). A draining
// server is counted without copying the whole table out of the kernel
// each second. The entries have the fields flowTo and countConns read.
func dumpConnsOf(c *mdnl.Conn, k Key, addr netip.AddrPort) ([]*netlink.ConntrackFlow, error) {
	six := addr.Addr().Is6()
	fam := byte(unix.AF_INET)
	src, dst := uint16(nl.CTA_IP_V4_SRC), uint16(nl.CTA_IP_V4_DST)
	if six {
		fam, src, dst = unix.AF_INET6, nl.CTA_IP_V6_SRC, nl.CTA_IP_V6_DST
	}
	proto := protoNum(k.Protocol)
	ae := mdnl.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	// tuple writes a tuple to match: one address and one port.
	tuple := func(typ, ipAttr uint16, ip netip.Addr, portAttr, port uint16) {
		ae.Nested(typ, func(t *mdnl.AttributeEncoder) error {
			t.Nested(nl.CTA_TUPLE_IP, func(a *mdnl.AttributeEncoder) error {
				a.Bytes(ipAttr, ip.AsSlice())
				return nil
			})
			t.Nested(nl.CTA_TUPLE_PROTO, func(p *mdnl.AttributeEncoder) error {
				p.Uint8(nl.CTA_PROTO_NUM, proto)
				p.Uint16(portAttr, port)
				return nil
			})
			return nil
		})
	}
	var orig, reply uint32
	if k.FWMark != 0 {
		ae.Uint32(nl.CTA_MARK, k.FWMark)
		ae.Uint32(ctaMarkMask, 0xffffffff)
	} else {
		orig = ctaFilterIPDst | ctaFilterProtoNum | ctaFilterDstPort
		tuple(nl.CTA_TUPLE_ORIG, dst, k.Addr.Addr(), nl.CTA_PROTO_DST_PORT, k.Addr.Port())
	}
	if !six {
		reply = ctaFilterIPSrc
	}
	if k.FWMark == 0 { // a mark's service has no one protocol
		reply |= ctaFilterProtoNum
		if addr.Port() != 0 {
			reply |= ctaFilterSrcPort
		}
	}
	if reply != 0 {
		tuple(nl.CTA_TUPLE_REPLY, src, addr.Addr(), nl.CTA_PROTO_SRC_PORT, addr.Port())
	}
	if orig|reply != 0 {
		ae.Nested(ctaFilter, func(f *mdnl.AttributeEncoder) error {
			f.Bytes(ctaFilterOrigFlags, binary.NativeEndian.AppendUint32(nil, orig))
			f.Bytes(ctaFilterReplyFlags, binary.NativeEndian.AppendUint32(nil, reply))
			return nil
		})
	}
	var out []*netlink.ConntrackFlow
	var bad error
	err := nfQuery(c, unix.NFNL_SUBSYS_CTNETLINK<<8|nl.IPCTNL_MSG_CT_GET, true, fam, ae, func(t mdnl.HeaderType, ad *mdnl.AttributeDecoder) {
		if t&0xff != nl.IPCTNL_MSG_CT_NEW || bad != nil {
			return
		}
		f, err := decodeFlow(ad)
		if err != nil {
			bad = err
			return
		}
		out = append(out, f)
	})
	if err = errors.Join(err, bad); err != nil {
		return nil, fmt.Errorf("conntrack dump of %s's connections to %s: %w", k, addr, err)
	}
	return out, nil
}

// decodeFlow reads a ctnetlink entry's tuples, mark and TCP state.
func decodeFlow(ad *mdnl.AttributeDecoder) (*netlink.ConntrackFlow, error) {
	f := &netlink.ConntrackFlow{}
	tuple := func(t *netlink.IPTuple) func(*mdnl.AttributeDecoder) error {
		return func(td *mdnl.AttributeDecoder) error {
			for td.Next() {
				switch td.Type() {
				case nl.CTA_TUPLE_IP:
					td.Nested(func(ip *mdnl.AttributeDecoder) error {
						for ip.Next() {
							switch ip.Type() {
							case nl.CTA_IP_V4_SRC, nl.CTA_IP_V6_SRC:
								t.SrcIP = ip.Bytes()
							case nl.CTA_IP_V4_DST, nl.CTA_IP_V6_DST:
								t.DstIP = ip.Bytes()
							}
						}
						return nil
					})
				case nl.CTA_TUPLE_PROTO:
					td.Nested(func(p *mdnl.AttributeDecoder) error {
						for p.Next() {
							switch p.Type() {
							case nl.CTA_PROTO_NUM:
								t.Protocol = p.Uint8()
							case nl.CTA_PROTO_SRC_PORT:
								t.SrcPort = p.Uint16()
							case nl.CTA_PROTO_DST_PORT:
								t.DstPort = p.Uint16()
							}
						}
						return nil
					})
				}
			}
			return nil
		}
	}
	for ad.Next() {
		switch ad.Type() {
		case nl.CTA_TUPLE_ORIG:
			ad.Nested(tuple(&f.Forward))
		case nl.CTA_TUPLE_REPLY:
			ad.Nested(tuple(&f.Reverse))
		case nl.CTA_MARK:
			f.Mark = ad.Uint32()
		case nl.CTA_PROTOINFO:
			ad.Nested(func(pi *mdnl.AttributeDecoder) error {
				for pi.Next() {
					if pi.Type() != nl.CTA_PROTOINFO_TCP {
						continue
					}
					pi.Nested(func(tcp *mdnl.AttributeDecoder) error {
						for tcp.Next() {
							if tcp.Type() == nl.CTA_PROTOINFO_TCP_STATE {
								f.ProtoInfo = &netlink.ProtoInfoTCP{State: tcp.Uint8()}
							}
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	return f, ad.Err()
}

package lvs

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// moby/ipvs reads the services' and real servers' 32-bit counters, which
// wrap after 4 G packets or connections: a false reset in every counter
// built on them. The kernel also sends 64-bit ones (IPVS_*_ATTR_STATS64,
// Linux 4.1+); this reads those with a generic netlink dump of its own,
// and zeroes them (ipvsadm -Z).

// IPVS's generic netlink commands and attributes (linux/ip_vs.h).
const (
	ipvsCmdGetService = 4
	ipvsCmdGetDest    = 8
	ipvsCmdZero       = 16

	ipvsCmdAttrService = 1
	ipvsCmdAttrDest    = 2

	ipvsSvcAttrAF       = 1
	ipvsSvcAttrProtocol = 2
	ipvsSvcAttrAddr     = 3
	ipvsSvcAttrPort     = 4
	ipvsSvcAttrFWMark   = 5
	ipvsSvcAttrStats64  = 12

	ipvsDestAttrAddr    = 1
	ipvsDestAttrPort    = 2
	ipvsDestAttrAF      = 11
	ipvsDestAttrStats64 = 12
)

// ipvsStats are the 64-bit counters of every service and real server.
type ipvsStats struct {
	svc  map[Key]Stats
	dest map[realKey]Stats
}

// ipvsGenl is a generic netlink socket speaking to IPVS.
type ipvsGenl struct {
	c      *netlink.Conn
	family uint16
}

func dialIPVSGenl() (*ipvsGenl, error) {
	f, err := vnl.GenlFamilyGet("IPVS")
	if err != nil {
		return nil, fmt.Errorf("ipvs: generic netlink family: %w", err)
	}
	c, err := netlink.Dial(unix.NETLINK_GENERIC, nil)
	if err != nil {
		return nil, fmt.Errorf("ipvs: generic netlink: %w", err)
	}
	return &ipvsGenl{c: c, family: f.ID}, nil
}

func (g *ipvsGenl) Close() error { return g.c.Close() }

// execute sends one IPVS command with attrs and returns each answer's
// attributes (after the generic netlink header).
func (g *ipvsGenl) execute(cmd uint8, flags netlink.HeaderFlags, attrs []byte) ([][]byte, error) {
	data := append([]byte{cmd, 1, 0, 0}, attrs...) // genlmsghdr: cmd, version 1
	msgs, err := g.c.Execute(netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(g.family), Flags: netlink.Request | flags}, Data: data})
	if err != nil {
		return nil, err
	}
	out := make([][]byte, 0, len(msgs))
	for _, m := range msgs {
		if len(m.Data) >= 4 {
			out = append(out, m.Data[4:])
		}
	}
	return out, nil
}

// stats dumps every service's and real server's 64-bit counters.
func (g *ipvsGenl) stats() (ipvsStats, error) {
	st := ipvsStats{svc: map[Key]Stats{}, dest: map[realKey]Stats{}}
	svcs, err := g.execute(ipvsCmdGetService, netlink.Dump, nil)
	if err != nil {
		return st, fmt.Errorf("ipvs: dump services: %w", err)
	}
	for _, m := range svcs {
		raw, ok := nestedAttr(m, ipvsCmdAttrService)
		if !ok {
			continue
		}
		k, s, err := parseIPVSService(raw)
		if err != nil {
			return st, err
		}
		st.svc[k] = s
		// The service's identity, as the kernel wants it in the request
		// for its real servers.
		req, err := serviceIdentity(raw)
		if err != nil {
			return st, err
		}
		dests, err := g.execute(ipvsCmdGetDest, netlink.Dump, req)
		if err != nil {
			return st, fmt.Errorf("ipvs: dump real servers of %s: %w", k, err)
		}
		for _, dm := range dests {
			draw, ok := nestedAttr(dm, ipvsCmdAttrDest)
			if !ok {
				continue
			}
			a, ds, err := parseIPVSDest(draw, k)
			if err != nil {
				return st, err
			}
			st.dest[realKey{k, a}] = ds
		}
	}
	return st, nil
}

// zero zeroes every counter (ipvsadm -Z).
func (g *ipvsGenl) zero() error {
	if _, err := g.execute(ipvsCmdZero, netlink.Acknowledge, nil); err != nil {
		return fmt.Errorf("ipvs: zero counters: %w", err)
	}
	return nil
}

// nestedAttr returns the payload of the attribute typ in b.
func nestedAttr(b []byte, typ uint16) ([]byte, bool) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, false
	}
	for ad.Next() {
		if ad.Type() == typ {
			return ad.Bytes(), true
		}
	}
	return nil, false
}

// serviceIdentity is the service attribute that names a service: its
// family with protocol, address and port, or its mark.
func serviceIdentity(raw []byte) ([]byte, error) {
	ad, err := netlink.NewAttributeDecoder(raw)
	if err != nil {
		return nil, err
	}
	ae := netlink.NewAttributeEncoder()
	ae.Nested(ipvsCmdAttrService, func(nae *netlink.AttributeEncoder) error {
		for ad.Next() {
			switch ad.Type() {
			case ipvsSvcAttrAF, ipvsSvcAttrProtocol, ipvsSvcAttrAddr, ipvsSvcAttrPort, ipvsSvcAttrFWMark:
				nae.Bytes(ad.Type(), ad.Bytes())
			}
		}
		return ad.Err()
	})
	return ae.Encode()
}

// parseIPVSService reads a service attribute's identity and 64-bit
// counters.
func parseIPVSService(raw []byte) (Key, Stats, error) {
	ad, err := netlink.NewAttributeDecoder(raw)
	if err != nil {
		return Key{}, Stats{}, err
	}
	var af, proto, port uint16
	var addr []byte
	var mark uint32
	var st Stats
	for ad.Next() {
		switch ad.Type() {
		case ipvsSvcAttrAF:
			af = ad.Uint16()
		case ipvsSvcAttrProtocol:
			proto = ad.Uint16()
		case ipvsSvcAttrAddr:
			addr = ad.Bytes()
		case ipvsSvcAttrPort:
			port = binary.BigEndian.Uint16(ad.Bytes())
		case ipvsSvcAttrFWMark:
			mark = ad.Uint32()
		case ipvsSvcAttrStats64:
			st = parseStats64(ad.Bytes())
		}
	}
	if err := ad.Err(); err != nil {
		return Key{}, Stats{}, fmt.Errorf("ipvs: service attribute: %w", err)
	}
	if mark != 0 {
		return Key{FWMark: mark, IPv6: af == unix.AF_INET6}, st, nil
	}
	a, ok := ipvsAddr(addr, af)
	if !ok {
		return Key{}, Stats{}, fmt.Errorf("ipvs: service address %x of family %d", addr, af)
	}
	var p Protocol
	for name, n := range protoNums {
		if n == proto {
			p = name
		}
	}
	return Key{Protocol: p, Addr: netip.AddrPortFrom(a, port)}, st, nil
}

// parseIPVSDest reads a real server attribute's address and 64-bit
// counters (its family is the service's unless it says otherwise).
func parseIPVSDest(raw []byte, svc Key) (netip.AddrPort, Stats, error) {
	ad, err := netlink.NewAttributeDecoder(raw)
	if err != nil {
		return netip.AddrPort{}, Stats{}, err
	}
	af := uint16(unix.AF_INET)
	if svc.Is6() {
		af = unix.AF_INET6
	}
	var addr []byte
	var port uint16
	var st Stats
	for ad.Next() {
		switch ad.Type() {
		case ipvsDestAttrAddr:
			addr = ad.Bytes()
		case ipvsDestAttrPort:
			port = binary.BigEndian.Uint16(ad.Bytes())
		case ipvsDestAttrAF:
			af = ad.Uint16()
		case ipvsDestAttrStats64:
			st = parseStats64(ad.Bytes())
		}
	}
	if err := ad.Err(); err != nil {
		return netip.AddrPort{}, Stats{}, fmt.Errorf("ipvs: real server attribute: %w", err)
	}
	a, ok := ipvsAddr(addr, af)
	if !ok {
		return netip.AddrPort{}, Stats{}, fmt.Errorf("ipvs: real server address %x of family %d", addr, af)
	}
	return netip.AddrPortFrom(a, port), st, nil
}

// ipvsAddr reads an address attribute: 16 bytes, an IPv4 address in the
// first four.
func ipvsAddr(b []byte, af uint16) (netip.Addr, bool) {
	switch {
	case af == unix.AF_INET && len(b) >= 4:
		return netip.AddrFrom4([4]byte(b[:4])), true
	case af == unix.AF_INET6 && len(b) >= 16:
		return netip.AddrFrom16([16]byte(b[:16])), true
	}
	return netip.Addr{}, false
}

// parseStats64 reads IPVS_STATS_ATTR_* as 64-bit values (host order).
func parseStats64(b []byte) Stats {
	var s Stats
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return s
	}
	fields := map[uint16]*uint64{1: &s.Connections, 2: &s.PacketsIn, 3: &s.PacketsOut, 4: &s.BytesIn, 5: &s.BytesOut,
		6: &s.CPS, 7: &s.PPSIn, 8: &s.PPSOut, 9: &s.BPSIn, 10: &s.BPSOut}
	for ad.Next() {
		if f, ok := fields[ad.Type()]; ok && len(ad.Bytes()) == 8 {
			*f = binary.NativeEndian.Uint64(ad.Bytes())
		}
	}
	return s
}

// Package vrrp implements the Virtual Router Redundancy Protocol: version 2
// (RFC 3768) and version 3 (RFC 5798, RFC 9568) advertisements, the
// Initialize/Backup/Master/Fault state machine, and a runner that moves
// virtual addresses with netlink and announces them with gratuitous ARP.
//
// The package knows nothing of load balancing, clustering or health checks:
// the daemon feeds it configuration and reads its state.
package vrrp

import (
	"encoding/binary"
	"net/netip"
	"time"
)

// Protocol is VRRP's IP protocol number.
const Protocol = 112

// Multicast groups adverts are sent to.
var (
	GroupIPv4 = netip.MustParseAddr("224.0.0.18")
	GroupIPv6 = netip.MustParseAddr("ff02::12")
)

const (
	typeAdvertisement = 1
	headerLen         = 8
	authLenV2         = 8
	// PriorityOwner is the priority of the router that owns the addresses.
	PriorityOwner = 255
	// PriorityResign is sent by a master that stops.
	PriorityResign = 0
)

// Auth types of VRRP version 2.
const (
	AuthNone   = 0
	AuthSimple = 1 // keepalived's PASS: a clear-text password, not security
)

// Advert is a VRRP advertisement of either version.
type Advert struct {
	Version  int // 2 or 3
	VRID     uint8
	Priority uint8
	// Interval is the advertisement interval: whole seconds on the wire in
	// version 2, centiseconds (Max Adver Int) in version 3.
	Interval time.Duration
	Addrs    []netip.Addr
	// AuthType and AuthData are version 2 only.
	AuthType uint8
	AuthData [8]byte
}

// DropReason says why a received packet was discarded. The empty reason
// means the packet was accepted.
type DropReason string

const (
	DropTTL          DropReason = "ttl"           // TTL or hop limit is not 255
	DropVersion      DropReason = "version"       // not the configured VRRP version
	DropType         DropReason = "type"          // not an advertisement
	DropLength       DropReason = "length"        // truncated or inconsistent length
	DropCount        DropReason = "count"         // zero addresses (RFC 9568 erratum 8299)
	DropChecksum     DropReason = "checksum"      // bad checksum
	DropVRID         DropReason = "vrid"          // no instance with this VRID here
	DropAuth         DropReason = "auth"          // v2 auth type or password mismatch
	DropInterval     DropReason = "interval"      // v2 interval differs from ours (RFC 3768 §7.1)
	DropOwner        DropReason = "owner"         // we own the addresses (priority 255)
	DropSelf         DropReason = "self"          // sent from our own address (a loop or echo)
	DropAddrList     DropReason = "addr_list"     // v2: address list differs and sender is not the owner
	DropUnicastSrc   DropReason = "unicast_src"   // unicast source is not a configured peer
	DropFamily       DropReason = "family"        // address family does not match the instance
	DropZeroInterval DropReason = "zero_interval" // v3 Max Adver Int of 0 (RFC 9568 erratum 8301)
)

// Marshal encodes a as sent from src to dst. pseudoHeader selects the
// version 3 IPv4 checksum that covers an IPv4 pseudo-header, as keepalived
// and Wireshark expect; RFC 9568 peers checksum the message alone. For
// IPv6 the pseudo-header is always included, as RFC 5798 requires.
func (a *Advert) Marshal(src, dst netip.Addr, pseudoHeader bool) []byte {
	alen := 4
	if len(a.Addrs) > 0 && a.Addrs[0].Is6() {
		alen = 16
	}
	n := headerLen + alen*len(a.Addrs)
	if a.Version == 2 {
		n += authLenV2
	}
	b := make([]byte, n)
	b[0] = byte(a.Version<<4 | typeAdvertisement)
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = byte(len(a.Addrs))
	if a.Version == 2 {
		b[4] = a.AuthType
		b[5] = byte(a.Interval / time.Second)
	} else {
		binary.BigEndian.PutUint16(b[4:], uint16(a.Interval/(10*time.Millisecond))&0x0fff)
	}
	off := headerLen
	for _, ip := range a.Addrs {
		s := ip.AsSlice()
		copy(b[off:], s)
		off += len(s)
	}
	if a.Version == 2 {
		copy(b[off:], a.AuthData[:])
	}
	binary.BigEndian.PutUint16(b[6:], checksum(b, src, dst, a.Version == 3 && (pseudoHeader || src.Is6())))
	return b
}

// Parse decodes a VRRP message received from src for dst. It checks what the
// message alone can tell (version, type, length, count, checksum) and
// returns the reason when the message must be dropped. Both forms of the
// version 3 IPv4 checksum are accepted; pseudo reports which one matched.
func Parse(b []byte, src, dst netip.Addr) (a Advert, pseudo bool, reason DropReason) {
	if len(b) < headerLen {
		return a, false, DropLength
	}
	a.Version = int(b[0] >> 4)
	if a.Version != 2 && a.Version != 3 {
		return a, false, DropVersion
	}
	if b[0]&0x0f != typeAdvertisement {
		return a, false, DropType
	}
	a.VRID, a.Priority = b[1], b[2]
	count := int(b[3])
	if count == 0 {
		return a, false, DropCount
	}
	alen := 4
	if src.Is6() {
		alen = 16
	}
	want := headerLen + count*alen
	if a.Version == 2 {
		if src.Is6() {
			return a, false, DropVersion // VRRPv2 is IPv4 only
		}
		want += authLenV2
	}
	// Ethernet padding may follow a short IPv4 packet; the kernel strips it
	// using the IP length, so the message must match exactly.
	if len(b) != want {
		return a, false, DropLength
	}
	msg := b[:want]
	sum := binary.BigEndian.Uint16(msg[6:])
	switch {
	case a.Version == 2:
		if checksum(msg, src, dst, false) != sum {
			return a, false, DropChecksum
		}
	case src.Is6():
		if checksum(msg, src, dst, true) != sum {
			return a, false, DropChecksum
		}
		pseudo = true
	default:
		switch sum {
		case checksum(msg, src, dst, true):
			pseudo = true
		case checksum(msg, src, dst, false):
		default:
			return a, false, DropChecksum
		}
	}
	if a.Version == 2 {
		a.AuthType = msg[4]
		a.Interval = time.Duration(msg[5]) * time.Second
		copy(a.AuthData[:], msg[want-authLenV2:])
	} else {
		a.Interval = time.Duration(binary.BigEndian.Uint16(msg[4:])&0x0fff) * 10 * time.Millisecond
		if a.Interval == 0 {
			return a, pseudo, DropZeroInterval
		}
	}
	a.Addrs = make([]netip.Addr, count)
	for i := range count {
		s := msg[headerLen+i*alen : headerLen+(i+1)*alen]
		if alen == 4 {
			a.Addrs[i] = netip.AddrFrom4([4]byte(s))
		} else {
			a.Addrs[i] = netip.AddrFrom16([16]byte(s))
		}
	}
	return a, pseudo, ""
}

// checksum computes the Internet checksum of msg with its checksum field
// taken as zero, over a pseudo-header of src, dst, protocol 112 and the
// length when pseudo is set.
func checksum(msg []byte, src, dst netip.Addr, pseudo bool) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	if pseudo {
		add(src.AsSlice())
		add(dst.AsSlice())
		if src.Is6() {
			// RFC 8200 §8.1: 32-bit length, 3 zero bytes, next header.
			sum += uint32(len(msg)>>16) + uint32(len(msg)&0xffff) + Protocol
		} else {
			sum += Protocol + uint32(len(msg))
		}
	}
	add(msg[:6])
	add(msg[8:])
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

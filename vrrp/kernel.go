package vrrp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Conn sends and receives VRRP messages on one interface and family.
type Conn interface {
	// ReadFrom returns one VRRP message with its source, destination and
	// TTL (hop limit).
	ReadFrom(b []byte) (n int, src, dst netip.Addr, ttl int, err error)
	WriteTo(b []byte, src, dst netip.Addr) error
	Close() error
}

// PendingReader is a Conn that hands over at once what it holds already,
// as ReadFrom would, with ok false when it holds nothing. A backup asks
// it before it declares its master dead: a process the host did not run
// for a while finds its deadline passed and the master's adverts still
// waiting in the socket, and must hear them first.
type PendingReader interface {
	ReadPending(b []byte) (n int, src, dst netip.Addr, ttl int, ok bool, err error)
}

// Addresses adds and removes the virtual addresses.
type Addresses interface {
	// Add adds p; added is false when it was there already.
	Add(ifname string, p netip.Prefix) (added bool, err error)
	Remove(ifname string, p netip.Prefix) error
}

// Announcer tells the link where addresses now live (gratuitous ARP),
// repeat times each.
type Announcer interface {
	Announce(ifname string, addrs []netip.Addr, repeat int) error
}

var (
	_ Conn = (*rawConn4)(nil)
	_ Conn = (*rawConn6)(nil)

	_ PendingReader = (*rawConn4)(nil)
	_ PendingReader = (*rawConn6)(nil)
	_ Addresses     = NetlinkAddresses{}
	_ Announcer     = LinkAnnouncer{}
)

// bindToDevice keeps a raw socket to one interface, so that each router
// sees only its own link's adverts.
func bindToDevice(ifname string) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE, ifname)
		}); err != nil {
			return err
		}
		return serr
	}
}

type rawConn4 struct {
	pc  net.PacketConn
	s   rawSock
	oob []byte // the reader's (one goroutine)
	ifi *net.Interface
}

// newRawSock finds pc's descriptor in the poller.
func newRawSock(pc net.PacketConn) (rawSock, error) {
	sc, ok := pc.(syscall.Conn)
	if !ok {
		return rawSock{}, errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	return rawSock{rc: rc}, err
}

// ListenIPv4 opens a raw IP protocol 112 socket on ifname, joined to
// 224.0.0.18, sending with TTL 255 and precedence TOS like keepalived.
func ListenIPv4(ifname string) (Conn, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	lc := net.ListenConfig{Control: bindToDevice(ifname)}
	pc, err := lc.ListenPacket(context.Background(), "ip4:112", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("VRRP socket on %s: %w", ifname, err)
	}
	p := ipv4.NewPacketConn(pc)
	rs, err := newRawSock(pc)
	for _, step := range []struct {
		what string
		err  error
	}{
		{"descriptor", err},
		{"join 224.0.0.18", p.JoinGroup(ifi, &net.IPAddr{IP: GroupIPv4.AsSlice()})},
		{"control messages", p.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst|ipv4.FlagInterface, true)},
		{"multicast interface", p.SetMulticastInterface(ifi)},
		{"multicast TTL", p.SetMulticastTTL(255)},
		{"multicast loopback", p.SetMulticastLoopback(false)},
		{"TTL", p.SetTTL(255)},
		{"TOS", p.SetTOS(0xc0)},
	} {
		if step.err != nil {
			pc.Close()
			return nil, fmt.Errorf("VRRP socket on %s: %s: %w", ifname, step.what, step.err)
		}
	}
	return &rawConn4{pc: pc, s: rs, oob: make([]byte, oobSpace), ifi: ifi}, nil
}

func (c *rawConn4) ReadFrom(b []byte) (int, netip.Addr, netip.Addr, int, error) {
	return readIPv4(c.s, b, c.oob, true)
}

func (c *rawConn4) ReadPending(b []byte) (int, netip.Addr, netip.Addr, int, bool, error) {
	n, src, dst, ttl, err := readIPv4(c.s, b, make([]byte, oobSpace), false)
	return pending(n, src, dst, ttl, err)
}

func (c *rawConn4) WriteTo(b []byte, src, dst netip.Addr) error {
	return writeIPv4(c.s, b, c.ifi.Index, src, dst)
}

func (c *rawConn4) Close() error { return c.pc.Close() }

type rawConn6 struct {
	pc  net.PacketConn
	s   rawSock
	oob []byte // the reader's (one goroutine)
	ifi *net.Interface
}

// ListenIPv6 opens a raw IPv6 protocol 112 socket on ifname joined to
// ff02::12; the kernel computes and verifies the checksum.
func ListenIPv6(ifname string) (Conn, error) {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", ifname, err)
	}
	lc := net.ListenConfig{Control: bindToDevice(ifname)}
	pc, err := lc.ListenPacket(context.Background(), "ip6:112", "::")
	if err != nil {
		return nil, fmt.Errorf("VRRP socket on %s: %w", ifname, err)
	}
	p := ipv6.NewPacketConn(pc)
	rs, err := newRawSock(pc)
	for _, step := range []struct {
		what string
		err  error
	}{
		{"descriptor", err},
		{"join ff02::12", p.JoinGroup(ifi, &net.IPAddr{IP: GroupIPv6.AsSlice()})},
		{"control messages", p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst|ipv6.FlagInterface, true)},
		{"multicast interface", p.SetMulticastInterface(ifi)},
		{"multicast hop limit", p.SetMulticastHopLimit(255)},
		{"multicast loopback", p.SetMulticastLoopback(false)},
		{"hop limit", p.SetHopLimit(255)},
		{"checksum", p.SetChecksum(true, 6)},
	} {
		if step.err != nil {
			pc.Close()
			return nil, fmt.Errorf("VRRP socket on %s: %s: %w", ifname, step.what, step.err)
		}
	}
	return &rawConn6{pc: pc, s: rs, oob: make([]byte, oobSpace), ifi: ifi}, nil
}

func (c *rawConn6) ReadFrom(b []byte) (int, netip.Addr, netip.Addr, int, error) {
	return readIPv6(c.s, b, c.oob, true)
}

func (c *rawConn6) ReadPending(b []byte) (int, netip.Addr, netip.Addr, int, bool, error) {
	n, src, dst, hops, err := readIPv6(c.s, b, make([]byte, oobSpace), false)
	return pending(n, src, dst, hops, err)
}

// pending turns a read without wait into ReadPending's answer.
func pending(n int, src, dst netip.Addr, ttl int, err error) (int, netip.Addr, netip.Addr, int, bool, error) {
	if errors.Is(err, errNonePending) {
		return 0, src, dst, 0, false, nil
	}
	return n, src, dst, ttl, err == nil, err
}

func (c *rawConn6) WriteTo(b []byte, src, dst netip.Addr) error {
	return writeIPv6(c.s, b, c.ifi.Index, src, dst)
}

func (c *rawConn6) Close() error { return c.pc.Close() }

// NetlinkAddresses manages addresses with rtnetlink.
type NetlinkAddresses struct{}

func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD // usable at once after a takeover
	}
	return a
}

// Add adds p to ifname; an address already there is fine (added false).
func (NetlinkAddresses) Add(ifname string, p netip.Prefix) (bool, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return false, fmt.Errorf("add VIP %s: %w", p, err)
	}
	if err := netlink.AddrAdd(link, nlAddr(p)); errors.Is(err, unix.EEXIST) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("add VIP %s to %s: %w", p, ifname, err)
	}
	return true, nil
}

// Remove removes p from ifname; an address already gone is fine.
func (NetlinkAddresses) Remove(ifname string, p netip.Prefix) error {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("remove VIP %s: %w", p, err)
	}
	if err := netlink.AddrDel(link, nlAddr(p)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("remove VIP %s from %s: %w", p, ifname, err)
	}
	return nil
}

// LinkAnnouncer tells the link where addresses now live: gratuitous ARP
// requests for IPv4, unsolicited neighbour advertisements (override flag
// set, RFC 4861 §7.2.6) for IPv6.
type LinkAnnouncer struct{}

func (LinkAnnouncer) Announce(ifname string, addrs []netip.Addr, repeat int) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("announce: %w", err)
	}
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	repeat = max(repeat, 1)
	if len(v4) > 0 {
		if err := garp(ifi, v4, repeat); err != nil {
			return err
		}
	}
	if len(v6) > 0 {
		return unsolicitedNA(ifi, v6, repeat)
	}
	return nil
}

func garp(ifi *net.Interface, addrs []netip.Addr, repeat int) error {
	c, err := arp.Dial(ifi)
	if err != nil {
		return fmt.Errorf("gratuitous ARP on %s: %w", ifi.Name, err)
	}
	defer c.Close()
	for range repeat {
		for _, a := range addrs {
			p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, a, ethernet.Broadcast, a)
			if err != nil {
				return fmt.Errorf("gratuitous ARP for %s: %w", a, err)
			}
			if err := c.WriteTo(p, ethernet.Broadcast); err != nil {
				return fmt.Errorf("gratuitous ARP for %s on %s: %w", a, ifi.Name, err)
			}
		}
	}
	return nil
}

// allNodes is where unsolicited neighbour advertisements go.
var allNodes = netip.MustParseAddr("ff02::1")

func unsolicitedNA(ifi *net.Interface, addrs []netip.Addr, repeat int) error {
	lc := net.ListenConfig{Control: bindToDevice(ifi.Name)}
	pc, err := lc.ListenPacket(context.Background(), "ip6:ipv6-icmp", "::")
	if err != nil {
		return fmt.Errorf("neighbour advertisement socket on %s: %w", ifi.Name, err)
	}
	defer pc.Close()
	p := ipv6.NewPacketConn(pc)
	// RFC 4861 §7.1.2: receivers drop neighbour discovery without hop limit 255.
	if err := p.SetMulticastHopLimit(255); err != nil {
		return fmt.Errorf("neighbour advertisement on %s: %w", ifi.Name, err)
	}
	dst := &net.IPAddr{IP: allNodes.AsSlice(), Zone: ifi.Name}
	router := forwardsIPv6(ifi.Name)
	for range repeat {
		for _, a := range addrs {
			msg := neighbourAdvert(a, ifi.HardwareAddr, router)
			if _, err := p.WriteTo(msg, &ipv6.ControlMessage{IfIndex: ifi.Index, HopLimit: 255}, dst); err != nil {
				return fmt.Errorf("neighbour advertisement for %s on %s: %w", a, ifi.Name, err)
			}
		}
	}
	return nil
}

// neighbourAdvert is an unsolicited neighbour advertisement for target at
// mac (the kernel computes the checksum on raw ICMPv6 sockets): override
// set, so that neighbours replace what they cached (RFC 4861 §7.2.6), and
// router set when this host forwards, as RFC 9568 §6.4 wants (a host
// clears IsRouter for a neighbour advertising without it), as keepalived's
// vrrp_ndisc does.
func neighbourAdvert(target netip.Addr, mac net.HardwareAddr, router bool) []byte {
	msg := make([]byte, 32)
	msg[0] = 136  // neighbour advertisement
	msg[4] = 0x20 // override
	if router {
		msg[4] |= 0x80
	}
	copy(msg[8:24], target.AsSlice())
	msg[24], msg[25] = 2, 1 // option: target link-layer address, 8 bytes
	copy(msg[26:32], mac)
	return msg
}

// forwardsIPv6 reports whether the host routes IPv6 on ifname.
func forwardsIPv6(ifname string) bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + ifname + "/forwarding")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// PrimaryAddress returns the address adverts are sent from: the first
// IPv4 address of ifname that is not a virtual one, or for IPv6 its
// link-local address. Tentative addresses (still in duplicate address
// detection) cannot be a source yet, so they are passed over.
func PrimaryAddress(ifname string, ipv6 bool, vips []netip.Prefix) (netip.Addr, error) {
	link, err := netlink.LinkByName(ifname)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("interface %s: %w", ifname, err)
	}
	family := netlink.FAMILY_V4
	if ipv6 {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(link, family)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", ifname, err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ip = ip.Unmap()
		if a.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 || slices.ContainsFunc(vips, func(v netip.Prefix) bool { return v.Addr() == ip }) {
			continue
		}
		if !ipv6 || ip.IsLinkLocalUnicast() {
			return ip, nil
		}
	}
	fam := "usable IPv4"
	if ipv6 {
		fam = "usable (non-tentative) IPv6 link-local"
	}
	return netip.Addr{}, fmt.Errorf("%s has no %s address to send adverts from", ifname, fam)
}

// WatchAddrs reports each interface whose addresses change to fn until
// ctx ends.
func WatchAddrs(ctx context.Context, fn func(ifname string)) error {
	return watch(ctx, "address", func(ch chan netlink.AddrUpdate, done chan struct{}, errf func(error)) error {
		return netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{ErrorCallback: errf})
	}, func(u netlink.AddrUpdate) {
		if ifi, err := net.InterfaceByIndex(u.LinkIndex); err == nil {
			fn(ifi.Name)
		}
	})
}

// WatchLinks reports the operational state of every link (and each change)
// to fn until ctx ends.
func WatchLinks(ctx context.Context, fn func(ifname string, up bool)) error {
	return watch(ctx, "link", func(ch chan netlink.LinkUpdate, done chan struct{}, errf func(error)) error {
		return netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{ListExisting: true, ErrorCallback: errf})
	}, func(u netlink.LinkUpdate) {
		attrs := u.Attrs()
		up := u.Header.Type != unix.RTM_DELLINK && (attrs.OperState == netlink.OperUp ||
			attrs.OperState == netlink.OperUnknown && attrs.Flags&net.FlagUp != 0)
		fn(attrs.Name, up)
	})
}

// watch subscribes to a kind of rtnetlink change and hands each to handle
// until ctx ends or the subscription fails.
func watch[U any](ctx context.Context, kind string, subscribe func(chan U, chan struct{}, func(error)) error, handle func(U)) error {
	updates := make(chan U, 64)
	done := make(chan struct{})
	errc := make(chan error, 1)
	errf := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	if err := subscribe(updates, done, errf); err != nil {
		return fmt.Errorf("subscribe to %s changes: %w", kind, err)
	}
	defer close(done)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return fmt.Errorf("%s changes: %w", kind, err)
		case u, ok := <-updates:
			if !ok {
				return fmt.Errorf("%s change subscription closed", kind)
			}
			handle(u)
		}
	}
}

// Package sync keeps a backup director's connection state in step with
// the master's, so that established flows survive a failover. For the
// nftables data plane it copies the conntrack entries of the flows to the
// virtual addresses (with their NAT mapping) from the master to the peer
// over an authenticated TCP channel. (The IPVS data plane uses the
// kernel's own sync daemons, in package lvs.)
package sync

import (
	"errors"
	"fmt"
	"net/netip"
	stdsync "sync"
	"syscall"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
)

// Flow is one NAT'd connection to a virtual address: what the backup
// needs to carry it on.
type Flow struct {
	Proto    uint8          `json:"p"`
	Client   netip.AddrPort `json:"c"` // the original source
	VIP      netip.AddrPort `json:"v"` // the original destination
	Real     netip.AddrPort `json:"r"` // the real server it was DNAT'd to
	Timeout  uint32         `json:"t"` // seconds left
	TCPState uint8          `json:"s,omitempty"`
}

// Key identifies a flow.
func (f Flow) Key() string { return fmt.Sprintf("%d %s %s", f.Proto, f.Client, f.VIP) }

// fromConntrack reads a conntrack entry; ok is false unless it is a DNAT'd
// flow to one of vips.
func fromConntrack(c conntrack.Flow, vips map[netip.Addr]bool) (Flow, bool) {
	o, r := c.TupleOrig, c.TupleReply
	if !vips[o.IP.DestinationAddress.Unmap()] || !c.Status.DstNAT() {
		return Flow{}, false
	}
	f := Flow{
		Proto:   o.Proto.Protocol,
		Client:  netip.AddrPortFrom(o.IP.SourceAddress.Unmap(), o.Proto.SourcePort),
		VIP:     netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort),
		Real:    netip.AddrPortFrom(r.IP.SourceAddress.Unmap(), r.Proto.SourcePort),
		Timeout: c.Timeout,
	}
	if c.ProtoInfo.TCP != nil {
		f.TCPState = c.ProtoInfo.TCP.State
	}
	return f, true
}

// ctnetlink attribute numbers (linux/netfilter/nfnetlink_conntrack.h) for
// what the conntrack library cannot write: a flow with its DNAT.
const (
	ctaTupleOrig  = 1
	ctaTupleReply = 2
	ctaStatus     = 3
	ctaProtoinfo  = 4
	ctaTimeout    = 7
	ctaNATDst     = 13

	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSrc   = 2
	ctaProtoDst   = 3

	ctaNATv4Min    = 1
	ctaNATv4Max    = 2
	ctaNATProto    = 3
	ctaNATv6Min    = 4
	ctaNATv6Max    = 5
	ctaPortMin     = 1
	ctaPortMax     = 2
	ctaProtoTCP    = 1
	ctaTCPState    = 1
	ipctnlMsgNew   = 0
	ipsConfirmed   = 1 << 3
	ipsSeenReply   = 1 << 1
	ipsAssured     = 1 << 2
	tcpEstablished = 3
)

func u16(t uint16, v uint16) netfilter.Attribute {
	a := netfilter.Attribute{Type: t}
	a.PutUint16(v)
	return a
}

func u32(t uint16, v uint32) netfilter.Attribute {
	a := netfilter.Attribute{Type: t}
	a.PutUint32(v)
	return a
}

func nested(t uint16, children ...netfilter.Attribute) netfilter.Attribute {
	return netfilter.Attribute{Type: t, Nested: true, Children: children}
}

func tuple(t uint16, proto uint8, src, dst netip.AddrPort) netfilter.Attribute {
	s, d := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if src.Addr().Is6() {
		s, d = ctaIPv6Src, ctaIPv6Dst
	}
	return nested(t,
		nested(ctaTupleIP,
			netfilter.Attribute{Type: s, Data: src.Addr().AsSlice()},
			netfilter.Attribute{Type: d, Data: dst.Addr().AsSlice()}),
		nested(ctaTupleProto,
			netfilter.Attribute{Type: ctaProtoNum, Data: []byte{proto}},
			u16(ctaProtoSrc, src.Port()),
			u16(ctaProtoDst, dst.Port())))
}

// Table reads and writes the conntrack table of one network namespace.
type Table struct {
	mu stdsync.Mutex // one request at a time on each socket
	ct *conntrack.Conn
	nf *netfilter.Conn
}

// OpenTable opens the conntrack table of the namespace netns (an open
// namespace file descriptor; 0 is the caller's own).
func OpenTable(netns int) (*Table, error) {
	cfg := &netlink.Config{NetNS: netns}
	ct, err := conntrack.Dial(cfg)
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	nf, err := netfilter.Dial(cfg)
	if err != nil {
		ct.Close()
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	return &Table{ct: ct, nf: nf}, nil
}

func (t *Table) Close() error {
	t.nf.Close()
	return t.ct.Close()
}

// Flows dumps the DNAT'd flows to vips.
func (t *Table) Flows(vips map[netip.Addr]bool) ([]Flow, error) {
	t.mu.Lock()
	all, err := t.ct.Dump(nil)
	t.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: %w", err)
	}
	var out []Flow
	for _, c := range all {
		if f, ok := fromConntrack(c, vips); ok {
			out = append(out, f)
		}
	}
	return out, nil
}

// Write creates the flow with its DNAT, or refreshes it if it exists. The
// kernel takes an entry only with the confirmed status, and sets the NAT
// only from the NAT attribute: the reply tuple given is the plain inverse
// of the original, which the kernel rewrites to come from the real server.
func (t *Table) Write(f Flow) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	nat := []netfilter.Attribute{}
	minT, maxT := uint16(ctaNATv4Min), uint16(ctaNATv4Max)
	if f.Real.Addr().Is6() {
		minT, maxT = ctaNATv6Min, ctaNATv6Max
	}
	nat = append(nat,
		netfilter.Attribute{Type: minT, Data: f.Real.Addr().AsSlice()},
		netfilter.Attribute{Type: maxT, Data: f.Real.Addr().AsSlice()},
		nested(ctaNATProto, u16(ctaPortMin, f.Real.Port()), u16(ctaPortMax, f.Real.Port())))
	timeout := max(f.Timeout, 1)
	attrs := []netfilter.Attribute{
		tuple(ctaTupleOrig, f.Proto, f.Client, f.VIP),
		tuple(ctaTupleReply, f.Proto, f.VIP, f.Client),
		u32(ctaStatus, ipsConfirmed|ipsSeenReply|ipsAssured),
		u32(ctaTimeout, timeout),
		nested(ctaNATDst, nat...),
	}
	if f.Proto == syscall.IPPROTO_TCP {
		state := f.TCPState
		if state == 0 {
			state = tcpEstablished
		}
		attrs = append(attrs, nested(ctaProtoinfo, nested(ctaProtoTCP, netfilter.Attribute{Type: ctaTCPState, Data: []byte{state}})))
	}
	family := netfilter.ProtoIPv4
	if f.Client.Addr().Is6() {
		family = netfilter.ProtoIPv6
	}
	req, err := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink, MessageType: ipctnlMsgNew, Family: family,
		Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Excl,
	}, attrs)
	if err != nil {
		return err
	}
	_, err = t.nf.Query(req)
	if errors.Is(err, syscall.EEXIST) {
		// There already: refresh its timeout (and TCP state).
		c := conntrack.NewFlow(f.Proto, conntrack.StatusConfirmed|conntrack.StatusSeenReply|conntrack.StatusAssured,
			f.Client.Addr(), f.VIP.Addr(), f.Client.Port(), f.VIP.Port(), timeout, 0)
		c.TupleReply = conntrack.Tuple{}
		if f.Proto == syscall.IPPROTO_TCP && f.TCPState != 0 {
			c.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: f.TCPState}
		}
		err = t.ct.Update(c)
	}
	if err != nil {
		return fmt.Errorf("conntrack write %s: %w", f.Key(), err)
	}
	return nil
}

// Delete removes the flow, if it is there.
func (t *Table) Delete(f Flow) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := conntrack.NewFlow(f.Proto, 0, f.Client.Addr(), f.VIP.Addr(), f.Client.Port(), f.VIP.Port(), 0, 0)
	c.TupleReply = conntrack.Tuple{}
	if err := t.ct.Delete(c); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("conntrack delete %s: %w", f.Key(), err)
	}
	return nil
}

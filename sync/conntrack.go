// Package sync keeps a backup director's connection state in step with
// the master's, so that established flows survive a failover. For the
// nftables data plane it copies the conntrack entries of the flows to the
// virtual addresses (with their NAT mapping) from the master to the peer
// over an authenticated TCP channel. (The IPVS data plane uses the
// kernel's own sync daemons, in package lvs.)
package sync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	stdsync "sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"golang.org/x/sys/unix"
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
	// nl carries batches of writes: many requests in one sendmsg, only
	// the last acknowledged, so that a flow costs no system call of its
	// own and only failures are answered.
	nl  *netlink.Conn
	buf []byte
}

// OpenTable opens the conntrack table of the namespace netns (an open
// namespace file descriptor; 0 is the caller's own).
func OpenTable(netns int) (*Table, error) {
	cfg := &netlink.Config{NetNS: netns}
	ct, err := conntrack.Dial(cfg)
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	nl, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		ct.Close()
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	// Errors come back without the request they answer; a batch of
	// failures must fit the receive buffer.
	_ = nl.SetOption(netlink.CapAcknowledge, true)
	_ = nl.SetReadBuffer(4 << 20)
	return &Table{ct: ct, nl: nl, buf: make([]byte, 1<<16)}, nil
}

func (t *Table) Close() error {
	t.nl.Close()
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

// Write is WriteBatch of one flow.
func (t *Table) Write(f Flow) error {
	_, err := t.WriteBatch([]Flow{f})
	return err
}

// batchLen bounds the requests of one sendmsg: they must fit the
// socket's send buffer (about 200 bytes each).
const batchLen = 256

// WriteBatch creates each flow with its DNAT, or refreshes its timeout and
// TCP state if it exists, and returns how many it wrote and the first
// error. The kernel takes an entry only with the confirmed status, and
// sets the NAT only from the NAT attribute: the reply tuple given is the
// plain inverse of the original, which the kernel rewrites to come from
// the real server. A flow that exists cannot be created again, nor its NAT
// changed: those are refreshed by a second batch without the NAT.
func (t *Table) WriteBatch(fs []Flow) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	written := 0
	var first error
	for len(fs) > 0 {
		n := min(len(fs), batchLen)
		chunk := fs[:n]
		fs = fs[n:]
		errs, err := t.batch(chunk, createAttrs, netlink.Create|netlink.Excl)
		if err != nil {
			return written, err
		}
		var exist []Flow
		for i, e := range errs {
			switch {
			case e == nil:
				written++
			case errors.Is(e, syscall.EEXIST):
				exist = append(exist, chunk[i])
			case first == nil:
				first = fmt.Errorf("conntrack write %s: %w", chunk[i].Key(), e)
			}
		}
		if len(exist) == 0 {
			continue
		}
		errs, err = t.batch(exist, updateAttrs, 0)
		if err != nil {
			return written, err
		}
		for i, e := range errs {
			if e == nil {
				written++
			} else if first == nil {
				first = fmt.Errorf("conntrack refresh %s: %w", exist[i].Key(), e)
			}
		}
	}
	return written, first
}

// batch sends one ctnetlink request per flow in one sendmsg and returns
// each one's error.
func (t *Table) batch(fs []Flow, attrs func(Flow) []netfilter.Attribute, flags netlink.HeaderFlags) ([]error, error) {
	msgs := make([]netlink.Message, len(fs))
	for i, f := range fs {
		family := netfilter.ProtoIPv4
		if f.Client.Addr().Is6() {
			family = netfilter.ProtoIPv6
		}
		m, err := netfilter.MarshalNetlink(netfilter.Header{
			SubsystemID: netfilter.NFSubsysCTNetlink, MessageType: ipctnlMsgNew, Family: family,
			Flags: netlink.Request | flags,
		}, attrs(f))
		if err != nil {
			return nil, err
		}
		msgs[i] = m
	}
	// Only the last asks for an acknowledgement: it comes after the
	// errors of the others, which the kernel handles in order.
	msgs[len(msgs)-1].Header.Flags |= netlink.Acknowledge
	sent, err := t.nl.SendMessages(msgs)
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	index := make(map[uint32]int, len(sent))
	for i, m := range sent {
		index[m.Header.Sequence] = i
	}
	last := sent[len(sent)-1].Header.Sequence
	errs := make([]error, len(fs))
	rc, err := t.nl.SyscallConn()
	if err != nil {
		return nil, err
	}
	// The kernel answers within the sendmsg; the deadline only keeps a
	// lost answer from stopping the sync for good.
	if err := t.nl.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	done := false
	var rerr error
	for !done && rerr == nil {
		if err := rc.Read(func(fd uintptr) bool {
			n, _, err := unix.Recvfrom(int(fd), t.buf, unix.MSG_DONTWAIT)
			if err == unix.EAGAIN {
				return false
			}
			if err != nil {
				rerr = err
				return true
			}
			ms, err := syscall.ParseNetlinkMessage(t.buf[:n])
			if err != nil {
				rerr = err
				return true
			}
			for _, m := range ms {
				if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
					continue
				}
				i, ok := index[m.Header.Seq]
				if !ok {
					continue // an answer to an earlier request
				}
				if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
					errs[i] = syscall.Errno(-code)
				}
				done = done || m.Header.Seq == last
			}
			return true
		}); err != nil {
			return nil, err
		}
	}
	if rerr != nil {
		return nil, fmt.Errorf("conntrack: %w", rerr)
	}
	return errs, nil
}

// createAttrs make a flow with its DNAT.
func createAttrs(f Flow) []netfilter.Attribute {
	minT, maxT := uint16(ctaNATv4Min), uint16(ctaNATv4Max)
	if f.Real.Addr().Is6() {
		minT, maxT = ctaNATv6Min, ctaNATv6Max
	}
	nat := []netfilter.Attribute{
		{Type: minT, Data: f.Real.Addr().AsSlice()},
		{Type: maxT, Data: f.Real.Addr().AsSlice()},
		nested(ctaNATProto, u16(ctaPortMin, f.Real.Port()), u16(ctaPortMax, f.Real.Port())),
	}
	attrs := []netfilter.Attribute{
		tuple(ctaTupleOrig, f.Proto, f.Client, f.VIP),
		tuple(ctaTupleReply, f.Proto, f.VIP, f.Client),
		u32(ctaStatus, ipsConfirmed|ipsSeenReply|ipsAssured),
		u32(ctaTimeout, max(f.Timeout, 1)),
		nested(ctaNATDst, nat...),
	}
	return append(attrs, tcpState(f)...)
}

// updateAttrs refresh an existing flow: its timeout and TCP state.
func updateAttrs(f Flow) []netfilter.Attribute {
	attrs := []netfilter.Attribute{
		tuple(ctaTupleOrig, f.Proto, f.Client, f.VIP),
		u32(ctaTimeout, max(f.Timeout, 1)),
	}
	return append(attrs, tcpState(f)...)
}

func tcpState(f Flow) []netfilter.Attribute {
	if f.Proto != syscall.IPPROTO_TCP {
		return nil
	}
	state := f.TCPState
	if state == 0 {
		state = tcpEstablished
	}
	return []netfilter.Attribute{nested(ctaProtoinfo, nested(ctaProtoTCP, netfilter.Attribute{Type: ctaTCPState, Data: []byte{state}}))}
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

package sync

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// EventTable is the nftables table (family inet) in which the syncer
// limits the conntrack events of new flows to the VIPs to the two it
// needs: assured and destroy. Every other state change of such a flow
// (SYN-ACK, FIN, TIME_WAIT, ...) then makes no event. Without it a TCP
// connection makes six or seven events, and at 5,000 new connections a
// second the listening socket overflowed and events were lost. The
// assured event comes with the packet that establishes a TCP flow, so it
// carries the new TCP state; a UDP flow is assured once it has carried
// traffic both ways for a couple of seconds (short exchanges, such as one
// DNS query, are not synced).
//
// The chains run just before the DNAT hook, while the destination is
// still the VIP. conntrack -E sees the same reduced stream for these
// flows.
const EventTable = "directord_sync"

// Conntrack event bits (enum ip_conntrack_events).
const (
	ipctDestroy = 2
	ipctAssured = 4
	// ctStateNew is ct state new as the ct expression reports it.
	ctStateNew = 1 << 3
	// priDstNATBefore is one before the DNAT hooks' priority.
	priDstNATBefore = -101
)

// eventFilter installs EventTable in the namespace netns (an open
// namespace file, 0 for the caller's own), replacing one a previous run
// left. The returned function removes it.
func eventFilter(netns int, vips []netip.Addr) (remove func() error, err error) {
	var opts []nftables.ConnOption
	if netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Name: EventTable, Family: nftables.TableFamilyINet}
	if _, err := c.ListTableOfFamily(EventTable, nftables.TableFamilyINet); err == nil {
		c.DelTable(t)
	}
	c.AddTable(t)
	prio := nftables.ChainPriority(priDstNATBefore)
	accept := nftables.ChainPolicyAccept
	mask := binaryutil.NativeEndian.PutUint32(1<<ipctAssured | 1<<ipctDestroy)
	for _, hook := range []*nftables.ChainHook{nftables.ChainHookPrerouting, nftables.ChainHookOutput} {
		ch := c.AddChain(&nftables.Chain{Name: hookName(hook), Table: t, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: &prio, Policy: &accept})
		for _, v := range vips {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: eventRule(v, mask)})
		}
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("nftables: table %s: %w", EventTable, err)
	}
	return func() error {
		c.DelTable(t)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("nftables: remove table %s: %w", EventTable, err)
		}
		return nil
	}, nil
}

func hookName(h *nftables.ChainHook) string {
	if *h == *nftables.ChainHookOutput {
		return "output"
	}
	return "prerouting"
}

// eventRule is: a new flow to vip gets the event mask.
func eventRule(vip netip.Addr, mask []byte) []expr.Any {
	fam, off := byte(unix.NFPROTO_IPV4), uint32(16)
	if vip.Is6() {
		fam, off = unix.NFPROTO_IPV6, 24
	}
	a := vip.AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(a))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a},
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ctStateNew), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Immediate{Register: 1, Data: mask},
		&expr.Ct{Register: 1, Key: expr.CtKeyEVENTMASK, SourceRegister: true},
	}
}

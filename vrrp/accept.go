package vrrp

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Acceptor keeps a master from accepting packets addressed to the
// virtual addresses of no_accept instances (keepalived's no_accept,
// RFC 9568's Accept_Mode false): the addresses answer for the router,
// not for this host.
type Acceptor interface {
	// Refuse drops packets to addrs from now on, for instance.
	Refuse(instance string, addrs []netip.Addr) error
	// Accept stops refusing what instance refused.
	Accept(instance string) error
}

// NFTAcceptor refuses with a table of its own, inet directord_vrrp: its
// input chain drops packets to the refused addresses. The chain runs
// after IPVS's (priority 200 against IPVS's 98), so a load-balanced
// service on a VIP is served; what is left for the host is dropped.
type NFTAcceptor struct {
	mu      sync.Mutex
	refused map[string][]netip.Addr // by instance; nil until the first call
}

var _ Acceptor = (*NFTAcceptor)(nil)

// NFTAcceptTable is the table NFTAcceptor keeps.
const NFTAcceptTable = "directord_vrrp"

func (n *NFTAcceptor) Refuse(instance string, addrs []netip.Addr) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.refused == nil {
		n.refused = map[string][]netip.Addr{}
	}
	n.refused[instance] = slices.Clone(addrs)
	return n.program()
}

func (n *NFTAcceptor) Accept(instance string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.refused[instance]; !ok && n.refused != nil {
		return nil
	}
	// The first call also removes a table a run that died left behind.
	if n.refused == nil {
		n.refused = map[string][]netip.Addr{}
	}
	delete(n.refused, instance)
	return n.program()
}

// program replaces the table with one that refuses what is refused now,
// in one transaction; with nothing refused, the table goes.
func (n *NFTAcceptor) program() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("no_accept: %w", err)
	}
	table := &nftables.Table{Name: NFTAcceptTable, Family: nftables.TableFamilyINet}
	if _, err := c.ListTableOfFamily(NFTAcceptTable, nftables.TableFamilyINet); err == nil {
		c.DelTable(table)
	}
	var v4, v6 []nftables.SetElement
	for _, addrs := range n.refused {
		for _, a := range addrs {
			if a.Is4() {
				v4 = append(v4, nftables.SetElement{Key: a.AsSlice()})
			} else {
				v6 = append(v6, nftables.SetElement{Key: a.AsSlice()})
			}
		}
	}
	if len(v4)+len(v6) > 0 {
		c.AddTable(table)
		accept := nftables.ChainPolicyAccept
		prio := nftables.ChainPriority(200)
		ch := c.AddChain(&nftables.Chain{Name: "input", Table: table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: &prio, Policy: &accept})
		for _, fam := range []struct {
			six  bool
			els  []nftables.SetElement
			name string
		}{{false, v4, "refused4"}, {true, v6, "refused6"}} {
			typ, off, size := nftables.TypeIPAddr, uint32(16), uint32(4)
			proto := byte(unix.NFPROTO_IPV4)
			if fam.six {
				typ, off, size, proto = nftables.TypeIP6Addr, 24, 16, unix.NFPROTO_IPV6
			}
			set := &nftables.Set{Table: table, Name: fam.name, KeyType: typ}
			if err := c.AddSet(set, fam.els); err != nil {
				return fmt.Errorf("no_accept: %w", err)
			}
			c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: size},
				&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
				&expr.Verdict{Kind: expr.VerdictDrop},
			}})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("no_accept: program table %s: %w", NFTAcceptTable, err)
	}
	return nil
}

package lvs

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Stateless direct routing on nftables, for directors that run side by
// side behind a router (BGP, ECMP). A packet to a direct-routing service
// is taken in the netdev ingress hook of the interface facing the router,
// before conntrack: the service's chain hashes the flow to a slot of its
// Maglev table, the slot gives the real server's MAC and the interface it
// is on, the frame gets that MAC as destination (and the interface's as
// source) and leaves by that interface, unchanged above layer 2. No state
// is kept: every director with the same real servers builds the same
// table and hashes with the same seed, so a flow reaches the same real
// server whichever director the router gives it to, and losing a
// director loses nothing but its share of the router's paths.
//
// The frame leaves with nftables' dup to the interface and the original
// is dropped: google/nftables (v0.3.0) has no fwd expression, and dup is
// the same egress path (nf_dup_netdev) with one sk_buff clone.

// NFTDRTable is the netdev table of the direct-routing services.
const NFTDRTable = "directord-dr"

// Hop is how frames reach a real server on one of the director's
// segments: the interface, the server's MAC and the interface's own.
type Hop struct {
	Ifindex int
	MAC     net.HardwareAddr
	Src     net.HardwareAddr
}

func (h Hop) equal(o Hop) bool {
	return h.Ifindex == o.Ifindex && bytes.Equal(h.MAC, o.MAC) && bytes.Equal(h.Src, o.Src)
}

// hopValue is a slot's data: iface_index . ether_addr . ether_addr, each
// padded to the register size.
func (h Hop) value() []byte {
	v := binaryutil.NativeEndian.PutUint32(uint32(h.Ifindex))
	v = append(v, h.MAC...)
	v = append(v, 0, 0)
	v = append(v, h.Src...)
	return append(v, 0, 0)
}

// drHop is a slot map's data type. The map is not flagged as a
// concatenation: that flag describes the key, and the kernel refuses it
// (EINVAL) on a map whose key is a plain mark.
var drHop = nftables.MustConcatSetType(nftables.TypeIFIndex, nftables.TypeEtherAddr, nftables.TypeEtherAddr)

// isDR says whether a service forwards by direct routing on this plane:
// its real servers do (the capability check refuses a mix).
func isDR(s *nsvc) bool {
	return len(s.reals) > 0 && s.reals[0].Method == DR
}

// drUnsupported is what stateless direct routing cannot do.
func drUnsupported(svc Service, add func(real int, field, format string, args ...any)) {
	if svc.Scheduler != "mh" && svc.Scheduler != "sh" && slices.Contains(NFTSchedulers, svc.Scheduler) {
		add(-1, "scheduler", "direct routing on nftables is stateless: each packet is scheduled on its own, so it needs a hashing scheduler, mh or sh, not %s", svc.Scheduler)
	}
	if svc.Persistence > 0 {
		add(-1, "persistence_timeout", "direct routing on nftables is stateless and keeps no persistence; mh already keeps a client's flows on one server")
	}
	if svc.FWMark != 0 {
		add(-1, "fwmark", "direct routing on nftables balances services with an address and port, not firewall marks")
	}
	if svc.Masquerade {
		add(-1, "masquerade", "direct routing does not change addresses: masquerade is for NAT")
	}
}

// neighbours finds real servers' hops in the kernel's routes and
// neighbour table, asking the kernel to resolve the ones it lacks.
type neighbours struct {
	h    *vnl.Handle
	wait time.Duration // for addresses being resolved
}

// hops resolves addrs; those it cannot are in the errors.
func (nb neighbours) hops(addrs []netip.Addr) (map[netip.Addr]Hop, map[netip.Addr]error) {
	out, errs := map[netip.Addr]Hop{}, map[netip.Addr]error{}
	links := map[int]net.HardwareAddr{}
	ifindex := map[netip.Addr]int{}
	for _, a := range addrs {
		rs, err := nb.h.RouteGet(a.AsSlice())
		switch {
		case err != nil:
			errs[a] = fmt.Errorf("route to %s: %w", a, err)
			continue
		case len(rs) == 0:
			errs[a] = fmt.Errorf("no route to %s", a)
			continue
		case rs[0].Gw != nil:
			errs[a] = fmt.Errorf("%s is reached through the router %s: direct routing needs the real server on a segment of the director", a, rs[0].Gw)
			continue
		}
		idx := rs[0].LinkIndex
		if _, ok := links[idx]; !ok {
			l, err := nb.h.LinkByIndex(idx)
			if err != nil {
				errs[a] = fmt.Errorf("interface %d towards %s: %w", idx, a, err)
				continue
			}
			if len(l.Attrs().HardwareAddr) != 6 {
				errs[a] = fmt.Errorf("%s is reached through %s, which is not Ethernet (local address?)", a, l.Attrs().Name)
				continue
			}
			links[idx] = l.Attrs().HardwareAddr
		}
		ifindex[a] = idx
	}
	pending := slices.SortedFunc(maps.Keys(ifindex), netip.Addr.Compare)
	for attempt := 0; len(pending) > 0; attempt++ {
		found, err := nb.lookup(pending, ifindex)
		if err != nil {
			for _, a := range pending {
				errs[a] = err
			}
			break
		}
		for a, mac := range found {
			out[a] = Hop{Ifindex: ifindex[a], MAC: mac, Src: links[ifindex[a]]}
		}
		pending = slices.DeleteFunc(pending, func(a netip.Addr) bool { _, ok := found[a]; return ok })
		if attempt == 0 {
			for _, a := range pending {
				// NTF_USE: resolve it as a packet to it would (ARP or
				// neighbour discovery), without sending one.
				fam := unix.AF_INET
				if a.Is6() {
					fam = unix.AF_INET6
				}
				_ = nb.h.NeighSet(&vnl.Neigh{LinkIndex: ifindex[a], Family: fam, IP: a.AsSlice(), Flags: unix.NTF_USE})
			}
		}
		if len(pending) == 0 || time.Duration(attempt)*20*time.Millisecond >= nb.wait {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, a := range pending {
		if _, ok := errs[a]; !ok {
			errs[a] = fmt.Errorf("%s does not answer ARP or neighbour solicitation", a)
		}
	}
	return out, errs
}

// usable are the neighbour states with a link-layer address to use.
const usable = vnl.NUD_REACHABLE | vnl.NUD_STALE | vnl.NUD_DELAY | vnl.NUD_PROBE | vnl.NUD_PERMANENT | vnl.NUD_NOARP

func (nb neighbours) lookup(addrs []netip.Addr, ifindex map[netip.Addr]int) (map[netip.Addr]net.HardwareAddr, error) {
	found := map[netip.Addr]net.HardwareAddr{}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		if !slices.ContainsFunc(addrs, func(a netip.Addr) bool { return a.Is6() == (fam == unix.AF_INET6) }) {
			continue
		}
		ns, err := nb.h.NeighList(0, fam)
		if err != nil {
			return nil, fmt.Errorf("neighbour table: %w", err)
		}
		for _, n := range ns {
			a, ok := netip.AddrFromSlice(n.IP)
			if !ok || n.State&usable == 0 || len(n.HardwareAddr) != 6 {
				continue
			}
			if a = a.Unmap(); slices.Contains(addrs, a) && ifindex[a] == n.LinkIndex {
				found[a] = n.HardwareAddr
			}
		}
	}
	return found, nil
}

// drObjects are the netdev table's own objects.
type drObjects struct {
	table *nftables.Table
	svc   map[bool]*nftables.Set // dispatch verdict maps, by IPv6
}

// addDRBase makes the netdev table afresh in the transaction (add, delete
// and add: whatever an earlier run or an edit left goes), with a chain on
// the ingress of the interface facing the router.
func (n *NFT) addDRBase() error {
	if n.drIface == "" {
		return errors.New("direct routing on the nftables data plane needs dataplane.dr_interface, the interface facing the router")
	}
	c := n.conn
	t := &nftables.Table{Name: NFTDRTable, Family: nftables.TableFamilyNetdev}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	d := &drObjects{table: t, svc: map[bool]*nftables.Set{}}
	accept := nftables.ChainPolicyAccept
	in := c.AddChain(&nftables.Chain{Name: "ingress", Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookIngress,
		Priority: nftables.ChainPriorityFilter, Device: n.drIface, Policy: &accept})
	for _, six := range []bool{false, true} {
		key, name, proto := dispatch4, "svc4", []byte{0x08, 0x00}
		if six {
			key, name, proto = dispatch6, "svc6", []byte{0x86, 0xdd}
		}
		// Counted: packets and bytes per service.
		m := &nftables.Set{Table: t, Name: name, IsMap: true, KeyType: key, DataType: nftables.TypeVerdict, Concatenation: true, Counter: true}
		_ = c.AddSet(m, nil)
		d.svc[six] = m
		// Frames to this host only: ingress sees every frame the port
		// receives, and a switch floods a unicast frame whose MAC it has
		// forgotten (another director's, whose cable was cut) to every
		// port, so that director's flows would also go out from here.
		e := append([]expr.Any{
			&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: reg1}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.PACKET_HOST}},
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: reg1}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: proto}},
			destKey(six)...)
		e = append(e, &expr.Lookup{SourceRegister: reg8, SetName: m.Name, SetID: m.ID, DestRegister: 0, IsDestRegSet: true})
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: e})
	}
	n.dr = d
	return nil
}

// delDRTable removes the netdev table if the kernel has it.
func (n *NFT) delDRTable() {
	if _, err := n.conn.ListTableOfFamily(NFTDRTable, nftables.TableFamilyNetdev); err == nil {
		n.conn.DelTable(&nftables.Table{Name: NFTDRTable, Family: nftables.TableFamilyNetdev})
	}
}

func drChain(id int) string { return fmt.Sprintf("d%d", id) }

// addDRService builds a direct-routing service: its slot map, its chain
// and its dispatch element.
func (n *NFT) addDRService(s *nsvc) {
	c := n.conn
	t := n.dr.table
	s.slots = &nftables.Set{Table: t, Name: fmt.Sprintf("sl%d", s.id), IsMap: true,
		KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian, DataType: drHop}
	_ = c.AddSet(s.slots, nil)
	n.fillDRSlots(s)
	sc := c.AddChain(&nftables.Chain{Name: drChain(s.id), Table: t})
	n.drRules(s, sc)
	if n.refuseFor != nil && n.refuseFor(s.svc.Key) {
		c.AddRule(&nftables.Rule{Table: t, Chain: sc, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "refused"}}})
	}
	n.elements(n.dr.svc[s.svc.Is6()], []nftables.SetElement{{
		Key: dispatchKey(s.svc.Key), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: sc.Name}}}, true)
}

func (n *NFT) delDRService(s *nsvc) {
	c := n.conn
	t := n.dr.table
	_ = c.SetDeleteElements(n.dr.svc[s.svc.Is6()], []nftables.SetElement{{Key: dispatchKey(s.svc.Key)}})
	sc := &nftables.Chain{Name: drChain(s.id), Table: t}
	c.FlushChain(sc)
	c.DelChain(sc)
	c.DelSet(s.slots)
}

// drRules: hash the flow to a slot, give the frame the slot's MACs, send
// it out of the slot's interface; no slot (no server): drop.
func (n *NFT) drRules(s *nsvc, sc *nftables.Chain) {
	six := s.svc.Is6()
	alen, src, dst := uint32(4), uint32(12), uint32(16)
	if six {
		alen, src, dst = 16, 8, 24
	}
	reg := uint32(reg8)
	var e []expr.Any
	load := func(base expr.PayloadBase, off, l uint32) {
		e = append(e, &expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: l})
		reg += (l + 3) / 4
	}
	load(expr.PayloadBaseNetworkHeader, src, alen)
	switch {
	case s.svc.Scheduler == "mh":
		// The flow: both addresses and ports.
		load(expr.PayloadBaseTransportHeader, 0, 2)
		load(expr.PayloadBaseNetworkHeader, dst, alen)
		load(expr.PayloadBaseTransportHeader, 2, 2)
	case s.svc.Flags&FlagSched2 != 0:
		load(expr.PayloadBaseTransportHeader, 0, 2)
	}
	slot := uint32(unix.NFT_REG32_12)
	e = append(e,
		&expr.Hash{SourceRegister: reg8, DestRegister: slot, Length: (reg - reg8) * 4, Modulus: uint32(max(len(s.order), 1)),
			Seed: seed(s.svc.Key), Type: expr.HashTypeJenkins},
		// iface_index in register 0, the server's MAC in 1-2, the
		// interface's in 3-4.
		&expr.Lookup{SourceRegister: slot, SetName: s.slots.Name, SetID: s.slots.ID, DestRegister: reg8, IsDestRegSet: true},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: reg8 + 1, Base: expr.PayloadBaseLLHeader, Offset: 0, Len: 6},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: reg8 + 3, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Dup{RegDev: reg8, IsRegDevSet: true},
		&expr.Verdict{Kind: expr.VerdictDrop})
	if len(s.order) > 0 {
		n.conn.AddRule(&nftables.Rule{Table: n.dr.table, Chain: sc, Exprs: e})
	}
	n.conn.AddRule(&nftables.Rule{Table: n.dr.table, Chain: sc, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
}

// fillDRSlots programs the Maglev (or sh) table of the servers whose hop
// is known: only the slots whose server or hop changed are rewritten.
func (n *NFT) fillDRSlots(s *nsvc) {
	var reals []Real
	for _, r := range s.reals {
		if _, ok := n.hops[r.Addr.Addr()]; ok {
			reals = append(reals, r)
		}
	}
	order := slotOrder(s.svc.Scheduler, reals)
	hops := map[netip.AddrPort]Hop{}
	for _, a := range order {
		hops[a] = n.hops[a.Addr()]
	}
	var add, del []nftables.SetElement
	for i := range max(len(order), len(s.order)) {
		same := i < len(s.order) && i < len(order) && s.order[i] == order[i] && s.hops[order[i]].equal(hops[order[i]])
		if same {
			continue
		}
		key := binaryutil.NativeEndian.PutUint32(uint32(i))
		if i < len(s.order) {
			del = append(del, nftables.SetElement{Key: key})
		}
		if i < len(order) {
			add = append(add, nftables.SetElement{Key: key, Val: hops[order[i]].value()})
		}
	}
	if len(del) > 0 {
		n.elements(s.slots, del, false)
	}
	if len(add) > 0 {
		n.elements(s.slots, add, true)
	}
	s.order, s.hops = order, hops
}

// updateDRReals rewrites the slots, and the chain when their number
// changes (the hash's modulus).
func (n *NFT) updateDRReals(s *nsvc) {
	before := len(s.order)
	n.fillDRSlots(s)
	if len(s.order) != before {
		sc := &nftables.Chain{Name: drChain(s.id), Table: n.dr.table}
		n.conn.FlushChain(sc)
		n.drRules(s, sc)
	}
}

// resolveDR finds the hops of the direct-routing services' real servers
// and reports whether any changed; a server that cannot be resolved is
// logged when it first fails.
func (n *NFT) resolveDR() (changed bool) {
	var addrs []netip.Addr
	for _, s := range n.svcs {
		// isDR, not s.dr: Apply resolves before it builds the services.
		if isDR(s) {
			for _, r := range s.reals {
				addrs = append(addrs, r.Addr.Addr())
			}
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	if len(addrs) == 0 {
		n.hops, n.hopErrs = map[netip.Addr]Hop{}, map[netip.Addr]error{}
		return false
	}
	hops, errs := n.nb.hops(addrs)
	for a, err := range errs {
		if _, ok := n.hopErrs[a]; !ok {
			n.log.Warn("direct routing: a real server cannot be reached; it takes no flows until it can", "real_server", a, "error", err)
		}
	}
	changed = len(hops) != len(n.hops)
	for a, h := range hops {
		if old, ok := n.hops[a]; !ok || !old.equal(h) {
			changed = true
		}
	}
	n.hops, n.hopErrs = hops, errs
	return changed
}

// refreshDR, at each reading, follows the real servers' MACs (a server
// replaced, a neighbour entry that changed) and retries the servers not
// resolved yet, in a transaction of its own.
func (n *NFT) refreshDR() error {
	if n.dr == nil || !n.resolveDR() {
		return nil
	}
	var names []string
	for _, s := range n.svcs {
		if s.dr {
			n.updateDRReals(s)
			names = append(names, s.svc.Key.String())
		}
	}
	if err := n.conn.Flush(); err != nil {
		return n.abandon(fmt.Errorf("nftables: direct-routing neighbours: %w", err))
	}
	slices.Sort(names)
	n.log.Info("direct routing: real servers' MACs or interfaces changed; slots rewritten", "services", strings.Join(names, ", "))
	n.settle()
	return nil
}

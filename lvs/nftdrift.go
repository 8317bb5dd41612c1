package lvs

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Drift on nftables: nothing tells directord when someone edits its table
// (nft flush table inet directord, nft delete element ...), and its model
// would go on saying all is well. So the kernel is asked. Each commit to
// nftables in the namespace raises its generation; while it stays where
// directord's own last commit left it, nothing can have changed. When it
// moved, the table is read back (rules per chain, the sets, the elements
// of the dispatch maps) and compared with what was read right after
// directord's own last commit: any difference is drift, and the table is
// rebuilt from the model.

// fingerprint is what is compared: "chain NAME" -> rules, "set NAME" -> 1,
// and for a map (not a persistence set) "map NAME" -> its elements and
// "elements NAME" -> their digest's sum.
type fingerprint map[string]int

// digest is a map's elements, counted and summed (a hash each, so that the
// order they come in does not matter): an element pointed elsewhere by
// hand changes the sum though not the count.
type digest struct {
	n   int
	sum uint64
}

// add and sub count el (its key and value, or its verdict) in or out.
func (d *digest) add(el nftables.SetElement) {
	d.n, d.sum = d.n+1, d.sum+elementHash(el.Key, el.Val, el.VerdictData)
}
func (d *digest) sub(el nftables.SetElement) {
	d.n, d.sum = d.n-1, d.sum-elementHash(el.Key, el.Val, el.VerdictData)
}

// put records d under name in f.
func (d digest) put(f fingerprint, name string) {
	f["map "+name], f["elements "+name] = d.n, int(d.sum)
}

// elementHash is FNV-1a of an element's key, value and verdict, as the
// kernel lists them (a verdict by its code and chain).
func elementHash(key, val []byte, v *expr.Verdict) uint64 {
	h := uint64(14695981039346656037)
	add := func(b []byte) {
		for _, c := range b {
			h = (h ^ uint64(c)) * 1099511628211
		}
	}
	add(key)
	add([]byte{0xff})
	add(val)
	if v != nil {
		add(binary.BigEndian.AppendUint32(nil, uint32(v.Kind)))
		add([]byte(v.Chain))
	}
	return h
}

// diff describes how got differs from f, "" when it does not.
func (f fingerprint) diff(got fingerprint) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(f)) {
		if g, ok := got[k]; !ok {
			out = append(out, k+" missing")
		} else if name, ok := strings.CutPrefix(k, "elements "); ok && g != f[k] {
			out = append(out, "an element of "+name+" changed")
		} else if g != f[k] {
			out = append(out, fmt.Sprintf("%s: %d, want %d", k, g, f[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := f[k]; !ok {
			out = append(out, k+" added")
		}
	}
	if len(out) > 5 {
		out = append(out[:5], fmt.Sprintf("and %d more", len(out)-5))
	}
	return strings.Join(out, "; ")
}

// nfQuery sends one nfnetlink request, of type typ (subsystem << 8 |
// message) for family with the attributes ae (nil: none), and hands each
// answer's type and attributes (big-endian) to each.
func nfQuery(c *netlink.Conn, typ uint16, dump bool, family byte, ae *netlink.AttributeEncoder, each func(netlink.HeaderType, *netlink.AttributeDecoder)) error {
	var attrs []byte
	if ae != nil {
		var err error
		if attrs, err = ae.Encode(); err != nil {
			return err
		}
	}
	flags := netlink.Request
	if dump {
		flags |= netlink.Dump
	}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: flags},
		Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return err
		}
		ad.ByteOrder = binary.BigEndian
		each(m.Header.Type, ad)
		if err := ad.Err(); err != nil {
			return err
		}
	}
	return nil
}

// generation is the namespace's nftables ruleset generation.
func generation(c *netlink.Conn) (uint32, error) {
	gen, found := uint32(0), false
	err := nfQuery(c, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN, false, unix.AF_UNSPEC, nil, func(_ netlink.HeaderType, ad *netlink.AttributeDecoder) {
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				gen, found = ad.Uint32(), true
			}
		}
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("nftables generation: %w", err)
	case !found:
		return 0, fmt.Errorf("nftables generation: no id in the answer")
	}
	return gen, nil
}

// rulesPerChain counts the rules of each chain of the table in one dump;
// of chain alone if it is not "".
func rulesPerChain(c *netlink.Conn, family byte, table, chain string) (map[string]int, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_RULE_TABLE, table)
	if chain != "" {
		ae.String(unix.NFTA_RULE_CHAIN, chain)
	}
	out := map[string]int{}
	err := nfQuery(c, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETRULE, true, family, ae, func(_ netlink.HeaderType, ad *netlink.AttributeDecoder) {
		for ad.Next() {
			if ad.Type() == unix.NFTA_RULE_CHAIN {
				out[ad.String()]++
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("nftables rules: %w", err)
	}
	return out, nil
}

// elementDigest reads the elements of set in one dump, each only as far
// as its digest needs: the shared slot maps hold hundreds of thousands.
func elementDigest(c *netlink.Conn, family byte, table, set string) (digest, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	var d digest
	err := nfQuery(c, unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETSETELEM, true, family, ae, func(_ netlink.HeaderType, ad *netlink.AttributeDecoder) {
		for ad.Next() {
			if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			ad.Nested(func(els *netlink.AttributeDecoder) error {
				for els.Next() {
					els.Nested(func(el *netlink.AttributeDecoder) error {
						var key, val []byte
						var v *expr.Verdict
						for el.Next() {
							switch el.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								key, _ = elementData(el)
							case unix.NFTA_SET_ELEM_DATA:
								val, v = elementData(el)
							}
						}
						d.add(nftables.SetElement{Key: key, Val: val, VerdictData: v})
						return nil
					})
				}
				return nil
			})
		}
	})
	if err != nil {
		return digest{}, fmt.Errorf("nftables map %s: %w", set, err)
	}
	return d, nil
}

// elementData reads an element's key or data (the attribute ad is at): a
// value, or a verdict's code and chain.
func elementData(ad *netlink.AttributeDecoder) (b []byte, v *expr.Verdict) {
	ad.Nested(func(nad *netlink.AttributeDecoder) error {
		for nad.Next() {
			switch nad.Type() {
			case unix.NFTA_DATA_VALUE:
				b = nad.Bytes()
			case unix.NFTA_DATA_VERDICT:
				v = &expr.Verdict{}
				nad.Nested(func(vad *netlink.AttributeDecoder) error {
					for vad.Next() {
						switch vad.Type() {
						case unix.NFTA_VERDICT_CODE:
							v.Kind = expr.VerdictKind(int32(vad.Uint32()))
						case unix.NFTA_VERDICT_CHAIN:
							v.Chain = vad.String()
						}
					}
					return nil
				})
			}
		}
		return nil
	})
	return b, v
}

// readFingerprint reads the table's fingerprint back from the kernel.
// Dynamic sets (persistence, filled by packets) count by name only. The
// maps' digests are read from the kernel when slots, else taken from the
// model (reading half a million slots back took a third of a second
// after a full table).
func (n *NFT) readFingerprint(slots bool) (fingerprint, error) {
	f := fingerprint{}
	chains, err := n.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables chains: %w", err)
	}
	rules, err := rulesPerChain(n.gen, unix.NFPROTO_INET, NFTTable, "")
	if err != nil {
		return nil, err
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == NFTTable {
			f["chain "+c.Name] = rules[c.Name]
		}
	}
	sets, err := n.conn.GetSets(n.table)
	if err != nil {
		return nil, fmt.Errorf("nftables sets: %w", err)
	}
	for _, s := range sets {
		f["set "+s.Name] = 1
	}
	var model map[string]digest // the maps' elements, by name
	if !slots {
		model = n.modelDigests()
	}
	for _, s := range sets {
		if _, shared := n.maps[s.Name]; !shared && !slotMap(s.Name) {
			continue // dynamic (persistence)
		}
		d, ok := model[s.Name]
		if !ok {
			if d, err = elementDigest(n.gen, unix.NFPROTO_INET, NFTTable, s.Name); err != nil {
				return nil, err
			}
		}
		d.put(f, s.Name)
	}
	if n.dr != nil {
		if err := n.drFingerprint(f); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// modelDigests are the digests the model says the maps hold: the slot
// maps' kept as slots come and go; the dispatch maps' (each service's key
// to its chain) and the endpoint sets' (each endpoint in use) made anew.
func (n *NFT) modelDigests() map[string]digest {
	m := map[string]digest{}
	for name, sh := range n.shards {
		m[name] = sh.d
	}
	for name := range n.maps {
		m[name] = digest{}
	}
	for _, s := range n.svcs {
		if s.dr {
			continue // in the netdev table
		}
		if s.chains() {
			m[s.slots.Name] = s.ownDigest()
		}
		name := n.dispatchMap(s.svc.Key).Name
		d := m[name]
		d.add(nftables.SetElement{Key: dispatchKey(s.svc.Key), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: fmt.Sprintf("s%d", s.id)}})
		m[name] = d
	}
	for kind, refs := range n.refs {
		for k := range refs {
			name := kind + "4"
			if k.Addr.Addr().Is6() {
				name = kind + "6"
			}
			d := m[name]
			d.add(nftables.SetElement{Key: dispatchKey(k)})
			m[name] = d
		}
	}
	return m
}

// settle records, after a commit of directord's own, the generation and
// the table as they are now: what later readings are compared with.
func (n *NFT) settle() {
	n.baseline, n.seenGen = nil, 0
	gen, err := generation(n.gen)
	if err != nil {
		return // unverified: the next list reads it
	}
	f, err := n.readFingerprint(false)
	if err != nil {
		return
	}
	n.baseline, n.seenGen = f, gen
}

// settleChanged is settle after a commit of directord's own that changed
// only the services in old (their objects before it; nil: new) and no
// element of the shared maps: when the generation moved by exactly that
// commit from the one the baseline was read at, the baseline is mended
// for those services' chains and sets alone. Reading the whole table
// back took a quarter of a second with 10,000 services.
func (n *NFT) settleChanged(before uint32, old map[Key]*nsvc) error {
	gen, err := generation(n.gen)
	if err != nil || n.baseline == nil || before != n.seenGen || gen != before+1 {
		n.settle()
		return nil
	}
	f := n.baseline
	for k, o := range old {
		if o != nil {
			for _, name := range objectNames(o) {
				delete(f, name)
				if m, ok := strings.CutPrefix(name, "map "); ok {
					delete(f, "elements "+m)
				}
			}
		}
		s := n.svcs[k]
		if s == nil {
			continue
		}
		for _, name := range objectNames(s) {
			if m, ok := strings.CutPrefix(name, "map "); ok {
				s.ownDigest().put(f, m) // its own slot map's elements
				continue
			}
			chain, ok := strings.CutPrefix(name, "chain ")
			if !ok {
				f[name] = 1 // a set: by name
				continue
			}
			rules, err := rulesPerChain(n.gen, unix.NFPROTO_INET, NFTTable, chain)
			if err != nil {
				n.settle()
				return nil
			}
			f[name] = rules[chain]
		}
	}
	// The shared slot maps' elements, as the model counts them: this
	// commit changed some; the check below and every drift read count
	// the kernel's.
	for name, sh := range n.shards {
		sh.d.put(f, name)
	}
	n.seenGen = gen
	if n.checkBaseline {
		whole, err := n.readFingerprint(true)
		if err != nil {
			return err
		}
		if d := f.diff(whole); d != "" {
			return fmt.Errorf("nftables: the baseline mended after a commit differs from the table read whole: %s", d)
		}
	}
	return nil
}

// slotMap says whether the set named name holds slots: shared (slots4_0)
// or a service's own (sl12).
func slotMap(name string) bool { return strings.HasPrefix(name, "sl") }

// objectNames are the fingerprint's names of a service's own chains and
// sets (not a direct-routing one's: those are in the netdev table); its
// own slot map also under "map ", for its elements (and their digest,
// under "elements ").
func objectNames(s *nsvc) []string {
	names := []string{fmt.Sprintf("chain s%d", s.id)}
	if s.slots != nil && s.chains() { // not a shared one
		names = append(names, "set "+s.slots.Name, "map "+s.slots.Name)
	}
	if s.chains() {
		for _, k := range s.idx {
			names = append(names, "chain "+realChain(s.id, k))
		}
	}
	for _, ps := range s.pers {
		names = append(names, "set "+ps.Name)
	}
	return names
}

// drifted compares the kernel's table with the baseline when the
// generation moved; it returns what differs ("" when nothing does, or
// when it cannot tell).
func (n *NFT) drifted() string {
	if !n.base {
		return ""
	}
	gen, err := generation(n.gen)
	if err != nil || (gen == n.seenGen && n.baseline != nil) {
		return ""
	}
	f, err := n.readFingerprint(true)
	if err != nil {
		return ""
	}
	if n.baseline == nil { // the settle after the last commit failed
		n.baseline, n.seenGen = f, gen
		return ""
	}
	d := n.baseline.diff(f)
	n.seenGen = gen
	return d
}

// drFingerprint adds the netdev table of direct routing: its chains'
// rules, its sets and the digests of its maps, under "dr ".
func (n *NFT) drFingerprint(f fingerprint) error {
	chains, err := n.conn.ListChainsOfTableFamily(nftables.TableFamilyNetdev)
	if err != nil {
		return fmt.Errorf("nftables chains: %w", err)
	}
	rules, err := rulesPerChain(n.gen, unix.NFPROTO_NETDEV, NFTDRTable, "")
	if err != nil {
		return err
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == NFTDRTable {
			f["dr chain "+c.Name] = rules[c.Name]
		}
	}
	sets, err := n.conn.GetSets(n.dr.table)
	if err != nil {
		return fmt.Errorf("nftables sets: %w", err)
	}
	for _, s := range sets {
		d, err := elementDigest(n.gen, unix.NFPROTO_NETDEV, NFTDRTable, s.Name)
		if err != nil {
			return err
		}
		d.put(f, "dr "+s.Name)
	}
	return nil
}

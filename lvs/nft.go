package lvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NFTTable is the nftables table directord owns (family inet). Everything
// in it is directord's: it is deleted and rebuilt at start.
const NFTTable = "directord"

// MaxSlots bounds the slots of one service's scheduling map; weights whose
// reduced sum is larger are scaled down to it.
const MaxSlots = 1024

// SlotsScaled says whether a wrr service's weights, divided by their
// greatest common divisor, add up to more than MaxSlots, so that the
// nftables data plane schedules by scaled weights, not the exact ratio.
func SlotsScaled(sched string, reals []Real) bool {
	if sched != "wrr" {
		return false
	}
	_, sum := reducedWeights(slices.DeleteFunc(slices.Clone(reals), func(r Real) bool { return r.Weight <= 0 }))
	return sum > MaxSlots
}

// reducedWeights are the weights of rs (each positive) divided by their
// greatest common divisor, and their sum.
func reducedWeights(rs []Real) (w []int, sum int) {
	g := 0
	for _, r := range rs {
		g = gcd(g, r.Weight)
	}
	w = make([]int, len(rs))
	for i, r := range rs {
		w[i] = r.Weight / g
		sum += w[i]
	}
	return w, sum
}

// SHBuckets is the slot count of an sh service: IPVS's source-hash table
// size, constant so that a change to one server moves only its clients.
const SHBuckets = 256

// shBuckets lays the servers over SHBuckets slots as IPVS's sh does: in
// address order, each taking as many consecutive buckets as its weight
// (at least one), round and round. A server at weight 0 keeps its place
// in the layout, so that draining it moves only its own clients; its
// buckets go, as with IPVS's sh-fallback, to the next bucket's server
// that has a weight. Both directors lay out the same table.
func shBuckets(reals []Real) []netip.AddrPort {
	rs := slices.Clone(reals)
	slices.SortFunc(rs, func(a, b Real) int { return a.Addr.Compare(b.Addr) })
	if !slices.ContainsFunc(rs, func(r Real) bool { return r.Weight > 0 }) {
		return nil
	}
	out := make([]netip.AddrPort, SHBuckets)
	live := make([]bool, SHBuckets)
	i, n := 0, 0
	for b := range out {
		out[b], live[b] = rs[i].Addr, rs[i].Weight > 0
		if n++; n >= max(rs[i].Weight, 1) {
			i, n = (i+1)%len(rs), 0
		}
	}
	if !slices.Contains(live, true) {
		return nil // every server with a weight is beyond the table
	}
	for b := range out {
		for k := 1; !live[b]; k++ {
			if next := (b + k) % SHBuckets; live[next] {
				out[b] = out[next]
				break
			}
		}
	}
	return out
}

// sockBuffer is the nftables socket's send and receive buffer.
const sockBuffer = 64 << 20

// NFT is the nftables data plane. A service is a chain reached through a
// verdict map keyed by address, protocol and port (or mark), whose element
// counts the service's connections. The chain picks a slot with numgen
// (rr, wrr) or jhash of the source (sh); weights are the number of slots.
//
// Without persistence a slot map takes the service's daddr . l4proto .
// dport and a slot to a real server's address and port, which the same
// rule DNATs to: two rules and one element per slot for a service. The
// map is shared by up to 64 services (slots4_0, slots4_1, ...): the kernel
// finds a table's sets by walking a list of them, so 10,000 maps of the
// services' own made a full table's load grow with the square of the
// table; one map for all would instead be walked whole each time a rule of
// another chain binds it (so its elements are added after every rule of
// the transaction). Every kernel object costs time in the nftables
// commit, counters most (per-CPU memory). So connections are counted once
// per real-server endpoint, not per slot: the postrouting chain, which
// sees the first packet of each connection, looks the DNAT'd destination
// up in conns4/conns6, whose elements count (like in and out, an endpoint
// shared by two services counts for both).
//
// With persistence the slot map is a verdict map to a chain per real
// server, which DNATs and refreshes the client in the server's timed set
// of clients: the service chain looks a client up in those sets before
// scheduling, so persistence lasts the timeout after the last connection.
// (A single client-to-server map would need a lookup feeding a dynset or
// conntrack's original address in an inet table; nft 1.0 cannot list
// either, and the table must stay readable with nft list ruleset.)
// Firewall-mark services take the same path: their real servers may keep
// the packet's port (port 0), which a slot's address and port cannot say,
// and which has no endpoint to count by, so such a server's chain counts
// with a counter of its own.
type NFT struct {
	mu     sync.Mutex
	conn   *nftables.Conn
	table  *nftables.Table
	svcs   map[Key]*nsvc
	nextID int
	base   bool
	maps   map[string]*nftables.Set
	nl     *vnl.Handle // conntrack, in the same namespace
	// refs counts, per endpoint set ("masq", "in", "out", "conns"), the services
	// using each real-server endpoint (protocol, address, port); an
	// element is in the set while its count is positive. touched holds
	// the counts at the start of the Apply, for the elements to change.
	refs    map[string]map[Key]int
	touched map[string]map[Key]int
	// sharedAdd holds the elements this Apply adds to maps many services
	// share (dispatch, slots): sent after every rule, since the kernel
	// walks a map's elements each time a rule binds it.
	// Kept in the services' pieces, put together once: a slot map's
	// elements grown one service at a time were copied over and over.
	sharedAdd map[*nftables.Set][][]nftables.SetElement
	// shards are the slot maps services without chains share, by name;
	// those of a family numbered below roomy[IPv6] are full.
	shards map[string]*shard
	roomy  map[bool]int
	rates  rates
	// gen reads the ruleset generation and the rules (nftdrift.go).
	// baseline is the table as read after directord's last commit, at
	// generation seenGen; repairs wait for TakeRepairs.
	gen           *netlink.Conn
	baseline      fingerprint
	seenGen       uint32
	repairs       []Repair
	refuseFor     func(Key) bool         // NFTOptions.Refuse
	checkBaseline bool                   // NFTOptions.CheckBaseline
	timeouts      Timeouts               // SetTimeouts
	dumps         map[bool]conntrackDump // Conns's, by family (true: IPv6)
	// zeroed is the counters as read at the last Zero: Linux before
	// 6.5 cannot reset a set element's counter, so readings are shown
	// less these. An element deleted forgets its part: back, it counts
	// from zero.
	zeroed *counts
	// listed is the services in List's order, pos their places in it,
	// plain List's answer (without counters; its real servers shared
	// with every answer, which no caller changes): nil once services come
	// or go. dirty are the services changed since plain was made.
	listed []*nsvc
	pos    map[Key]int
	plain  []Entry
	dirty  map[Key]bool
	// Direct routing (nftdr.go): the interface facing the router, the
	// netdev table once made, and the real servers' hops.
	drIface string
	dr      *drObjects
	nb      neighbours
	hops    map[netip.Addr]Hop
	hopErrs map[netip.Addr]error
	log     *slog.Logger
}

type nsvc struct {
	id     int
	svc    Service
	reals  []Real
	idx    map[netip.AddrPort]int // real server -> chain number (persistence)
	nextRS int
	// order is the servers in the slots as programmed (slot i holds
	// order[i]).
	order []netip.AddrPort
	slots *nftables.Set
	// pers holds each real server's persistent clients (persistence on).
	pers map[netip.AddrPort]*nftables.Set
	// dr: a direct-routing service, in the netdev table; hops are its
	// slots' servers' hops as programmed.
	dr   bool
	hops map[netip.AddrPort]Hop
	// shape is what of the real servers the service's rules show, as
	// programmed (ruleShape).
	shape string
}

// ownSlot is slot i, to real server a, in the slot map of service s's own
// (services with chains): a goto to the server's chain.
func ownSlot(s *nsvc, i int, a netip.AddrPort) nftables.SetElement {
	return nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)),
		VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: realChain(s.id, s.idx[a])}}
}

// ownDigest is the digest of the slot map of s's own, as programmed.
func (s *nsvc) ownDigest() digest {
	var d digest
	for i, a := range s.order {
		d.add(ownSlot(s, i, a))
	}
	return d
}

// ruleShape is what serviceRules takes from the real servers: the slot
// count and the persistent servers taking clients. Rules of the same
// shape are the same rules.
func (s *nsvc) ruleShape() string {
	var b strings.Builder
	fmt.Fprint(&b, len(s.order))
	for _, r := range sortedReals(s.reals) {
		if s.pers[r.Addr] != nil && r.Weight > 0 {
			fmt.Fprintf(&b, " %d", s.idx[r.Addr])
		}
	}
	return b.String()
}

// chains says whether the service has a chain per real server
// (persistence, firewall marks); otherwise its slots DNAT directly.
func (s *nsvc) chains() bool { return s.svc.Persistence > 0 || s.svc.FWMark != 0 }

var _ Dataplane = (*NFT)(nil)

// NFTOptions configure the nftables data plane.
type NFTOptions struct {
	// NetNS is an open network-namespace file to work in (tests); 0 is
	// the daemon's own namespace.
	NetNS int
	// Refuse, for tests, makes the kernel refuse every transaction that
	// builds a service it names (its chain jumps to a chain that does not
	// exist): a refusal by the kernel itself, on demand.
	Refuse func(Key) bool
	// CheckBaseline, for tests, reads the whole table back after each
	// commit that mended the drift baseline piecewise, and fails the
	// Apply when the two differ.
	CheckBaseline bool
	// DRInterface is the interface facing the router, whose ingress
	// takes the packets of direct-routing services.
	DRInterface string
	// Log is for what the data plane finds on its own (real servers it
	// cannot reach by direct routing); nil: discarded.
	Log *slog.Logger
}

// NewNFT opens the nftables data plane and removes any table a previous
// run left: the reconciler rebuilds it from the configuration.
func NewNFT(o NFTOptions) (*NFT, error) {
	// A whole table goes to the kernel in one transaction, which must fit
	// the socket's send buffer: 1,000 services with 10 servers each is
	// several megabytes. As root the buffer may exceed wmem_max (nft
	// does the same).
	opts := []nftables.ConnOption{nftables.WithSockOptions(func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr, rerr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuffer)
			// The kernel acknowledges every message of the batch.
			rerr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuffer)
		}); err != nil {
			return err
		}
		if serr != nil {
			_ = c.SetWriteBuffer(sockBuffer)
		}
		if rerr != nil {
			_ = c.SetReadBuffer(sockBuffer)
		}
		return nil
	})}
	if o.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(o.NetNS))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	var h *vnl.Handle
	if o.NetNS != 0 {
		h, err = vnl.NewHandleAt(netns.NsHandle(o.NetNS))
	} else {
		h, err = vnl.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	n := &NFT{conn: c, nl: h, table: &nftables.Table{Name: NFTTable, Family: nftables.TableFamilyINet}, rates: rates{now: time.Now}, refuseFor: o.Refuse, checkBaseline: o.CheckBaseline, dumps: map[bool]conntrackDump{},
		drIface: o.DRInterface, nb: neighbours{h: h, wait: time.Second}, hops: map[netip.Addr]Hop{}, hopErrs: map[netip.Addr]error{}, log: o.Log}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	n.reset()
	if n.gen, err = netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: o.NetNS}); err != nil {
		h.Close()
		return nil, fmt.Errorf("nftables: %w", err)
	}
	// What a previous run left.
	n.delDRTable()
	if _, err := c.ListTableOfFamily(NFTTable, nftables.TableFamilyINet); err == nil {
		c.DelTable(n.table)
	}
	if err := c.Flush(); err != nil {
		h.Close()
		return nil, fmt.Errorf("nftables: remove old tables %s: %w", NFTTable, err)
	}
	return n, nil
}

func (n *NFT) reset() {
	n.svcs = map[Key]*nsvc{}
	n.refs = map[string]map[Key]int{"masq": {}, "in": {}, "out": {}, "conns": {}}
	n.touched = map[string]map[Key]int{"masq": {}, "in": {}, "out": {}, "conns": {}}
	n.sharedAdd = map[*nftables.Set][][]nftables.SetElement{}
	n.base = false
	n.maps = map[string]*nftables.Set{}
	n.shards, n.roomy = map[string]*shard{}, map[bool]int{}
	n.baseline, n.seenGen = nil, 0
	n.dr = nil
	n.zeroed = nil
	n.listed, n.plain = nil, nil
	clear(n.dirty)
}

func (n *NFT) Name() string { return "nftables" }

func (n *NFT) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.conn.DelTable(n.table)
	n.delDRTable()
	err := n.conn.Flush()
	n.reset()
	n.nl.Close()
	n.gen.Close()
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("nftables: remove table: %w", err)
	}
	return nil
}

// Capabilities is the nftables data plane's table.
func (n *NFT) Capabilities() Capabilities { return NFTCapabilities }

// List returns the services as programmed, without counters: reading
// thousands of counters is the dearest part of a reconcile that has
// nothing to do. ListStats adds them.
func (n *NFT) List() ([]Entry, error) { return n.list(false) }

// ListStats is List with the counters the kernel keeps: connections per
// service and real server, packets and bytes per real-server endpoint
// (a server shared by two services counts for both), and rates averaged
// since the previous reading.
func (n *NFT) ListStats() ([]Entry, error) { return n.list(true) }

func (n *NFT) list(stats bool) ([]Entry, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, err := n.conn.ListTableOfFamily(NFTTable, nftables.TableFamilyINet); err != nil {
		// The table is gone (nft flush ruleset, or never made):
		// everything must be added again.
		if n.base {
			n.repairs = append(n.repairs, Repair{Kind: "table", Found: "table inet " + NFTTable + " deleted"})
		}
		n.reset()
		return nil, nil
	}
	if d := n.drifted(); d != "" {
		// Edited behind directord's back: the model no longer says what
		// the kernel does. Start again from an empty table, which this
		// same reconcile fills again.
		n.repairs = append(n.repairs, Repair{Kind: "table", Found: d})
		n.conn.DelTable(n.table)
		n.delDRTable()
		if err := n.conn.Flush(); err != nil {
			return nil, fmt.Errorf("nftables: remove the edited table: %w", err)
		}
		n.reset()
		return nil, nil
	}
	if n.dr != nil {
		if _, err := n.conn.ListTableOfFamily(NFTDRTable, nftables.TableFamilyNetdev); err != nil {
			n.repairs = append(n.repairs, Repair{Kind: "table", Found: "table netdev " + NFTDRTable + " deleted"})
			return nil, n.abandon(nil)
		}
		if err := n.refreshDR(); err != nil {
			return nil, err
		}
	}
	if n.listed == nil {
		n.listed, n.plain = sortedServices(n.svcs), nil
		n.pos = make(map[Key]int, len(n.listed))
		for i, s := range n.listed {
			n.pos[s.svc.Key] = i
		}
	}
	if !stats && n.plain != nil {
		for k := range n.dirty {
			if i, ok := n.pos[k]; ok {
				n.plain[i] = n.entry(n.listed[i], nil, nil, false)
			}
		}
		clear(n.dirty)
		return slices.Clone(n.plain), nil
	}
	var c *counts
	if stats && len(n.svcs) > 0 {
		var err error
		if c, err = n.readCounts(); err != nil {
			return nil, err
		}
		c.less(n.zeroed)
	}
	traffic := map[string]*expr.Counter{} // "in"/"out" + endpoint key
	if c != nil {
		traffic = c.traffic
	}
	out := make([]Entry, 0, len(n.svcs))
	for _, s := range n.listed {
		out = append(out, n.entry(s, c, traffic, stats))
	}
	if stats {
		n.rates.done()
	} else {
		n.plain = out
		clear(n.dirty)
		out = slices.Clone(out)
	}
	return out, nil
}

// entry is service s as List answers, with counters c (nil: none) and
// rates when stats.
func (n *NFT) entry(s *nsvc, c *counts, traffic map[string]*expr.Counter, stats bool) Entry {
	e := Entry{Service: s.svc}
	if c != nil {
		e.Stats.Connections = c.service[string(dispatchKey(s.svc.Key))]
	}
	if dr := traffic["dr"+string(dispatchKey(s.svc.Key))]; s.dr && dr != nil {
		// Stateless: packets towards the servers, counted per
		// service only (no connections, no replies: they do not
		// cross the director).
		e.Stats.PacketsIn, e.Stats.BytesIn = dr.Packets, dr.Bytes
	}
	e.Reals = make([]RealState, 0, len(s.reals))
	for _, r := range s.reals {
		var st Stats
		if c != nil {
			st.Connections = c.real(s, r.Addr)
			k := string(dispatchKey(Key{Protocol: s.svc.Protocol, Addr: r.Addr}))
			if c := traffic["in"+k]; c != nil {
				st.PacketsIn, st.BytesIn = c.Packets, c.Bytes
			}
			if c := traffic["out"+k]; c != nil {
				st.PacketsOut, st.BytesOut = c.Packets, c.Bytes
			}
		}
		e.Stats.PacketsIn += st.PacketsIn
		e.Stats.BytesIn += st.BytesIn
		e.Stats.PacketsOut += st.PacketsOut
		e.Stats.BytesOut += st.BytesOut
		if stats {
			n.rates.fill(s.svc.Key.String()+" "+r.Addr.String(), &st)
		}
		e.Reals = append(e.Reals, RealState{Real: r, Stats: st})
	}
	sortReals(e.Reals)
	if stats {
		n.rates.fill(s.svc.Key.String(), &e.Stats)
	}
	return e
}

// sortedServices is svcs in Sort's order: kept between changes, as
// sorting 10,000 services was a fifth of a reconcile with nothing to do.
func sortedServices(svcs map[Key]*nsvc) []*nsvc {
	out := slices.Collect(maps.Values(svcs))
	sortByKey(out, func(s *nsvc) Key { return s.svc.Key })
	return out
}

// counts are the kernel's counters of one reading.
type counts struct {
	service map[string]uint64        // dispatch key -> connections
	conns   map[string]uint64        // endpoint key -> connections
	objects map[string]uint64        // counter objects (servers keeping the port)
	traffic map[string]*expr.Counter // "in"/"out" + endpoint key
}

// real is the connections a service's real server has had (through any
// service).
func (c *counts) real(s *nsvc, a netip.AddrPort) uint64 {
	if a.Port() == 0 {
		return c.objects[realCounter(s.id, s.idx[a])]
	}
	return c.conns[string(dispatchKey(Key{Protocol: s.svc.Protocol, Addr: a}))]
}

// less takes the counters of base (the reading at Zero) from c's.
func (c *counts) less(base *counts) {
	if base == nil {
		return
	}
	for _, m := range []struct{ cur, base map[string]uint64 }{{c.service, base.service}, {c.conns, base.conns}, {c.objects, base.objects}} {
		for k, v := range m.cur {
			if b := m.base[k]; b <= v {
				m.cur[k] = v - b
			}
		}
	}
	for k, v := range c.traffic {
		if b := base.traffic[k]; b != nil && b.Packets <= v.Packets && b.Bytes <= v.Bytes {
			c.traffic[k] = &expr.Counter{Packets: v.Packets - b.Packets, Bytes: v.Bytes - b.Bytes}
		}
	}
}

// forget drops the base of an element deleted: "service" (a dispatch
// element, and a direct-routing service's counter), "conns", "in" or
// "out" (an endpoint's).
func (c *counts) forget(kind, key string) {
	if c == nil {
		return
	}
	switch kind {
	case "service":
		delete(c.service, key)
		delete(c.traffic, "dr"+key)
	case "conns":
		delete(c.conns, key)
	case "in", "out":
		delete(c.traffic, kind+key)
	}
}

// Zero sets the counters to zero, as ipvsadm -Z, as directord reads them
// (the kernel's own go on: nft list shows them whole).
func (n *NFT) Zero() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.svcs) == 0 {
		n.zeroed = nil
		return nil
	}
	c, err := n.readCounts()
	if err != nil {
		return err
	}
	n.zeroed = c
	return nil
}

func realCounter(id, k int) string { return fmt.Sprintf("c%d_%d", id, k) }

// readCounts reads every counter of the table: a few dumps, whatever the
// number of services.
func (n *NFT) readCounts() (*counts, error) {
	c := &counts{service: map[string]uint64{}, conns: map[string]uint64{}, objects: map[string]uint64{}, traffic: map[string]*expr.Counter{}}
	fwmark := false
	for _, s := range n.svcs {
		fwmark = fwmark || s.svc.FWMark != 0
	}
	if fwmark {
		objs, err := n.conn.GetObjects(n.table)
		if err != nil {
			return nil, fmt.Errorf("nftables: read counters: %w", err)
		}
		for _, o := range objs {
			if co, ok := o.(*nftables.CounterObj); ok {
				c.objects[co.Name] = co.Packets
			}
		}
	}
	for _, name := range []string{"svc4", "svc6", "fwm4", "fwm6", "conns4", "conns6", "in4", "in6", "out4", "out6"} {
		els, err := n.conn.GetSetElements(n.maps[name])
		if err != nil {
			return nil, fmt.Errorf("nftables: read %s: %w", name, err)
		}
		for _, el := range els {
			switch {
			case el.Counter == nil:
			case strings.HasPrefix(name, "svc") || strings.HasPrefix(name, "fwm"):
				c.service[string(el.Key)] = el.Counter.Packets
			case strings.HasPrefix(name, "conns"):
				c.conns[string(el.Key)] = el.Counter.Packets
			default:
				c.traffic[name[:len(name)-1]+string(el.Key)] = el.Counter
			}
		}
	}
	if n.dr != nil {
		for _, m := range n.dr.svc {
			els, err := n.conn.GetSetElements(m)
			if err != nil {
				return nil, fmt.Errorf("nftables: read %s: %w", m.Name, err)
			}
			for _, el := range els {
				if el.Counter != nil {
					c.traffic["dr"+string(el.Key)] = el.Counter
				}
			}
		}
	}
	return c, nil
}

// rates turns counters into per-second rates: the average since the
// previous reading at least a second before (IPVS's kernel estimator
// averages over about two seconds; nftables has none).
type rates struct {
	now  func() time.Time
	prev map[string]rateSample // the reading rates are computed against
	cur  map[string]rateSample // this reading
	last map[string]Stats      // rates shown until prev is old enough
}

type rateSample struct {
	at time.Time
	s  Stats
}

func (r *rates) fill(key string, s *Stats) {
	if r.cur == nil {
		r.cur = map[string]rateSample{}
	}
	now := r.now()
	r.cur[key] = rateSample{now, *s}
	p, ok := r.prev[key]
	dt := now.Sub(p.at).Seconds()
	if !ok || dt < 1 {
		l := r.last[key]
		s.CPS, s.PPSIn, s.PPSOut, s.BPSIn, s.BPSOut = l.CPS, l.PPSIn, l.PPSOut, l.BPSIn, l.BPSOut
		return
	}
	per := func(a, b uint64) uint64 {
		if a < b {
			return 0
		}
		return uint64(float64(a-b) / dt)
	}
	s.CPS = per(s.Connections, p.s.Connections)
	s.PPSIn, s.PPSOut = per(s.PacketsIn, p.s.PacketsIn), per(s.PacketsOut, p.s.PacketsOut)
	s.BPSIn, s.BPSOut = per(s.BytesIn, p.s.BytesIn), per(s.BytesOut, p.s.BytesOut)
	if r.last == nil {
		r.last = map[string]Stats{}
	}
	r.last[key] = *s
}

// done ends a reading: it becomes the base of the next rates once it is a
// second old.
func (r *rates) done() {
	for k, c := range r.cur {
		if p, ok := r.prev[k]; !ok || c.at.Sub(p.at) >= time.Second {
			if r.prev == nil {
				r.prev = map[string]rateSample{}
			}
			r.prev[k] = c
		}
	}
	r.cur = nil
}

// Apply carries out ops in one nftables transaction. A refused one (by
// the model's checks or by the kernel) changes nothing: the kernel's
// table and the model stay as they were, so that the reconciler can
// program the other services without this one.
func (n *NFT) Apply(ops []Op) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(ops) == 0 {
		return nil
	}
	for _, op := range ops {
		if op.Kind == AddService || op.Kind == DelService {
			n.listed = nil
			break
		}
		if n.dirty == nil {
			n.dirty = map[Key]bool{}
		}
		n.dirty[op.Service.Key] = true
	}
	if !n.base {
		n.addBase()
		if err := n.conn.Flush(); err != nil {
			n.reset()
			return fmt.Errorf("nftables: create table %s: %w", NFTTable, err)
		}
	}
	saved := &undo{svcs: map[Key]*nsvc{}, nextID: n.nextID, dr: n.dr, shards: make(map[string]shard, len(n.shards))}
	for name, sh := range n.shards {
		saved.shards[name] = *sh
	}
	type change struct {
		old   *nsvc // the kernel's objects to remove, if any
		new   bool  // create from scratch
		reals bool  // real servers changed
	}
	changes := map[Key]*change{}
	var order []Key
	ch := func(k Key) *change {
		c, ok := changes[k]
		if !ok {
			c = &change{}
			changes[k] = c
			order = append(order, k)
		}
		return c
	}
	for _, op := range ops {
		k := op.Service.Key
		saved.keep(n, k)
		s, ok := n.svcs[k]
		c := ch(k)
		switch op.Kind {
		case AddService:
			if ok {
				return n.refuse(saved, fmt.Errorf("%s: service exists", op))
			}
			if err := NFTCapabilities.Check(op.Service, nil); err != nil {
				return n.refuse(saved, fmt.Errorf("%s: %w", op, err))
			}
			n.svcs[k] = &nsvc{svc: op.Service, idx: map[netip.AddrPort]int{}}
			c.new = true
		case UpdateService:
			if !ok {
				return n.refuse(saved, fmt.Errorf("%s: no such service", op))
			}
			if err := NFTCapabilities.Check(op.Service, nil); err != nil {
				return n.refuse(saved, fmt.Errorf("%s: %w", op, err))
			}
			// A changed scheduler or persistence rebuilds the service
			// under a new number, in the same transaction.
			if !c.new && c.old == nil {
				old := *s
				c.old = &old
			}
			s.svc = op.Service
			c.new = true
		case DelService:
			if !ok {
				return n.refuse(saved, fmt.Errorf("%s: no such service", op))
			}
			if !c.new && c.old == nil {
				c.old = s
			}
			c.new = false
			delete(n.svcs, k)
		case AddReal, UpdateReal, DelReal:
			if !ok {
				return n.refuse(saved, fmt.Errorf("%s: no such service", op))
			}
			i := slices.IndexFunc(s.reals, func(r Real) bool { return r.Addr == op.Real.Addr })
			switch {
			case op.Kind == AddReal && i >= 0:
				return n.refuse(saved, fmt.Errorf("%s: real server exists", op))
			case op.Kind != AddReal && i < 0:
				return n.refuse(saved, fmt.Errorf("%s: no such real server", op))
			}
			if err := NFTCapabilities.Check(s.svc, []Real{op.Real}); err != nil && op.Kind != DelReal {
				return n.refuse(saved, fmt.Errorf("%s: %w", op, err))
			}
			switch op.Kind {
			case AddReal:
				s.reals = append(s.reals, op.Real)
			case UpdateReal:
				s.reals[i] = op.Real
			case DelReal:
				s.reals = slices.Delete(s.reals, i, i+1)
			}
			c.reals = true
		}
	}
	// shared: elements of the maps all services share change (a
	// weight does not change any).
	shared := slices.ContainsFunc(ops, func(op Op) bool { return op.Kind != UpdateReal })
	drNow := false
	for _, k := range order {
		if s, ok := n.svcs[k]; ok && len(s.reals) > 0 {
			if i := slices.IndexFunc(s.reals, func(r Real) bool { return (r.Method == DR) != (s.reals[0].Method == DR) }); i > 0 {
				return n.refuse(saved, fmt.Errorf("%s: real servers %s (%s) and %s (%s): the nftables data plane does not mix direct routing with NAT in one service",
					k, s.reals[0].Addr, s.reals[0].Method, s.reals[i].Addr, s.reals[i].Method))
			}
			drNow = drNow || isDR(s)
		}
	}
	if drNow {
		if n.dr == nil {
			if err := n.addDRBase(); err != nil {
				return n.refuse(saved, err)
			}
		}
		n.resolveDR()
	}
	for _, k := range order {
		c := changes[k]
		if c.old != nil {
			n.delService(c.old)
		}
		s, ok := n.svcs[k]
		switch {
		case !ok:
		case c.new:
			n.addService(s)
		case c.reals:
			n.updateReals(s)
		}
	}
	n.dropEmptyShards()
	n.flushRefs()
	gen, genErr := generation(n.gen)
	if err := n.conn.Flush(); err != nil {
		err = fmt.Errorf("nftables transaction: %w", err)
		// The kernel carries out a batch whole or not at all; an
		// unchanged generation says it did not. Otherwise (or unknown)
		// the model may be wrong: start again from an empty table.
		if now, err2 := generation(n.gen); genErr == nil && err2 == nil && now == gen {
			return n.refuse(saved, err)
		}
		return n.abandon(err)
	}
	n.committed()
	if genErr != nil || shared || drNow || saved.dr != nil {
		n.settle()
		return nil
	}
	return n.settleChanged(gen, saved.svcs)
}

// TakeRepairs returns the drift undone since the last call.
func (n *NFT) TakeRepairs() []Repair {
	n.mu.Lock()
	defer n.mu.Unlock()
	r := n.repairs
	n.repairs = nil
	return r
}

// undo is what an Apply changed of the data plane's picture of the
// kernel, to put back when the transaction is refused: each service it
// touched as it was (nil: absent), and the next service number. The
// endpoint counts' earlier values are in touched.
type undo struct {
	svcs   map[Key]*nsvc
	nextID int
	dr     *drObjects // nil: the netdev table is not there (yet)
	shards map[string]shard
}

// keep records service k as it is, before its first change of the Apply.
func (u *undo) keep(n *NFT, k Key) {
	if _, ok := u.svcs[k]; ok {
		return
	}
	s, ok := n.svcs[k]
	if !ok {
		u.svcs[k] = nil
		return
	}
	c := *s
	c.reals, c.order = slices.Clone(s.reals), slices.Clone(s.order)
	c.idx, c.pers, c.hops = maps.Clone(s.idx), maps.Clone(s.pers), maps.Clone(s.hops)
	u.svcs[k] = &c
}

// refuse is the way out of an Apply the kernel did not carry out: the
// model goes back to what it was before, as the kernel's table is.
func (n *NFT) refuse(u *undo, err error) error {
	for k, s := range u.svcs {
		if s == nil {
			delete(n.svcs, k)
		} else {
			n.svcs[k] = s
		}
	}
	n.nextID = u.nextID
	n.dr = u.dr
	n.shards, n.roomy = make(map[string]*shard, len(u.shards)), map[bool]int{}
	for name, sh := range u.shards {
		n.shards[name] = &sh
	}
	for kind, ks := range n.touched {
		for k, before := range ks {
			if before == 0 {
				delete(n.refs[kind], k)
			} else {
				n.refs[kind][k] = before
			}
		}
		n.touched[kind] = map[Key]int{}
	}
	n.sharedAdd = map[*nftables.Set][][]nftables.SetElement{}
	n.listed = nil // the services are the undo's copies
	return err
}

// abandon is the way out of an Apply that failed in a way that leaves the
// kernel's table unknown: the model may no longer match the kernel, so
// both start again from an empty table, which the next reconcile fills.
func (n *NFT) abandon(err error) error {
	n.conn.DelTable(n.table)
	n.delDRTable()
	_ = n.conn.Flush()
	n.reset()
	return err
}

func realChain(id, k int) string { return fmt.Sprintf("r%d_%d", id, k) }

// Registers: the legacy 16-byte register 1 holds addresses and
// concatenated map data, the 4-byte registers from 8 on hold keys.
const (
	reg1  = unix.NFT_REG_1
	reg2  = unix.NFT_REG_2
	reg8  = unix.NFT_REG32_00
	reg16 = unix.NFT_REG32_08
)

var (
	dispatch4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	dispatch6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	endpoint4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	endpoint6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
	slots4    = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
	slots6    = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark)
)

// slotElement is slot k holding the server a (address and port).
// slotElement is slot i of a service, to real server a, in a shared slot
// map: keyed by the service's dispatch key dk and the slot.
func slotElement(dk []byte, i int, a netip.AddrPort) nftables.SetElement {
	// One allocation for the key and the value: half a million a table.
	kl := len(dk) + 4
	b := make([]byte, kl, kl+a.Addr().BitLen()/8+4)
	copy(b, dk)
	binary.NativeEndian.PutUint32(b[len(dk):], uint32(i))
	v := b[kl:kl]
	if a.Addr().Is4() {
		x := a.Addr().As4()
		v = append(v, x[:]...)
	} else {
		x := a.Addr().As16()
		v = append(v, x[:]...)
	}
	v = append(v, byte(a.Port()>>8), byte(a.Port()), 0, 0)
	return nftables.SetElement{Key: b[:kl:kl], Val: v}
}

// shardServices is how many services share one slot map: the kernel
// looks each map up by name in a list of the table's sets (so 10,000 maps
// of their own cost 10,000 walks of 10,000 sets), and walks a map's
// elements each time a rule of another chain binds it.
const shardServices = 64

// shard is a slot map shared by services without chains, keyed by the
// service's daddr . l4proto . dport and the slot.
type shard struct {
	set      *nftables.Set
	n        int // in the name
	services int
	d        digest // of its elements
}

// joinShard returns the slot map of the family with room for one more
// service, made if need be.
func (n *NFT) joinShard(six bool) *nftables.Set {
	fam, key, data := "4", slots4, endpoint4
	if six {
		fam, key, data = "6", slots6, endpoint6
	}
	// The lowest-numbered with room: the ones below roomy are full.
	for i := n.roomy[six]; ; i++ {
		name := fmt.Sprintf("slots%s_%d", fam, i)
		sh := n.shards[name]
		if sh == nil {
			sh = &shard{set: &nftables.Set{Table: n.table, Name: name, IsMap: true, Concatenation: true, KeyType: key, DataType: data}, n: i}
			_ = n.conn.AddSet(sh.set, nil)
			n.shards[name] = sh
		}
		if sh.services < shardServices {
			sh.services++
			n.roomy[six] = i
			return sh.set
		}
	}
}

// leaveShard deletes service s's slots from its shared map, and the map
// once no service uses it (at the end of the Apply: after the rules that
// bind it are gone).
func (n *NFT) leaveShard(s *nsvc) {
	els := make([]nftables.SetElement, len(s.order))
	dk := dispatchKey(s.svc.Key)
	for i, a := range s.order {
		els[i] = slotElement(dk, i, a)
	}
	if len(els) > 0 {
		n.elements(s.slots, els, false)
	}
	sh := n.shards[s.slots.Name]
	sh.services--
	for _, el := range els {
		sh.d.sub(el)
	}
	n.roomy[s.svc.Is6()] = min(n.roomy[s.svc.Is6()], sh.n)
}

// dropEmptyShards deletes the shared slot maps no service uses.
func (n *NFT) dropEmptyShards() {
	for name, sh := range n.shards {
		if sh.services == 0 {
			n.conn.DelSet(sh.set)
			delete(n.shards, name)
		}
	}
}

// addBase creates the table, the dispatch maps and the hooked chains.
func (n *NFT) addBase() {
	c := n.conn
	c.AddTable(n.table)
	for _, m := range []struct {
		name string
		key  nftables.SetDatatype
	}{
		{"svc4", dispatch4}, {"svc6", dispatch6}, {"fwm4", nftables.TypeMark}, {"fwm6", nftables.TypeMark},
		{"conns4", dispatch4}, {"conns6", dispatch6},
		{"masq4", dispatch4}, {"masq6", dispatch6},
		{"in4", dispatch4}, {"in6", dispatch6}, {"out4", dispatch4}, {"out6", dispatch6},
	} {
		// The dispatch maps' elements count each service's connections,
		// conns each real server's, in and out each real server's
		// packets and bytes.
		s := &nftables.Set{Table: n.table, Name: m.name, IsMap: true, KeyType: m.key, DataType: nftables.TypeVerdict, Counter: true}
		if !strings.HasPrefix(m.name, "svc") && !strings.HasPrefix(m.name, "fwm") {
			s.IsMap, s.DataType = false, nftables.SetDatatype{}
			s.Counter = !strings.HasPrefix(m.name, "masq")
		}
		if m.key == nftables.TypeMark {
			s.KeyByteOrder = binaryutil.NativeEndian
		} else {
			s.Concatenation = true
		}
		_ = c.AddSet(s, nil)
		n.maps[m.name] = s
	}
	accept := nftables.ChainPolicyAccept
	hook := func(name string, typ nftables.ChainType, h *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: n.table, Type: typ, Hooknum: h, Priority: prio, Policy: &accept})
	}
	for _, ch := range []*nftables.Chain{
		hook("prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		hook("output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
	} {
		// Marks first: IPVS looks a packet's firewall mark up before its
		// address, so a marked packet to an address service goes to the
		// mark's service.
		for _, fam := range []string{"4", "6"} {
			six := fam == "6"
			c.AddRule(&nftables.Rule{Table: n.table, Chain: ch, Exprs: markExprs(six, n.maps["fwm"+fam])})
			c.AddRule(&nftables.Rule{Table: n.table, Chain: ch, Exprs: dispatchExprs(six, n.maps["svc"+fam])})
		}
	}
	post := hook("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	stats := hook("stats", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	for _, fam := range []string{"4", "6"} {
		six := fam == "6"
		// Before the masquerade, which ends the chain.
		c.AddRule(&nftables.Rule{Table: n.table, Chain: post, Exprs: append(dnatted(six, false), &expr.Lookup{SourceRegister: reg8, SetName: "conns" + fam})})
	}
	for _, fam := range []string{"4", "6"} {
		six := fam == "6"
		c.AddRule(&nftables.Rule{Table: n.table, Chain: post, Exprs: append(dnatted(six, false), &expr.Lookup{SourceRegister: reg8, SetName: "masq" + fam}, &expr.Masq{})})
		c.AddRule(&nftables.Rule{Table: n.table, Chain: stats, Exprs: append(dnatted(six, false), &expr.Lookup{SourceRegister: reg8, SetName: "in" + fam})})
		c.AddRule(&nftables.Rule{Table: n.table, Chain: stats, Exprs: append(dnatted(six, true), &expr.Lookup{SourceRegister: reg8, SetName: "out" + fam})})
		// A real server without a port (firewall-mark services) keeps
		// the connection's port: its element has port 0, looked up
		// with the packet's port left out.
		c.AddRule(&nftables.Rule{Table: n.table, Chain: stats, Exprs: append(anyPort(dnatted(six, false)), &expr.Lookup{SourceRegister: reg8, SetName: "in" + fam})})
		c.AddRule(&nftables.Rule{Table: n.table, Chain: stats, Exprs: append(anyPort(dnatted(six, true)), &expr.Lookup{SourceRegister: reg8, SetName: "out" + fam})})
	}
	n.addTimeouts()
	n.base = true
}

func nfproto(six bool) []expr.Any {
	p := byte(unix.NFPROTO_IPV4)
	if six {
		p = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p}},
	}
}

// destKey loads daddr . l4proto . dport into the registers from reg8, the
// layout of the dispatch maps' keys.
func destKey(six bool) []expr.Any {
	alen, aoff := uint32(4), uint32(16)
	if six {
		alen, aoff = 16, 24
	}
	protoReg := reg8 + alen/4
	return []expr.Any{
		&expr.Payload{DestRegister: reg8, Base: expr.PayloadBaseNetworkHeader, Offset: aoff, Len: alen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: protoReg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// dispatchExprs jumps by daddr . l4proto . dport through the verdict map m.
func dispatchExprs(six bool, m *nftables.Set) []expr.Any {
	e := append(nfproto(six), destKey(six)...)
	return append(e, &expr.Lookup{SourceRegister: reg8, SetName: m.Name, SetID: m.ID, DestRegister: 0, IsDestRegSet: true})
}

// dnatted matches packets of DNAT'd connections and loads daddr . l4proto
// . dport (reply: saddr . l4proto . sport), the real server's endpoint.
func dnatted(six, reply bool) []expr.Any {
	e := append(nfproto(six),
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)})
	k := destKey(six)
	if reply {
		src := k[0].(*expr.Payload)
		src.Offset -= src.Len // the source address precedes the destination
		k[2].(*expr.Payload).Offset = 0
	}
	return append(e, k...)
}

// anyPort turns dnatted's key into the one of a real server without a
// port: the port's register (loaded last) is zero instead.
func anyPort(e []expr.Any) []expr.Any {
	p := e[len(e)-1].(*expr.Payload)
	e[len(e)-1] = &expr.Immediate{Register: p.DestRegister, Data: make([]byte, 4)}
	return e
}

// ipsDstNAT is conntrack's IPS_DST_NAT status bit.
const ipsDstNAT = 1 << 5

func markExprs(six bool, m *nftables.Set) []expr.Any {
	return append(nfproto(six),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, DestRegister: 0, IsDestRegSet: true})
}

// dispatchKey is the dispatch maps' key for a service.
func dispatchKey(k Key) []byte {
	if k.FWMark != 0 {
		return binaryutil.NativeEndian.PutUint32(k.FWMark)
	}
	a := k.Addr.Addr().AsSlice()
	b := append(a, protoNum(k.Protocol), 0, 0, 0)
	return append(b, byte(k.Addr.Port()>>8), byte(k.Addr.Port()), 0, 0)
}

func protoNum(p Protocol) byte {
	switch p {
	case UDP:
		return unix.IPPROTO_UDP
	case SCTP:
		return unix.IPPROTO_SCTP
	}
	return unix.IPPROTO_TCP
}

func (n *NFT) dispatchMap(k Key) *nftables.Set {
	name := "svc"
	if k.FWMark != 0 {
		name = "fwm"
	}
	if k.Is6() {
		return n.maps[name+"6"]
	}
	return n.maps[name+"4"]
}

func (n *NFT) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: n.table}
}

func (n *NFT) addService(s *nsvc) {
	c := n.conn
	n.nextID++
	s.id = n.nextID
	s.idx = map[netip.AddrPort]int{}
	s.nextRS = 0
	s.order = nil
	s.pers = map[netip.AddrPort]*nftables.Set{}
	s.hops = nil
	if s.dr = isDR(s); s.dr {
		n.addDRService(s)
		return
	}
	// Slots go to real servers' chains, in a map of the service's own,
	// or to their address and port, in a map shared with other services.
	if s.chains() {
		s.slots = &nftables.Set{Table: n.table, Name: fmt.Sprintf("sl%d", s.id), IsMap: true,
			KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeVerdict}
		_ = c.AddSet(s.slots, nil)
	} else {
		s.slots = n.joinShard(s.svc.Is6())
	}
	for _, r := range s.reals {
		n.addReal(s, r)
	}
	n.fillSlots(s)
	sc := c.AddChain(n.chain(fmt.Sprintf("s%d", s.id)))
	n.serviceRules(s, sc)
	if n.refuseFor != nil && n.refuseFor(s.svc.Key) {
		c.AddRule(&nftables.Rule{Table: n.table, Chain: sc, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "refused"}}})
	}
	// With the other services' at the end of the transaction: one
	// message for many.
	m := n.dispatchMap(s.svc.Key)
	n.sharedAdd[m] = append(n.sharedAdd[m], []nftables.SetElement{{
		Key: dispatchKey(s.svc.Key), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: sc.Name}}})
}

func (n *NFT) delService(s *nsvc) {
	n.zeroed.forget("service", string(dispatchKey(s.svc.Key)))
	if s.dr {
		n.delDRService(s)
		return
	}
	c := n.conn
	_ = c.SetDeleteElements(n.dispatchMap(s.svc.Key), []nftables.SetElement{{Key: dispatchKey(s.svc.Key)}})
	sc := n.chain(fmt.Sprintf("s%d", s.id))
	c.FlushChain(sc)
	c.DelChain(sc)
	if s.chains() {
		c.DelSet(s.slots)
	} else {
		n.leaveShard(s)
	}
	for a := range s.idx {
		n.delReal(s, a)
	}
}

// updateReals adds and removes real servers and rewrites the slots and the
// scheduling rule, whose modulus follows the weights.
func (n *NFT) updateReals(s *nsvc) {
	if s.dr != isDR(s) && len(s.reals) > 0 {
		// From NAT to direct routing or back: another table.
		old := *s
		n.delService(&old)
		n.addService(s)
		return
	}
	if s.dr {
		n.updateDRReals(s)
		return
	}
	c := n.conn
	for _, r := range s.reals {
		if _, ok := s.idx[r.Addr]; !ok {
			n.addReal(s, r)
		}
	}
	n.fillSlots(s)
	if shape := s.ruleShape(); shape != s.shape {
		// Rules that DNAT or jump make the kernel check every chain of
		// the table at commit (10 ms with 10,000 services): a change the
		// rules do not show (slots of the same count, say) leaves them.
		sc := n.chain(fmt.Sprintf("s%d", s.id))
		c.FlushChain(sc)
		n.serviceRules(s, sc)
	}
	// A server at weight 0 lets its persistent clients go: their next
	// connection is scheduled afresh, and if it comes back, it starts
	// with none.
	for _, r := range s.reals {
		if ps := s.pers[r.Addr]; ps != nil && r.Weight <= 0 {
			c.FlushSet(ps)
		}
	}
	for a := range s.idx {
		if !slices.ContainsFunc(s.reals, func(r Real) bool { return r.Addr == a }) {
			// Its persistent clients go with it and are scheduled afresh.
			n.delReal(s, a)
			delete(s.idx, a)
		}
	}
}

func (n *NFT) delReal(s *nsvc, a netip.AddrPort) {
	if s.chains() {
		c := n.conn
		rc := n.chain(realChain(s.id, s.idx[a]))
		c.FlushChain(rc)
		c.DelChain(rc)
		if a.Port() == 0 {
			c.DeleteObject(&nftables.CounterObj{Table: n.table, Name: realCounter(s.id, s.idx[a])})
		}
		if ps := s.pers[a]; ps != nil {
			c.DelSet(ps)
			delete(s.pers, a)
		}
	}
	n.ref("conns", s.svc.Protocol, a, -1)
	n.ref("in", s.svc.Protocol, a, -1)
	n.ref("out", s.svc.Protocol, a, -1)
	if s.svc.Masquerade {
		n.ref("masq", s.svc.Protocol, a, -1)
	}
}

func (n *NFT) addReal(s *nsvc, r Real) {
	k := s.nextRS
	s.nextRS++
	s.idx[r.Addr] = k
	n.ref("conns", s.svc.Protocol, r.Addr, 1)
	n.ref("in", s.svc.Protocol, r.Addr, 1)
	n.ref("out", s.svc.Protocol, r.Addr, 1)
	if s.svc.Masquerade {
		n.ref("masq", s.svc.Protocol, r.Addr, 1)
	}
	if !s.chains() {
		return
	}
	c := n.conn
	rc := c.AddChain(n.chain(realChain(s.id, k)))
	var e []expr.Any
	if s.svc.Persistence > 0 {
		kt := nftables.TypeIPAddr
		if s.svc.Is6() {
			kt = nftables.TypeIP6Addr
		}
		ps := &nftables.Set{Table: n.table, Name: fmt.Sprintf("p%d_%d", s.id, k), HasTimeout: true, Dynamic: true,
			Timeout: s.svc.Persistence, KeyType: kt}
		_ = c.AddSet(ps, nil)
		s.pers[r.Addr] = ps
		e = append(saddr(s.svc, reg1),
			&expr.Dynset{SrcRegKey: reg1, SetName: ps.Name, SetID: ps.ID, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: s.svc.Persistence})
	}
	if r.Addr.Port() == 0 {
		c.AddObj(&nftables.CounterObj{Table: n.table, Name: realCounter(s.id, k)})
		e = append(e, &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: realCounter(s.id, k)})
	}
	e = append(e, &expr.Immediate{Register: reg1, Data: r.Addr.Addr().AsSlice()})
	c.AddRule(&nftables.Rule{Table: n.table, Chain: rc, Exprs: append(e, dnat(r.Addr, reg1, reg2)...)})
}

// dnat translates to the address in addrReg (loaded by the caller) and,
// when a has a port, to that port, loaded into portReg.
func dnat(a netip.AddrPort, addrReg, portReg uint32) []expr.Any {
	fam := uint32(unix.NFPROTO_IPV4)
	if a.Addr().Is6() {
		fam = unix.NFPROTO_IPV6
	}
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: addrReg}
	if a.Port() == 0 {
		return []expr.Any{nat}
	}
	nat.RegProtoMin, nat.Specified = portReg, true
	return []expr.Any{&expr.Immediate{Register: portReg, Data: binaryutil.BigEndian.PutUint16(a.Port())}, nat}
}

// maxElements bounds the elements of one message: their list is one
// netlink attribute, whose length is 16 bits. Longer lists wrap it and the
// kernel misreads the message (seen as ENOENT with 4,000 endpoints).
const maxElements = 256

// elements adds (or deletes) els to set in messages of up to maxElements;
// errors come with the transaction.
func (n *NFT) elements(set *nftables.Set, els []nftables.SetElement, add bool) {
	for len(els) > 0 {
		k := min(len(els), maxElements)
		if add {
			_ = n.conn.SetAddElements(set, els[:k])
		} else {
			_ = n.conn.SetDeleteElements(set, els[:k])
		}
		els = els[k:]
	}
}

// ref counts a service's use of a real-server endpoint in the endpoint
// set kind; flushRefs adds and removes the elements.
func (n *NFT) ref(kind string, p Protocol, a netip.AddrPort, delta int) {
	k := Key{Protocol: p, Addr: a}
	if _, ok := n.touched[kind][k]; !ok {
		n.touched[kind][k] = n.refs[kind][k]
	}
	n.refs[kind][k] += delta
	if n.refs[kind][k] <= 0 {
		delete(n.refs[kind], k)
	}
}

// flushRefs puts the element changes of this Apply into the transaction,
// in few messages. touched keeps the earlier counts until committed.
func (n *NFT) flushRefs() {
	for m, pieces := range n.sharedAdd {
		n.elements(m, slices.Concat(pieces...), true)
	}
	n.sharedAdd = map[*nftables.Set][][]nftables.SetElement{}
	for kind, ks := range n.touched {
		add := map[string][]nftables.SetElement{}
		del := map[string][]nftables.SetElement{}
		for k, before := range ks {
			name := kind + "4"
			if k.Addr.Addr().Is6() {
				name = kind + "6"
			}
			el := nftables.SetElement{Key: dispatchKey(k)}
			switch now := n.refs[kind][k]; {
			case before == 0 && now > 0:
				add[name] = append(add[name], el)
			case before > 0 && now == 0:
				del[name] = append(del[name], el)
				n.zeroed.forget(kind, string(el.Key))
			}
		}
		for name, els := range del {
			n.elements(n.maps[name], els, false)
		}
		for name, els := range add {
			n.elements(n.maps[name], els, true)
		}
	}
}

// committed forgets the endpoint counts' earlier values once the
// transaction is in: they were kept to undo a refused one.
func (n *NFT) committed() {
	for kind := range n.touched {
		n.touched[kind] = map[Key]int{}
	}
}

// slotOrder spreads the real servers over slots in proportion to their
// weights, interleaved (smooth weighted round robin) so that numgen's
// sequence alternates servers as IPVS's wrr does. The order depends only
// on addresses and weights, so two directors with the same configuration
// hash a client to the same server.
// rr gives every server with a weight one slot.
func slotOrder(sched string, reals []Real) []netip.AddrPort {
	switch sched {
	case "sh":
		return shBuckets(reals)
	case "mh":
		return mhBuckets(reals)
	}
	rs := slices.Clone(reals)
	rs = slices.DeleteFunc(rs, func(r Real) bool { return r.Weight <= 0 })
	if sched == "rr" {
		for i := range rs {
			rs[i].Weight = 1
		}
	}
	slices.SortFunc(rs, func(a, b Real) int { return a.Addr.Compare(b.Addr) })
	if len(rs) == 0 {
		return nil
	}
	w, sum := reducedWeights(rs)
	if sum > MaxSlots {
		total := sum
		sum = 0
		for i := range w {
			w[i] = max(1, w[i]*MaxSlots/total)
			sum += w[i]
		}
	}
	out := make([]netip.AddrPort, 0, sum)
	cur := make([]int, len(rs))
	for range sum {
		best := 0
		for i := range rs {
			cur[i] += w[i]
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= sum
		out = append(out, rs[best].Addr)
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// fillSlots programs the slots of the service's real servers. A map of
// verdicts is emptied and filled again; in a map of addresses only the
// slots whose server changes are deleted and added.
func (n *NFT) fillSlots(s *nsvc) {
	order := slotOrder(s.svc.Scheduler, s.reals)
	defer func() { s.order = order }()
	if s.chains() {
		if s.order != nil {
			n.conn.FlushSet(s.slots)
		}
		els := make([]nftables.SetElement, len(order))
		for i, a := range order {
			els[i] = ownSlot(s, i, a)
		}
		if len(els) > 0 {
			n.elements(s.slots, els, true)
		}
		return
	}
	var del []nftables.SetElement
	add := make([]nftables.SetElement, 0, len(order))
	dk := dispatchKey(s.svc.Key)
	for i := range max(len(order), len(s.order)) {
		if i < len(s.order) && i < len(order) && s.order[i] == order[i] {
			continue
		}
		if i < len(s.order) {
			del = append(del, slotElement(dk, i, s.order[i]))
		}
		if i < len(order) {
			add = append(add, slotElement(dk, i, order[i]))
		}
	}
	if len(del) > 0 {
		n.elements(s.slots, del, false)
	}
	if len(add) > 0 {
		n.sharedAdd[s.slots] = append(n.sharedAdd[s.slots], add)
	}
	sh := n.shards[s.slots.Name]
	for _, el := range del {
		sh.d.sub(el)
	}
	for _, el := range add {
		sh.d.add(el)
	}
}

// saddr loads the (masked) client address into reg.
func saddr(svc Service, reg uint32) []expr.Any {
	six := svc.Is6()
	off, l := uint32(12), uint32(4)
	if six {
		off, l = 8, 16
	}
	// The protocol match lets nft list show "ip saddr".
	e := append(nfproto(six), &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: l})
	if bits := svc.persistenceBits(); svc.Persistence > 0 && bits < int(l*8) {
		e = append(e, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: l,
			Mask: prefixMask(int(l), bits), Xor: make([]byte, l)})
	}
	return e
}

func prefixMask(size, bits int) []byte {
	b := make([]byte, size)
	for i := range bits {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}

func (n *NFT) serviceRules(s *nsvc, sc *nftables.Chain) {
	s.shape = s.ruleShape()
	c := n.conn
	six := s.svc.Is6()
	n.timeoutRule(s, sc)
	if s.svc.FWMark != 0 {
		// The packet's mark is gone by the time the drain counts the
		// service's connections in conntrack: the connection keeps it
		// (as the CONNMARK save idiom does), once, on its first packet.
		c.AddRule(&nftables.Rule{Table: n.table, Chain: sc, Exprs: []expr.Any{
			&expr.Immediate{Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.svc.FWMark)},
			&expr.Ct{Key: expr.CtKeyMARK, Register: reg1, SourceRegister: true},
		}})
	}
	// Persistent clients first, to the server they had (in address
	// order, so a client in two sets after a weight change is stable).
	// A server at weight 0 (drained, or failed with inhibit_on_failure)
	// takes none: its clients were let go (updateReals) and are
	// scheduled afresh, as IPVS does with expire_quiescent_template.
	for _, r := range sortedReals(s.reals) {
		if ps := s.pers[r.Addr]; ps != nil && r.Weight > 0 {
			e := append(saddr(s.svc, reg1),
				&expr.Lookup{SourceRegister: reg1, SetName: ps.Name, SetID: ps.ID},
				&expr.Verdict{Kind: expr.VerdictGoto, Chain: realChain(s.id, s.idx[r.Addr])})
			c.AddRule(&nftables.Rule{Table: n.table, Chain: sc, Exprs: e})
		}
	}
	slots := uint32(len(s.order)) // fillSlots ran first
	if slots > 0 {
		// The slot: a service with chains looks it up alone, in
		// register 1; one in a shared map after its daddr . l4proto .
		// dport, loaded from reg8 (the hash's input goes from reg16).
		var e []expr.Any
		slot, in := uint32(reg1), uint32(reg8)
		if !s.chains() {
			slot, in = reg8+3, reg16
			if six {
				slot = reg8 + 6
			}
		}
		if s.svc.Scheduler == "sh" || s.svc.Scheduler == "mh" {
			e = saddr(Service{Key: s.svc.Key}, in)
			l := uint32(4)
			if six {
				l = 16
			}
			if s.svc.Flags&FlagSched2 != 0 {
				e = append(e, &expr.Payload{DestRegister: in + l/4, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2})
				l += 4
			}
			e = append(e, &expr.Hash{SourceRegister: in, DestRegister: slot, Length: l, Modulus: slots,
				Seed: seed(s.svc.Key), Type: expr.HashTypeJenkins})
		} else {
			if !s.chains() {
				e = nfproto(six) // for nft list to show "ip daddr"
			}
			e = append(e, &expr.Numgen{Register: slot, Modulus: slots, Type: unix.NFT_NG_INCREMENTAL})
		}
		if !s.chains() {
			e = append(e, destKey(six)...) // below the slot's register
		}
		if s.chains() {
			e = append(e, &expr.Lookup{SourceRegister: reg1, SetName: s.slots.Name, SetID: s.slots.ID, DestRegister: 0, IsDestRegSet: true})
		} else {
			// The slot's address and port land in register 1 and the
			// 4-byte register after the address.
			port := uint32(unix.NFT_REG32_01)
			fam := uint32(unix.NFPROTO_IPV4)
			if six {
				port, fam = unix.NFT_REG32_04, unix.NFPROTO_IPV6
			}
			e = append(e, &expr.Lookup{SourceRegister: reg8, SetName: s.slots.Name, SetID: s.slots.ID, DestRegister: reg1, IsDestRegSet: true},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: fam, RegAddrMin: reg1, RegProtoMin: port, Specified: true})
		}
		c.AddRule(&nftables.Rule{Table: n.table, Chain: sc, Exprs: e})
	}
	// No server with weight: refuse rather than deliver to the director.
	c.AddRule(&nftables.Rule{Table: n.table, Chain: sc, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
}

func sortedReals(rs []Real) []Real {
	out := slices.Clone(rs)
	slices.SortFunc(out, func(a, b Real) int { return a.Addr.Compare(b.Addr) })
	return out
}

// seed is sh's hash seed: fixed by the service, so both directors and
// every restart hash alike.
func seed(k Key) uint32 {
	h := fnv.New32a()
	h.Write([]byte(k.String()))
	return h.Sum32()
}

// Conns counts conntrack entries of a real server of a service, for
// draining: established TCP ones are active, the rest inactive.
func (n *NFT) Conns(k Key, addr netip.AddrPort) (active, inactive int, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	flows, err := dumpConnsOf(n.gen, k, addr)
	if err != nil {
		return 0, 0, err
	}
	a, i := countConns(flows, k, addr)
	return a, i, nil
}

// KeepPersistence renews the persistence entries that would expire within
// soon while their client still has a connection to that server: IPVS
// keeps a template while connections use it, and an nftables entry is
// renewed only by the client's new connections. It returns how many it
// renewed. An entry renewed lasts its service's persistence timeout
// again, from now.
func (n *NFT) KeepPersistence(soon time.Duration) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	entries, err := n.persistEntries()
	if err != nil {
		return 0, err
	}
	// The dues by service, server and client, which each open connection
	// is looked up in once: matching every due against every connection
	// took a billion comparisons for 10,000 clients and 100,000 flows.
	due := map[PersistEntry]bool{}
	fams := map[bool]bool{}
	for _, e := range entries {
		if e.Expires <= soon {
			e.Expires = 0
			due[e] = true
			fams[e.Client.Is6()] = true
		}
	}
	live := map[PersistEntry]bool{}
	for six := range fams {
		flows, err := conntrack(n.nl, n.dumps, six, n.rates.now())
		if err != nil {
			return 0, err
		}
		for _, f := range flows {
			if e, ok := n.heldBy(f); ok && due[e] && openFlow(f) {
				live[e] = true
			}
		}
	}
	if len(live) == 0 {
		return 0, nil
	}
	// Deleted and added again in one transaction: adding an element that
	// exists does not renew its timeout on every kernel.
	del := map[*nftables.Set][]nftables.SetElement{}
	add := map[*nftables.Set][]nftables.SetElement{}
	for d := range live {
		s := n.svcs[d.Service]
		set := s.pers[d.Real]
		del[set] = append(del[set], nftables.SetElement{Key: d.Client.AsSlice()})
		add[set] = append(add[set], nftables.SetElement{Key: d.Client.AsSlice(), Timeout: s.svc.Persistence})
	}
	for set, els := range del {
		n.elements(set, els, false)
	}
	for set, els := range add {
		n.elements(set, els, true)
	}
	gen, genErr := generation(n.gen)
	if err := n.conn.Flush(); err != nil {
		return 0, fmt.Errorf("nftables: renew persistence: %w", err)
	}
	// Persistence sets count by name in the drift baseline: what moved
	// is the generation alone (read the whole table again each second,
	// with 10,000 services, it took a quarter of a second).
	if genErr != nil {
		n.settle()
	} else if err := n.settleChanged(gen, nil); err != nil {
		return 0, err
	}
	return len(live), nil
}

// heldBy is the persistence entry the conntrack entry f keeps (Expires
// zero): its service (by its mark, or its original destination), the real
// server it was NATed to, and its client's prefix.
func (n *NFT) heldBy(f *vnl.ConntrackFlow) (PersistEntry, bool) {
	client, ok := netip.AddrFromSlice(f.Forward.SrcIP)
	if !ok {
		return PersistEntry{}, false
	}
	client = client.Unmap()
	k := Key{FWMark: f.Mark, IPv6: client.Is6()}
	s := n.svcs[k]
	if f.Mark == 0 || s == nil {
		dst, _ := netip.AddrFromSlice(f.Forward.DstIP)
		k = Key{Protocol: protoName(f.Forward.Protocol), Addr: netip.AddrPortFrom(dst.Unmap(), f.Forward.DstPort)}
		if s = n.svcs[k]; s == nil {
			return PersistEntry{}, false
		}
	}
	src, _ := netip.AddrFromSlice(f.Reverse.SrcIP)
	real := netip.AddrPortFrom(src.Unmap(), f.Reverse.SrcPort)
	if s.pers[real] == nil {
		real = netip.AddrPortFrom(real.Addr(), 0) // a mark's server keeping the port
	}
	p, err := client.Prefix(s.svc.persistenceBits())
	if s.pers[real] == nil || err != nil {
		return PersistEntry{}, false
	}
	return PersistEntry{Service: k, Real: real, Client: p.Addr()}, true
}

// PersistEntry is one client held on a real server by persistence.
type PersistEntry struct {
	Service Key
	Real    netip.AddrPort
	Client  netip.Addr    // the client, or its prefix's first address
	Expires time.Duration // left before it goes
}

// PersistEntries lists the persistence entries of every service.
func (n *NFT) PersistEntries() ([]PersistEntry, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.persistEntries()
}

func (n *NFT) persistEntries() ([]PersistEntry, error) {
	var out []PersistEntry
	for _, s := range n.svcs {
		for real, set := range s.pers {
			els, err := n.conn.GetSetElements(set)
			if err != nil {
				return nil, fmt.Errorf("nftables: read %s: %w", set.Name, err)
			}
			for _, el := range els {
				a, ok := netip.AddrFromSlice(el.Key)
				if !ok {
					continue
				}
				out = append(out, PersistEntry{Service: s.svc.Key, Real: real, Client: a, Expires: el.Expires})
			}
		}
	}
	return out, nil
}

// AddPersist puts entries (from the peer) into the persistence sets, in
// one transaction; entries of unknown services or servers are skipped.
func (n *NFT) AddPersist(es []PersistEntry) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	add := map[*nftables.Set][]nftables.SetElement{}
	for _, e := range es {
		// From the peer: only a client of the service's family, on one of
		// its real servers, for no longer than its persistence.
		s := n.svcs[e.Service]
		if s == nil || s.pers[e.Real] == nil || e.Expires <= 0 || e.Client.Unmap().Is6() != s.svc.Key.Is6() {
			continue
		}
		set := s.pers[e.Real]
		add[set] = append(add[set], nftables.SetElement{Key: e.Client.Unmap().AsSlice(), Timeout: min(e.Expires, s.svc.Persistence)})
	}
	if len(add) == 0 {
		return nil
	}
	for set, els := range add {
		n.elements(set, els, true)
	}
	if err := n.conn.Flush(); err != nil {
		return fmt.Errorf("nftables: add persistence entries: %w", err)
	}
	return nil
}

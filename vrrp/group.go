package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Deps are the group's ties to the kernel and the daemon, injected so the
// runner can be driven by fakes in unit tests.
type Deps struct {
	// Listen opens the VRRP socket of an interface and family.
	Listen    func(ifname string, ipv6 bool) (Conn, error)
	Addresses Addresses
	Announcer Announcer
	// Primary finds the address adverts are sent from.
	Primary func(ifname string, ipv6 bool, vips []netip.Prefix) (netip.Addr, error)
	// WatchLinks calls fn with every interface's link state until ctx ends;
	// nil means links are taken as up.
	WatchLinks func(ctx context.Context, fn func(ifname string, up bool)) error
	// WatchAddrs calls fn with the interface whose addresses changed,
	// until ctx ends; nil means addresses never change.
	WatchAddrs func(ctx context.Context, fn func(ifname string)) error
	// Index is an interface's index, to notice one deleted and made
	// again (its socket must be opened again); nil: never.
	Index func(ifname string) (int, error)
	// MTU is an interface's MTU, which bounds the addresses an advert
	// carries; nil (or 0): 1500.
	MTU func(ifname string) int
	// Acceptor enforces no_accept on a master; nil: not enforced.
	Acceptor Acceptor
	// VMACs makes the interfaces of use_vmac; nil: instances with a VMAC
	// use the names as given (tests).
	VMACs VMACs
	// Routing adds a master's virtual routes and rules; nil: not added.
	Routing Routing
	// Notify is told of every transition, in order. It is called from the
	// instance's event loop and must return at once (queue, don't run).
	Notify func(instance string, t Transition)
	// LowerPriority is told when a master hears an advert of a lower
	// priority (keepalived's notify_master_rx_lower_pri); the same rule.
	LowerPriority func(instance string, from netip.Addr, priority uint8)
	// NewTimer makes an instance loop's deadline timer. nil: the Go
	// runtime's timers.
	NewTimer func() Timer
	Now      func() time.Time
	Log      *slog.Logger
}

// KernelDeps uses the real kernel: raw sockets, rtnetlink and ARP.
func KernelDeps(log *slog.Logger) Deps {
	return Deps{
		Listen: func(ifname string, ipv6 bool) (Conn, error) {
			if ipv6 {
				return ListenIPv6(ifname)
			}
			return ListenIPv4(ifname)
		},
		Addresses:  NetlinkAddresses{},
		Announcer:  LinkAnnouncer{},
		Primary:    PrimaryAddress,
		WatchLinks: WatchLinks,
		WatchAddrs: WatchAddrs,
		Acceptor:   &NFTAcceptor{},
		VMACs:      NetlinkVMACs{},
		Routing:    NetlinkRouting{},
		Index: func(ifname string) (int, error) {
			ifi, err := net.InterfaceByName(ifname)
			if err != nil {
				return 0, err
			}
			return ifi.Index, nil
		},
		MTU: func(ifname string) int {
			if ifi, err := net.InterfaceByName(ifname); err == nil {
				return ifi.MTU
			}
			return 0
		},
		NewTimer: func() Timer {
			if t, err := NewFDTimer(); err == nil {
				return t
			}
			return NewRuntimeTimer()
		},
		Now: time.Now,
		Log: log,
	}
}

// Group runs a set of virtual routers.
type Group struct {
	deps Deps

	mu        sync.Mutex
	ctx       context.Context
	routers   map[routerKey]*router
	instances map[string]*instance
	links     map[string]bool
	scripts   map[string]bool
	files     map[string]int // tracked files' values (SetFile)
	pending   []Config       // an Update that came before Run
	fault     string         // SetFault's reason: every instance is FAULT
}

type routerKey struct {
	ifname string
	ipv6   bool
}

// router owns one socket and hands each packet to its instance by VRID.
type router struct {
	key routerKey

	mu     sync.Mutex
	conn   Conn
	done   chan struct{} // closed when the read loop of conn ends
	index  int           // the interface's index when conn was opened
	byVRID map[uint8]*instance
	drops  map[DropReason]uint64 // packets no instance could be charged with
}

type received struct {
	src netip.Addr
	adv Advert
}

type instance struct {
	// cfg is written by the instance's own event loop only (in-place
	// reconfiguration), under mu; others read it with config().
	cfg     Config
	running atomic.Bool // attached to its interface and running
	rx      chan received
	inputs  chan struct{} // a link or script this instance depends on changed
	cmds    chan func(*actor)
	cancel  context.CancelFunc
	done    chan struct{}

	mu          sync.Mutex
	selfFault   string // FAULT from its own links and scripts, not its sync group's
	info        Info
	source      netip.Addr
	sent        uint64
	received    uint64
	transitions uint64
	drops       map[DropReason]uint64
	lastLog     map[DropReason]time.Time
	mismatches  uint64 // v3 adverts with another address list
	err         string
}

func NewGroup(deps Deps) *Group {
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Log == nil {
		deps.Log = slog.Default()
	}
	return &Group{deps: deps, routers: map[routerKey]*router{}, instances: map[string]*instance{}, links: map[string]bool{}, scripts: map[string]bool{},
		files: map[string]int{}}
}

// Run starts the routers and runs until ctx ends; then every master
// resigns (priority 0) and the virtual addresses are removed.
func (g *Group) Run(ctx context.Context, cfgs []Config) error {
	g.mu.Lock()
	g.ctx = ctx
	if g.pending != nil {
		cfgs, g.pending = g.pending, nil
	}
	g.mu.Unlock()
	if g.deps.WatchLinks != nil {
		go func() {
			if err := g.deps.WatchLinks(ctx, g.linkChanged); err != nil && ctx.Err() == nil {
				g.deps.Log.Error("VRRP: watching links failed; link changes will not move instances to FAULT", "err", err)
			}
		}()
	}
	if g.deps.WatchAddrs != nil {
		go func() {
			if err := g.deps.WatchAddrs(ctx, g.addrsChanged); err != nil && ctx.Err() == nil {
				g.deps.Log.Error("VRRP: watching addresses failed; a renumbered interface will not be noticed", "err", err)
			}
		}()
	}
	g.Update(cfgs)
	<-ctx.Done()
	g.mu.Lock()
	names := make([]string, 0, len(g.instances))
	for n := range g.instances {
		names = append(names, n)
	}
	g.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() { g.stop(n) })
	}
	wg.Wait()
	return nil
}

// Update applies a new set of routers: unchanged ones keep running and
// keep their state; ones whose identity (interface, VRID, version,
// addresses, source, owner or not) is the same take the new settings in
// place, also keeping their state; the rest restart; removed ones stop
// (resigning if master); new ones start. It returns the names that were
// (re)started and those reconfigured in place.
func (g *Group) Update(cfgs []Config) (started, reconfigured []string) {
	g.mu.Lock()
	if g.ctx == nil { // not running yet: Run starts these
		g.pending = cfgs
		g.mu.Unlock()
		return nil, nil
	}
	g.mu.Unlock()
	want := map[string]Config{}
	for _, c := range cfgs {
		want[c.Name] = c
	}
	g.mu.Lock()
	var stop []string
	inPlace := map[*instance]Config{}
	for name, in := range g.instances {
		c, ok := want[name]
		old := in.config()
		switch {
		case ok && reflect.DeepEqual(c, old):
		case ok && sameIdentity(c, old) && in.running.Load():
			inPlace[in] = c
		default:
			stop = append(stop, name)
		}
	}
	g.mu.Unlock()
	for _, n := range stop {
		g.stop(n)
	}
	for in, c := range inPlace {
		done := make(chan struct{})
		select {
		case in.cmds <- func(a *actor) { a.reconfigure(c); close(done) }:
			<-done
			reconfigured = append(reconfigured, c.Name)
		case <-in.done: // stopped meanwhile (the group is shutting down)
		}
	}
	for _, c := range cfgs {
		g.mu.Lock()
		_, running := g.instances[c.Name]
		g.mu.Unlock()
		if !running {
			g.start(c)
			started = append(started, c.Name)
		}
	}
	return started, reconfigured
}

// sameIdentity reports whether b can replace a without restarting the
// router: the same socket (interface and family), VRID and source, and the
// same owner role (an owner behaves differently from the start). The
// virtual addresses may change: a master changes them in place.
func sameIdentity(a, b Config) bool {
	return a.Interface == b.Interface && a.VMAC == b.VMAC && a.VMACXmitBase == b.VMACXmitBase && a.VRID == b.VRID && a.Version == b.Version &&
		a.IPv6() == b.IPv6() && a.UnicastSrc == b.UnicastSrc &&
		(a.Priority == PriorityOwner) == (b.Priority == PriorityOwner)
}

// reconfigure takes new settings in place (see Update). A master holding
// the virtual addresses adds the new ones (and announces them), removes
// the old ones, and advertises the new list at once, as keepalived does
// on a reload.
func (a *actor) reconfigure(c Config) {
	a.in.mu.Lock()
	old := a.in.cfg
	a.in.cfg = c
	a.in.mu.Unlock()
	now := a.g.deps.Now()
	a.m.Reconfigure(now, a.g.fitted(a.log, c))
	if a.held && !slices.Equal(old.held(), c.held()) {
		var added []netip.Addr
		for _, p := range c.held() {
			if !slices.Contains(old.held(), p) {
				a.addVIP(p)
				added = append(added, p.Addr())
			}
		}
		for _, p := range old.held() {
			if !slices.Contains(c.held(), p) {
				a.removeVIP(p)
			}
		}
		if len(added) > 0 {
			if err := a.g.deps.Announcer.Announce(c.addrIf(), added, c.GARPRepeat); err != nil {
				a.log.Warn("VRRP: announcing the virtual addresses failed", "err", err)
			}
		}
		a.send(a.m.Info().Priority)
	}
	if a.held {
		a.acceptMode() // the addresses, or no_accept itself, may have changed
		a.routing(missing(old.Routes, c.Routes), missing(old.Rules, c.Rules), false)
		a.routing(missing(c.Routes, old.Routes), missing(c.Rules, old.Rules), true)
	}
	a.follow(now)
	a.log.Info("VRRP instance reconfigured in place", "state", a.m.State())
	a.in.mu.Lock()
	a.in.info = a.m.Info()
	a.in.mu.Unlock()
}

// missing are the elements of a not in b.
func missing[T comparable](a, b []T) []T {
	var out []T
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func (g *Group) linkChanged(ifname string, up bool) {
	if up {
		// An interface deleted and made again has another index: its
		// socket, bound to the old one, hears nothing any more.
		g.reopen(ifname)
	}
	g.changed(g.links, ifname, up, func(c Config) bool {
		return c.Interface == ifname || slices.ContainsFunc(c.Track, func(t Track) bool { return t.Interface == ifname })
	})
}

// addrsChanged tells the instances on ifname to look up their source
// address again: a renumbered interface must not leave a master sending
// from an address it lost.
func (g *Group) addrsChanged(ifname string) {
	g.mu.Lock()
	ins := g.matching(func(c Config) bool { return c.Interface == ifname })
	g.mu.Unlock()
	wake(ins)
}

// reopen opens the sockets of ifname again when its index changed.
func (g *Group) reopen(ifname string) {
	if g.deps.Index == nil {
		return
	}
	idx, err := g.deps.Index(ifname)
	if err != nil {
		return
	}
	g.mu.Lock()
	var rs []*router
	for k, r := range g.routers {
		r.mu.Lock()
		if k.ifname == ifname && r.index != idx {
			rs = append(rs, r)
		}
		r.mu.Unlock()
	}
	g.mu.Unlock()
	for _, r := range rs {
		conn, err := g.deps.Listen(r.key.ifname, r.key.ipv6)
		if err != nil {
			g.deps.Log.Warn("VRRP: the interface was made again, but its socket cannot be opened yet", "interface", ifname, "err", err)
			continue
		}
		g.mu.Lock()
		gone := g.routers[r.key] != r // its last instance stopped meanwhile
		g.mu.Unlock()
		if gone {
			conn.Close()
			continue
		}
		g.deps.Log.Info("VRRP: the interface was made again; its socket is open again", "interface", ifname, "index", idx)
		old, oldDone := r.swap(conn, idx)
		old.Close()
		<-oldDone
		go r.readLoop(conn, r.loopDone(), g.deps.Log)
	}
}

// swap puts conn in place and returns the old socket and its loop's done.
func (r *router) swap(conn Conn, idx int) (Conn, chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, done := r.conn, r.done
	r.conn, r.done, r.index = conn, make(chan struct{}), idx
	return old, done
}

func (r *router) loopDone() chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.done
}

// socket is the router's socket now.
func (r *router) socket() Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conn
}

// SetScript reports a tracked script's verdict (a script not reported yet
// counts as passing).
func (g *Group) SetScript(name string, ok bool) {
	g.changed(g.scripts, name, ok, func(c Config) bool {
		return slices.ContainsFunc(c.TrackScripts, func(t TrackScript) bool { return t.Name == name })
	})
}

// SetFault puts every instance in FAULT for reason (a master resigns
// with priority 0), or, with "", lets them run again: the daemon's word
// that this host must not serve (it left its cluster).
func (g *Group) SetFault(reason string) {
	g.mu.Lock()
	same := g.fault == reason
	g.fault = reason
	ins := g.matching(func(Config) bool { return true })
	g.mu.Unlock()
	if !same {
		wake(ins)
	}
}

// SetFile reports a tracked file's value (keepalived's vrrp_track_file);
// a file not reported yet counts as 0.
func (g *Group) SetFile(name string, value int) {
	record(g, g.files, name, value, func(c Config) bool {
		return slices.ContainsFunc(c.TrackFiles, func(t TrackFile) bool { return t.Name == name })
	})
}

// changed records an input's new value and tells the instances that
// depend on it.
func (g *Group) changed(inputs map[string]bool, name string, up bool, dependsOn func(Config) bool) {
	record(g, inputs, name, up, dependsOn)
}

// record sets inputs[name] and, when it changed, wakes the instances that
// depend on it.
func record[V comparable](g *Group, inputs map[string]V, name string, v V, dependsOn func(Config) bool) {
	g.mu.Lock()
	prev, known := inputs[name]
	inputs[name] = v
	ins := g.matching(dependsOn)
	g.mu.Unlock()
	if !known || prev != v {
		wake(ins)
	}
}

// matching are the instances whose configuration f accepts; g.mu held.
func (g *Group) matching(f func(Config) bool) []*instance {
	var ins []*instance
	for _, in := range g.instances {
		if f(in.config()) {
			ins = append(ins, in)
		}
	}
	return ins
}

// wake tells the instances to look at their inputs again.
func wake(ins []*instance) {
	for _, in := range ins {
		select {
		case in.inputs <- struct{}{}:
		default: // a notice is already queued; the instance reads all inputs
		}
	}
}

// up reports an input's state; one not heard of yet counts as up.
func (g *Group) up(inputs map[string]bool, name string) bool { return g.upOr(inputs, name, true) }

// upOr reports an input's state, or unknown when it is not heard of yet.
func (g *Group) upOr(inputs map[string]bool, name string, unknown bool) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	up, known := inputs[name]
	if !known {
		return unknown
	}
	return up
}

func (in *instance) config() Config {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.cfg
}

// health derives FAULT (a non-empty reason) and the effective priority
// from the links and scripts the instance depends on, as keepalived's
// track_interface and track_script.
func (in *instance) health(g *Group) (fault string, prio uint8) {
	g.mu.Lock()
	held := g.fault
	g.mu.Unlock()
	if held != "" {
		return held, in.cfg.Priority
	}
	if !in.cfg.DontTrackPrimary && !g.up(g.links, in.cfg.Interface) {
		return in.cfg.Interface + " is down", in.cfg.Priority
	}
	p := int(in.cfg.Priority)
	// init_fail: what has not reported yet counts as down, so that the
	// instance starts in FAULT until its tracking says otherwise.
	unknown := !in.cfg.InitFail
	for _, t := range in.cfg.Track {
		up := g.upOr(g.links, t.Interface, unknown)
		if t.Weight == 0 && up == t.Reverse {
			return "tracked interface " + t.Interface + " is down", in.cfg.Priority
		}
		p += trackWeight(up, t.Weight, t.Reverse)
	}
	for _, t := range in.cfg.TrackScripts {
		ok := g.upOr(g.scripts, t.Name, unknown)
		if t.Weight == 0 && ok == t.Reverse {
			return "tracked script " + t.Name + " failed", in.cfg.Priority
		}
		p += trackWeight(ok, t.Weight, t.Reverse)
	}
	for _, t := range in.cfg.TrackFiles {
		g.mu.Lock()
		v := g.files[t.Name]
		g.mu.Unlock()
		switch {
		case t.Weight == 0 && v != 0:
			return fmt.Sprintf("tracked file %s holds %d", t.Name, v), in.cfg.Priority
		case t.Reverse:
			p -= v * t.Weight
		default:
			p += v * t.Weight
		}
	}
	if in.cfg.Priority == PriorityOwner {
		return "", PriorityOwner
	}
	return "", uint8(min(max(p, 1), 254))
}

// trackWeight is what a tracked interface or script adds to the priority,
// as keepalived counts it: a positive weight while it is up (passing), a
// negative one while it is down (failing); reverse negates that amount
// (keepalived's weight multiplier of -1: a positive weight lowers the
// priority while up, a negative one raises it while down). Measured
// side by side with keepalived 2.2.7 (TestKeepalivedTrackWeights).
func trackWeight(ok bool, weight int, reverse bool) int {
	if weight == 0 || (weight > 0) != ok {
		return 0
	}
	if reverse {
		return -weight
	}
	return weight
}

func (g *Group) start(cfg Config) {
	in := &instance{
		cfg:     cfg,
		rx:      make(chan received, 64),
		inputs:  make(chan struct{}, 1),
		cmds:    make(chan func(*actor)),
		done:    make(chan struct{}),
		drops:   map[DropReason]uint64{},
		lastLog: map[DropReason]time.Time{},
	}
	in.info = Info{State: Init, Priority: cfg.Priority, AdvertInt: cfg.AdvertInt}
	g.mu.Lock()
	g.instances[cfg.Name] = in
	ctx, cancel := context.WithCancel(g.ctx)
	in.cancel = cancel
	g.mu.Unlock()
	go func() {
		defer close(in.done)
		// An interface that does not exist yet (a VLAN created later) is
		// waited for in FAULT, as keepalived does, not given up on.
		r, err := g.attach(in)
		for logged := false; err != nil; r, err = g.attach(in) {
			if !logged {
				g.deps.Log.Warn("VRRP instance waits in FAULT for its interface", "instance", cfg.Name, "err", err)
				logged = true
			}
			in.fail(g, err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
		in.running.Store(true)
		in.run(ctx, g, r)
	}()
}

// attach registers in with its interface's router, opening the socket
// when it is the first instance there.
func (g *Group) attach(in *instance) (*router, error) {
	if c := in.config(); c.VMAC != "" && g.deps.VMACs != nil {
		if err := g.deps.VMACs.Ensure(c.Interface, c.VMAC, VirtualMAC(c.VRID, c.IPv6())); err != nil {
			return nil, err
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	key := routerKey{in.cfg.sockIf(), in.cfg.IPv6()}
	r := g.routers[key]
	if r == nil {
		conn, err := g.deps.Listen(key.ifname, key.ipv6)
		if err != nil {
			return nil, err
		}
		r = &router{key: key, conn: conn, done: make(chan struct{}), byVRID: map[uint8]*instance{}, drops: map[DropReason]uint64{}}
		if g.deps.Index != nil {
			r.index, _ = g.deps.Index(key.ifname)
		}
		g.routers[key] = r
		go r.readLoop(conn, r.done, g.deps.Log)
	}
	r.mu.Lock()
	r.byVRID[in.cfg.VRID] = in
	r.mu.Unlock()
	return r, nil
}

// stop ends an instance and closes its router's socket when it was the
// last one on it.
func (g *Group) stop(name string) {
	g.mu.Lock()
	in := g.instances[name]
	g.mu.Unlock()
	if in == nil {
		return
	}
	if in.cancel != nil {
		in.cancel()
	}
	<-in.done
	if c := in.config(); c.VMAC != "" && g.deps.VMACs != nil {
		defer func() {
			if err := g.deps.VMACs.Remove(c.VMAC); err != nil {
				g.deps.Log.Warn("VRRP: VMAC interface left behind", "instance", c.Name, "err", err)
			}
		}()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.instances, name)
	key := routerKey{in.cfg.sockIf(), in.cfg.IPv6()}
	r := g.routers[key]
	if r == nil {
		return
	}
	r.mu.Lock()
	if r.byVRID[in.cfg.VRID] == in {
		delete(r.byVRID, in.cfg.VRID)
	}
	empty := len(r.byVRID) == 0
	r.mu.Unlock()
	if empty {
		r.socket().Close()
		<-r.loopDone()
		delete(g.routers, key)
	}
}

func (r *router) readLoop(conn Conn, done chan struct{}, log *slog.Logger) {
	defer close(done)
	buf := make([]byte, 65536) // a peer on a jumbo-frame link may send long adverts
	for {
		n, src, dst, ttl, err := conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Warn("VRRP read failed", "interface", r.key.ifname, "err", err)
			time.Sleep(10 * time.Millisecond) // don't spin on a persistent error
			continue
		}
		r.dispatch(buf[:n], src, dst, ttl, log)
	}
}

// dispatch hands one received message to its instance, or counts it
// dropped.
func (r *router) dispatch(b []byte, src, dst netip.Addr, ttl int, log *slog.Logger) {
	a, _, reason := Parse(b, src, dst)
	var in *instance
	if len(b) >= 2 {
		r.mu.Lock()
		in = r.byVRID[b[1]]
		r.mu.Unlock()
	}
	// RFC 5798 §7.1: TTL must be 255. Unicast adverts may cross a
	// router, so keepalived (and we) skip the check there.
	if reason == "" && ttl != 255 && (in == nil || len(in.config().UnicastPeers) == 0) {
		reason = DropTTL
	}
	if in == nil {
		if reason == "" {
			reason = DropVRID
		}
		r.mu.Lock()
		r.drops[reason]++
		r.mu.Unlock()
		return
	}
	if reason != "" {
		in.drop(log, reason, src)
		return
	}
	select {
	case in.rx <- received{src: src, adv: a}:
	default:
		in.drop(log, "queue_full", src)
	}
}

// catchUp dispatches what the socket holds already, without waiting for
// the read loop to be run (see PendingReader).
func (r *router) catchUp(log *slog.Logger) {
	pr, ok := r.socket().(PendingReader)
	if !ok {
		return
	}
	buf := make([]byte, 65536)
	for range 64 { // a bound: a flood must not hold the instance here
		n, src, dst, ttl, ok, err := pr.ReadPending(buf)
		if err != nil || !ok {
			return
		}
		r.dispatch(buf[:n], src, dst, ttl, log)
	}
}

// drop counts a dropped packet and logs each reason at most once a minute.
func (in *instance) drop(log *slog.Logger, reason DropReason, src netip.Addr) {
	in.mu.Lock()
	in.drops[reason]++
	now := time.Now()
	quiet := now.Sub(in.lastLog[reason]) < time.Minute
	if !quiet {
		in.lastLog[reason] = now
	}
	count := in.drops[reason]
	name := in.cfg.Name // reconfigure replaces cfg under mu
	in.mu.Unlock()
	if !quiet {
		log.Warn("VRRP advert dropped", "instance", name, "reason", string(reason), "from", src, "count", count)
	}
}

// mismatch counts a v3 advert whose address list differs from ours and
// logs it at most once a minute (RFC 9568 §7.1: SHOULD log).
func (in *instance) mismatch(log *slog.Logger, src netip.Addr, addrs []netip.Addr) {
	in.mu.Lock()
	in.mismatches++
	now := time.Now()
	quiet := now.Sub(in.lastLog[addrListMismatch]) < time.Minute
	if !quiet {
		in.lastLog[addrListMismatch] = now
	}
	count, name, ours := in.mismatches, in.cfg.Name, in.cfg.VIPs
	in.mu.Unlock()
	if !quiet {
		log.Warn("VRRP advert lists other virtual addresses than this instance; check both configurations",
			"instance", name, "from", src, "theirs", addrs, "ours", ours, "count", count)
	}
}

// addrListMismatch keys the log limit of mismatch; it is not a drop.
const addrListMismatch DropReason = "addr_list_mismatch"

// fail puts an instance that cannot run yet (no interface, no source
// address) in FAULT: counted and notified like any transition.
func (in *instance) fail(g *Group, err error) {
	in.mu.Lock()
	in.err = err.Error()
	if in.info.State == Fault {
		in.mu.Unlock()
		return
	}
	t := Transition{From: in.info.State, To: Fault, Reason: err.Error(), At: g.deps.Now(), Priority: in.info.Priority}
	in.info.State, in.info.LastTransition = Fault, &t
	in.transitions++
	name := in.cfg.Name
	in.mu.Unlock()
	if g.deps.Notify != nil {
		g.deps.Notify(name, t)
	}
}

// run is the instance's event loop; it alone touches its Machine.
func (in *instance) run(ctx context.Context, g *Group, r *router) {
	log := g.deps.Log.With("instance", in.cfg.Name)
	src := in.cfg.UnicastSrc
	for logged := false; !src.IsValid(); {
		var err error
		// An owner's addresses are real ones: one may be the source,
		// perhaps the only address the interface has.
		notSource := in.cfg.VIPs
		if in.cfg.Priority == PriorityOwner {
			notSource = nil
		}
		src, err = g.deps.Primary(in.cfg.Interface, in.cfg.IPv6(), notSource)
		if err == nil {
			break
		}
		// No address yet (an interface being configured): wait in FAULT.
		if !logged {
			log.Warn("VRRP instance waits in FAULT for a source address", "err", err)
			in.fail(g, err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	in.mu.Lock()
	in.err, in.source = "", src
	in.mu.Unlock()

	m := NewMachine(g.fitted(log, in.cfg), src)
	a := &actor{in: in, g: g, r: r, m: m, src: src, log: log, added: map[netip.Prefix]bool{}}
	// Addresses left by an earlier run that died (kill -9) are ours and
	// must go until we are master again.
	a.removeVIPs()
	fault, prio := a.verdict()
	m.SetPriority(g.deps.Now(), prio)
	if fault != "" {
		a.apply(m.LinkDown(g.deps.Now(), fault))
	} else {
		a.apply(m.Start(g.deps.Now()))
	}

	hear := func(p received) {
		e, reason := m.Receive(g.deps.Now(), p.src, p.adv)
		if reason != "" {
			in.drop(log, reason, p.src)
			return
		}
		in.mu.Lock()
		in.received++
		in.mu.Unlock()
		if e.AddrListMismatch {
			in.mismatch(log, p.src, p.adv.Addrs)
		}
		if e.LowerPrio && g.deps.LowerPriority != nil {
			g.deps.LowerPriority(in.config().Name, p.src, p.adv.Priority)
		}
		a.apply(e)
	}
	timer := g.newTimer()
	defer timer.Stop()
	for {
		wait := time.Hour
		if d := m.Deadline(); !d.IsZero() {
			wait = max(d.Sub(g.deps.Now()), 0)
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			a.apply(m.Stop(g.deps.Now()))
			return
		case p := <-in.rx:
			hear(p)
		case <-timer.C():
			if m.State() == Backup && !g.deps.Now().Before(m.Deadline()) {
				// The master is due to be declared dead. If this process
				// was not run for a while, its adverts may wait in the
				// socket or in rx behind this expiry: hear them first.
				r.catchUp(log)
				for heard := true; heard; {
					select {
					case p := <-in.rx:
						hear(p)
					default:
						heard = false
					}
				}
			}
			a.apply(m.Tick(g.deps.Now()))
		case <-in.inputs:
			a.follow(g.deps.Now())
		case cmd := <-in.cmds:
			cmd(a)
		case <-a.garpDelay:
			a.garpDelay = nil
			if m.State() == Master {
				a.announce()
			}
		case <-a.garpRefresh:
			a.garpRefresh = nil
			if m.State() == Master {
				a.announce()
				a.garpRefresh = time.After(in.cfg.GARPRefresh)
			}
		}
	}
}

func (g *Group) newTimer() Timer {
	if g.deps.NewTimer != nil {
		return g.deps.NewTimer()
	}
	return NewRuntimeTimer()
}

// follow applies the links' verdict: FAULT, or back from it, and the
// effective priority.
func (a *actor) follow(now time.Time) {
	fault, prio := a.verdict()
	a.apply(a.m.SetPriority(now, prio))
	switch {
	case fault != "" && a.m.State() != Fault:
		a.apply(a.m.LinkDown(now, fault))
	case fault == "" && a.m.State() == Fault:
		a.apply(a.m.LinkUp(now))
	}
}

// verdict records the instance's own FAULT reason and returns the one in
// force, its own or its sync group's, with the effective priority.
func (a *actor) verdict() (fault string, prio uint8) {
	own, prio := a.in.health(a.g)
	if own == "" {
		own = a.resolveSource()
	}
	a.in.mu.Lock()
	changed := a.in.selfFault != own
	a.in.selfFault = own
	a.in.mu.Unlock()
	if changed {
		for _, m := range a.g.syncMembers(a.in) {
			select {
			case m.inputs <- struct{}{}:
			default:
			}
		}
	}
	if own != "" {
		return own, prio
	}
	for _, m := range a.g.syncMembers(a.in) {
		m.mu.Lock()
		f, name := m.selfFault, m.cfg.Name
		m.mu.Unlock()
		if f != "" {
			return fmt.Sprintf("sync group %s: %s is FAULT (%s)", a.in.cfg.SyncGroup, name, f), prio
		}
	}
	return "", prio
}

// resolveSource looks up the source address again (the interface may have
// been renumbered) and follows it; without one the instance is FAULT, as
// keepalived goes: a master must not go on holding the VIPs while its
// adverts cannot leave.
func (a *actor) resolveSource() string {
	cfg := a.in.config()
	if cfg.UnicastSrc.IsValid() || a.g.deps.Primary == nil {
		return ""
	}
	notSource := cfg.VIPs
	if cfg.Priority == PriorityOwner {
		notSource = nil
	}
	src, err := a.g.deps.Primary(cfg.Interface, cfg.IPv6(), notSource)
	if err != nil {
		return "no source address: " + err.Error()
	}
	if src != a.src {
		a.log.Info("VRRP: the source address changed", "was", a.src, "now", src)
		a.src = src
		a.m.SetPrimary(src)
		a.in.mu.Lock()
		a.in.source = src
		a.in.mu.Unlock()
	}
	return ""
}

// syncMembers returns the other members of in's sync group.
func (g *Group) syncMembers(in *instance) []*instance {
	name := in.config().SyncGroup
	if name == "" {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*instance
	for _, m := range g.instances {
		if m != in && m.config().SyncGroup == name {
			out = append(out, m)
		}
	}
	return out
}

// syncTransition moves the other members of in's sync group to MASTER or
// BACKUP with it. Each is told through its own event loop, from a
// goroutine, so that two members never wait on each other.
func (g *Group) syncTransition(in *instance, to State) {
	cfg := in.config()
	reason := fmt.Sprintf("sync group %s: %s is %s", cfg.SyncGroup, cfg.Name, to)
	for _, m := range g.syncMembers(in) {
		cmd := func(b *actor) {
			now := g.deps.Now()
			if to == Master {
				b.applyEffects(b.m.ForceMaster(now, reason), false)
			} else {
				b.applyEffects(b.m.ForceBackup(now, reason), false)
			}
		}
		go func() {
			select {
			case m.cmds <- cmd:
			case <-m.done:
			}
		}()
	}
}

// actor carries out a Machine's effects.
type actor struct {
	in   *instance
	g    *Group
	r    *router
	m    *Machine
	src  netip.Addr
	log  *slog.Logger
	held bool // the virtual addresses are on the interface
	// added are the addresses this instance put on the interface (an
	// owner's may have been there before).
	added map[netip.Prefix]bool
	// refusing: the Acceptor refuses packets to the VIPs for this
	// instance (no_accept).
	refusing bool
	// garpDelay and garpRefresh fire the follow-up gratuitous ARP bursts.
	garpDelay, garpRefresh <-chan time.Time
}

func (a *actor) apply(e Effects) { a.applyEffects(e, true) }

// applyEffects carries out e; with propagate, a move to MASTER or from
// MASTER to BACKUP carries the instance's sync group along (a forced move
// does not propagate again).
func (a *actor) applyEffects(e Effects, propagate bool) {
	cfg := &a.in.cfg
	if t := e.Transition; t != nil {
		if t.To == Master {
			a.addVIPs()
		}
		a.log.Info("VRRP transition", "from", t.From, "to", t.To, "reason", t.Reason)
	}
	if e.Send {
		a.send(e.SendPriority)
	}
	if t := e.Transition; t != nil && t.To != Master && a.held {
		a.removeVIPs()
	}
	if e.GARP {
		repeat, delay := cfg.GARPRepeat, cfg.GARPDelay
		if e.LowerPrio {
			// keepalived's garp_lower_prio_*: a lower priority heard
			// means a peer (or its hosts) may have the addresses wrong.
			if cfg.GARPLowerPrioRepeat > 0 {
				repeat = cfg.GARPLowerPrioRepeat
			}
			if cfg.GARPLowerPrioDelay > 0 {
				delay = cfg.GARPLowerPrioDelay
			}
		}
		a.announceN(repeat)
		if delay > 0 {
			a.garpDelay = time.After(delay)
		}
		if cfg.GARPRefresh > 0 && a.garpRefresh == nil {
			a.garpRefresh = time.After(cfg.GARPRefresh)
		}
	}
	a.in.mu.Lock()
	a.in.info = a.m.Info()
	if e.Transition != nil {
		a.in.transitions++
	}
	a.in.mu.Unlock()
	if t := e.Transition; t != nil && a.g.deps.Notify != nil {
		a.g.deps.Notify(cfg.Name, *t)
	}
	if t := e.Transition; t != nil && propagate && cfg.SyncGroup != "" &&
		(t.To == Master || t.From == Master && t.To == Backup) {
		a.g.syncTransition(a.in, t.To)
	}
}

// advertised are the addresses adverts carry.
func (a *actor) advertised() []netip.Addr { return addrsOf(a.m.cfg.VIPs) }

func addrsOf(ps []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, len(ps))
	for i, p := range ps {
		out[i] = p.Addr()
	}
	return out
}

// fitted is c as its Machine gets it, with the VIPs that do not fit an
// advert on its link moved to the excluded ones, which is logged.
func (g *Group) fitted(log *slog.Logger, c Config) Config {
	mtu := 0
	if g.deps.MTU != nil {
		mtu = g.deps.MTU(c.sockIf())
	}
	if mtu <= 0 {
		mtu = 1500
	}
	f := c.fitted(mtu)
	if len(f.VIPs) < len(c.VIPs) {
		log.Warn("VRRP: not every virtual address fits an advert; the rest are held but not advertised (as virtual_ipaddress_excluded)",
			"virtual_ipaddress", len(c.VIPs), "advertised", len(f.VIPs), "mtu", mtu)
	}
	return f
}

func (a *actor) send(prio uint8) {
	cfg := &a.in.cfg
	adv := Advert{Version: cfg.Version, VRID: cfg.VRID, Priority: prio, Interval: cfg.AdvertInt, Addrs: a.advertised()}
	if cfg.Version == 2 && cfg.AuthPass != "" {
		adv.AuthType = AuthSimple
		copy(adv.AuthData[:], cfg.AuthPass)
	}
	dsts := cfg.UnicastPeers
	if len(dsts) == 0 {
		dsts = []netip.Addr{GroupIPv4}
		if cfg.IPv6() {
			dsts = []netip.Addr{GroupIPv6}
		}
	}
	for _, dst := range dsts {
		if err := a.r.socket().WriteTo(adv.Marshal(a.src, dst, !cfg.ChecksumAsV2), a.src, dst); err != nil {
			a.log.Warn("VRRP advert not sent", "to", dst, "err", err)
			continue
		}
		a.in.mu.Lock()
		a.in.sent++
		a.in.mu.Unlock()
	}
}

func (a *actor) addVIPs() {
	for _, p := range a.in.cfg.held() {
		a.addVIP(p)
	}
	a.held = true
	a.acceptMode()
	a.routing(a.in.cfg.Routes, a.in.cfg.Rules, true)
}

func (a *actor) removeVIPs() {
	a.routing(a.in.cfg.Routes, a.in.cfg.Rules, false)
	for _, p := range a.in.cfg.held() {
		a.removeVIP(p)
	}
	a.held = false
	a.acceptMode()
}

// routing adds (or removes) the virtual routes and rules: routes after
// the addresses they may need (a src, a gateway on a VIP's subnet).
func (a *actor) routing(routes []Route, rules []Rule, add bool) {
	rt := a.g.deps.Routing
	if rt == nil {
		return
	}
	dev := a.in.cfg.addrIf()
	for _, r := range routes {
		f := rt.RemoveRoute
		if add {
			f = rt.AddRoute
		}
		if err := f(dev, r); err != nil {
			a.log.Error("VRRP: virtual route", "err", err)
		}
	}
	for _, r := range rules {
		f := rt.RemoveRule
		if add {
			f = rt.AddRule
		}
		if err := f(r); err != nil {
			a.log.Error("VRRP: virtual rule", "err", err)
		}
	}
}

// acceptMode makes a master of a no_accept instance refuse packets to its
// addresses (an owner always accepts them, RFC 9568 §6.1), and lifts that
// otherwise.
func (a *actor) acceptMode() {
	acc := a.g.deps.Acceptor
	if acc == nil {
		return
	}
	cfg := a.in.cfg
	var err error
	switch {
	case a.held && cfg.NoAccept && cfg.Priority != PriorityOwner:
		err = acc.Refuse(cfg.Name, addrsOf(cfg.held()))
		a.refusing = true
	case a.refusing || cfg.NoAccept:
		// (no_accept at start: a run that died may have left a refusal.)
		err = acc.Accept(cfg.Name)
		a.refusing = false
	}
	if err != nil {
		a.log.Error("VRRP: no_accept not enforced", "err", err)
	}
}

func (a *actor) addVIP(p netip.Prefix) {
	added, err := a.g.deps.Addresses.Add(a.in.cfg.addrIf(), p)
	if err != nil {
		a.log.Error("VRRP: cannot add a virtual address", "err", err)
	}
	if added {
		a.added[p] = true
	}
}

// removeVIP takes p away. An address owner's addresses are the host's
// own: it takes away only one it added itself (keepalived leaves them).
func (a *actor) removeVIP(p netip.Prefix) {
	if a.in.cfg.Priority == PriorityOwner && !a.added[p] {
		return
	}
	if err := a.g.deps.Addresses.Remove(a.in.cfg.addrIf(), p); err != nil {
		a.log.Error("VRRP: cannot remove a virtual address", "err", err)
	}
	delete(a.added, p)
}

func (a *actor) announce() { a.announceN(a.in.cfg.GARPRepeat) }

func (a *actor) announceN(repeat int) {
	if err := a.g.deps.Announcer.Announce(a.in.cfg.addrIf(), addrsOf(a.in.cfg.held()), repeat); err != nil {
		a.log.Warn("VRRP: announcing the virtual addresses failed", "err", err)
	}
}

// Failover makes the named instance, if master here, hand over: it sends
// priority 0 and stays backup for hold. The other members of its sync
// group, which step down with it, are held as long.
func (g *Group) Failover(ctx context.Context, name string, hold time.Duration) error {
	if err := g.command(ctx, name, func(a *actor) error {
		e, err := a.m.Resign(g.deps.Now(), hold)
		if err == nil {
			a.apply(e)
		}
		return err
	}); err != nil {
		return err
	}
	return g.groupCommand(ctx, name, func(a *actor) { a.m.Hold(g.deps.Now(), hold) })
}

// EndHold ends the named instance's hold (Failover's or preempt_delay's)
// now, and its sync group's, so that they preempt again if they may.
func (g *Group) EndHold(ctx context.Context, name string) error {
	if err := g.command(ctx, name, func(a *actor) error {
		a.m.EndHold(g.deps.Now())
		return nil
	}); err != nil {
		return err
	}
	return g.groupCommand(ctx, name, func(a *actor) { a.m.EndHold(g.deps.Now()) })
}

// groupCommand runs fn in each other member of the named instance's sync
// group, one after another (never from inside an actor: two actors must
// not wait on each other).
func (g *Group) groupCommand(ctx context.Context, name string, fn func(*actor)) error {
	g.mu.Lock()
	in := g.instances[name]
	g.mu.Unlock()
	if in == nil {
		return fmt.Errorf("no VRRP instance %q", name)
	}
	for _, m := range g.syncMembers(in) {
		if err := g.command(ctx, m.config().Name, func(a *actor) error { fn(a); return nil }); err != nil {
			return err
		}
	}
	return nil
}

// command runs fn in the named instance's actor and returns its error.
func (g *Group) command(ctx context.Context, name string, fn func(*actor) error) error {
	g.mu.Lock()
	in := g.instances[name]
	g.mu.Unlock()
	if in == nil {
		return fmt.Errorf("no VRRP instance %q", name)
	}
	errc := make(chan error, 1)
	select {
	case in.cmds <- func(a *actor) { errc <- fn(a) }:
	case <-in.done:
		return fmt.Errorf("VRRP instance %q is not running", name)
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-errc
}

// Ping asks the event loop of every running instance to answer within ctx:
// one that cannot is stalled (the systemd watchdog asks this).
func (g *Group) Ping(ctx context.Context) error {
	g.mu.Lock()
	var names []string
	for name, in := range g.instances {
		if in.running.Load() {
			names = append(names, name)
		}
	}
	g.mu.Unlock()
	for _, name := range names {
		err := g.command(ctx, name, func(*actor) error { return nil })
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("VRRP instance %s did not answer: %w", name, err)
		}
	}
	return nil
}

// InstanceStatus is one virtual router as status shows it.
type InstanceStatus struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface"`
	VRID      uint8    `json:"virtual_router_id"`
	Version   int      `json:"version"`
	VIPs      []string `json:"virtual_ipaddress"`
	Source    string   `json:"source,omitempty"`
	Info
	AdvertsSent     uint64                `json:"adverts_sent"`
	AdvertsReceived uint64                `json:"adverts_received"`
	Transitions     uint64                `json:"transitions"`
	Drops           map[DropReason]uint64 `json:"drops"`
	// AddrListMismatches counts adverts (v3) processed although their
	// address list differs from this instance's.
	AddrListMismatches uint64 `json:"addr_list_mismatches,omitempty"`
	Error              string `json:"error,omitempty"`
}

// Status returns every instance, sorted by name.
func (g *Group) Status() []InstanceStatus {
	g.mu.Lock()
	ins := make([]*instance, 0, len(g.instances))
	for _, in := range g.instances {
		ins = append(ins, in)
	}
	g.mu.Unlock()
	out := make([]InstanceStatus, 0, len(ins))
	for _, in := range ins {
		in.mu.Lock()
		vips := make([]string, 0, len(in.cfg.VIPs))
		for _, p := range in.cfg.VIPs {
			vips = append(vips, p.String())
		}
		s := InstanceStatus{VIPs: vips,
			Name: in.cfg.Name, Interface: in.cfg.Interface, VRID: in.cfg.VRID, Version: in.cfg.Version,
			Info: in.info, AdvertsSent: in.sent, AdvertsReceived: in.received, Transitions: in.transitions,
			Drops: map[DropReason]uint64{}, Error: in.err, AddrListMismatches: in.mismatches,
		}
		if in.source.IsValid() {
			s.Source = in.source.String()
		}
		for k, v := range in.drops {
			s.Drops[k] = v
		}
		in.mu.Unlock()
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b InstanceStatus) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// UnattributedDrops counts packets dropped before an instance could be
// found for them (unknown VRID, or too short to name one), by interface.
func (g *Group) UnattributedDrops() map[string]map[DropReason]uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := map[string]map[DropReason]uint64{}
	for k, r := range g.routers {
		r.mu.Lock()
		if len(r.drops) > 0 {
			m := map[DropReason]uint64{}
			for reason, n := range r.drops {
				m[reason] = n
			}
			out[k.ifname] = m
		}
		r.mu.Unlock()
	}
	return out
}

package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/bgp"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
	"github.com/prometheus/client_golang/prometheus"
)

// bgpManager announces the addresses of the virtual servers with announce
// = "bgp" while this director can serve them: the data plane holds a
// service of the address, with quorum, and no operator withdrew it. The
// addresses sit on lo (no ARP for them). On stop it marks its routes
// GRACEFUL_SHUTDOWN, waits shutdown_delay with the data plane still
// serving, then withdraws them and closes the sessions.
type bgpManager struct {
	log      *slog.Logger
	sp       Announcer
	lvs      *lvsManager
	loopback func(netip.Prefix, bool) (bool, error)
	// servable says why the service of a virtual server cannot serve
	// here, or "" when it can.
	servable func(vs config.VirtualServer) string
	kick     chan struct{}
	done     chan struct{} // closed once the routes are withdrawn at stop

	mu       sync.Mutex
	cfg      *config.Config
	held     map[string]bool // virtual servers an operator withdrew
	state    map[netip.Prefix]string
	onLo     map[netip.Prefix]bool // addresses put on lo here
	stopping bool
}

func newBGPManager(log *slog.Logger, cfg *config.Config, deps Deps, m *lvsManager) (*bgpManager, error) {
	if cfg.BGP == nil {
		return nil, nil
	}
	if deps.BGP == nil || deps.Loopback == nil {
		return nil, errors.New("[bgp]: no BGP speaker on this build")
	}
	c := bgp.Config{LocalAS: cfg.BGP.LocalAS, RouterID: cfg.BGP.RouterID}
	for _, s := range cfg.BGP.Communities {
		v, err := config.ParseCommunity(s)
		if err != nil {
			return nil, err
		}
		c.Communities = append(c.Communities, v)
	}
	for _, n := range cfg.BGP.Neighbors {
		c.Neighbors = append(c.Neighbors, bgp.Neighbor{Address: n.Address, PeerAS: n.PeerAS, Port: n.Port, Password: n.Password, HoldTime: n.HoldTime})
	}
	log = log.With("subsystem", "bgp")
	b := &bgpManager{log: log, sp: deps.BGP(log, c), lvs: m, loopback: deps.Loopback, cfg: cfg,
		kick: make(chan struct{}, 1), done: make(chan struct{}), held: map[string]bool{},
		state: map[netip.Prefix]string{}, onLo: map[netip.Prefix]bool{}}
	b.servable = b.lvsServable
	return b, nil
}

// prefixes maps each announced address to its virtual servers.
func bgpPrefixes(cfg *config.Config) map[netip.Prefix][]config.VirtualServer {
	out := map[netip.Prefix][]config.VirtualServer{}
	for _, vs := range cfg.VirtualServers {
		if vs.Announce != config.AnnounceBGP {
			continue
		}
		p := hostPrefix(vs)
		out[p] = append(out[p], vs)
	}
	return out
}

// hostPrefix is the route announced for vs: its address as a /32 or /128.
func hostPrefix(vs config.VirtualServer) netip.Prefix {
	a := vs.Address.Addr()
	return netip.PrefixFrom(a, a.BitLen())
}

// lvsServable is the data plane's answer: the service is programmed (not
// refused) and has quorum (which the last real server's drain loses).
func (b *bgpManager) lvsServable(vs config.VirtualServer) string {
	if b.lvs == nil || b.lvs.rec == nil {
		return "no data plane"
	}
	k := lvsKey(vs)
	if e, refused := b.lvs.rec.Last().Refused[k.String()]; refused {
		return "the kernel refused the service: " + e
	}
	up, known := b.lvs.rec.QuorumUp()[k]
	switch {
	case !known:
		return "not programmed yet"
	case !up:
		return "quorum lost"
	}
	return ""
}

func (b *bgpManager) apply(cfg *config.Config) {
	b.mu.Lock()
	b.cfg = cfg
	b.mu.Unlock()
	b.wake()
}

func (b *bgpManager) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// Run keeps the announcements in line with what the director can serve
// until ctx ends, then shuts down gracefully.
func (b *bgpManager) Run(ctx context.Context) error {
	defer close(b.done)
	if err := b.sp.Start(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			b.shutdown()
			return nil
		case <-tick.C:
		case <-b.kick:
		}
		b.sync(ctx)
	}
}

// sync announces and withdraws; each change is logged once.
func (b *bgpManager) sync(ctx context.Context) {
	b.mu.Lock()
	cfg, held := b.cfg, maps.Clone(b.held)
	b.mu.Unlock()
	prefixes := bgpPrefixes(cfg)
	for p, vss := range prefixes {
		// One route per address: announced while any of its services can
		// serve (the others' clients would find no director either).
		why := ""
		for _, vs := range vss {
			w := b.servable(vs)
			if held[vs.Name] {
				w = "withdrawn by an operator (directorctl bgp announce " + vs.Name + ")"
			}
			if w == "" {
				why = ""
				break
			}
			if why == "" {
				why = vs.Name + ": " + w
			}
		}
		b.putOnLo(p)
		b.mu.Lock()
		prev, seen := b.state[p]
		b.mu.Unlock()
		var err error
		if why == "" {
			err = b.sp.Announce(ctx, p)
		} else {
			err = b.sp.Withdraw(ctx, p)
		}
		if err != nil {
			b.log.Error("BGP announcement failed", "prefix", p, "err", err)
			continue
		}
		if !seen || prev != why {
			if why == "" {
				b.log.Info("BGP: announced", "prefix", p)
			} else {
				b.log.Warn("BGP: withdrawn", "prefix", p, "reason", why)
			}
		}
		b.mu.Lock()
		b.state[p] = why
		b.mu.Unlock()
	}
	// Addresses no longer in the file.
	b.mu.Lock()
	var gone []netip.Prefix
	for p := range b.state {
		if _, ok := prefixes[p]; !ok {
			gone = append(gone, p)
		}
	}
	b.mu.Unlock()
	for _, p := range gone {
		if err := b.sp.Withdraw(ctx, p); err != nil {
			b.log.Error("BGP withdrawal failed", "prefix", p, "err", err)
			continue
		}
		b.takeOffLo(p)
		b.mu.Lock()
		delete(b.state, p)
		b.mu.Unlock()
		b.log.Info("BGP: withdrawn, no longer configured", "prefix", p)
	}
}

func (b *bgpManager) putOnLo(p netip.Prefix) {
	b.mu.Lock()
	_, done := b.onLo[p]
	b.mu.Unlock()
	if done {
		return
	}
	was, err := b.loopback(p, true)
	if err != nil {
		b.log.Error("cannot put the announced address on lo", "prefix", p, "err", err)
		return
	}
	b.mu.Lock()
	b.onLo[p] = !was // only what this director added is taken off
	b.mu.Unlock()
}

func (b *bgpManager) takeOffLo(p netip.Prefix) {
	b.mu.Lock()
	ours := b.onLo[p]
	delete(b.onLo, p)
	b.mu.Unlock()
	if !ours {
		return
	}
	if _, err := b.loopback(p, false); err != nil {
		b.log.Error("cannot take the announced address off lo", "prefix", p, "err", err)
	}
}

// shutdown: GRACEFUL_SHUTDOWN first, so that the routers move the flows
// to the other directors while this one still serves them; then the
// withdrawal, the sessions' end and the addresses off lo.
func (b *bgpManager) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b.mu.Lock()
	b.stopping = true
	delay := b.cfg.BGP.ShutdownDelay
	b.mu.Unlock()
	announced := b.announcedPrefixes()
	if len(announced) > 0 && delay > 0 {
		if err := b.sp.GracefulShutdown(ctx); err != nil {
			b.log.Error("BGP: GRACEFUL_SHUTDOWN not sent", "err", err)
		} else {
			b.log.Info("BGP: routes marked GRACEFUL_SHUTDOWN; withdrawing after shutdown_delay", "delay", delay)
			time.Sleep(delay)
		}
	}
	for _, p := range announced {
		if err := b.sp.Withdraw(ctx, p); err != nil {
			b.log.Error("BGP withdrawal failed", "prefix", p, "err", err)
		}
	}
	if err := b.sp.Stop(); err != nil {
		b.log.Warn("BGP: stopping the sessions", "err", err)
	}
	b.mu.Lock()
	var onLo []netip.Prefix
	for p := range b.onLo {
		onLo = append(onLo, p)
	}
	b.mu.Unlock()
	for _, p := range onLo {
		b.takeOffLo(p)
	}
	b.log.Info("BGP: withdrawn and stopped", "prefixes", len(announced))
}

func (b *bgpManager) status(ctx context.Context) *api.BGPStatus {
	b.mu.Lock()
	cfg := b.cfg
	st := &api.BGPStatus{LocalAS: cfg.BGP.LocalAS, RouterID: cfg.BGP.RouterID.String(), ShuttingDown: b.stopping,
		Peers: []api.BGPPeer{}, Prefixes: []api.BGPPrefix{}}
	state := maps.Clone(b.state)
	b.mu.Unlock()
	peers, err := b.sp.Peers(ctx)
	if err != nil {
		st.Error = err.Error()
	}
	for _, p := range peers {
		st.Peers = append(st.Peers, api.BGPPeer{Address: p.Address.String(), PeerAS: p.PeerAS, State: p.State, Since: p.Since})
	}
	for p, vss := range bgpPrefixes(cfg) {
		why, seen := state[p]
		if !seen {
			why = "not yet decided"
		}
		bp := api.BGPPrefix{Prefix: p.String(), Announced: seen && why == "", Reason: why}
		for _, vs := range vss {
			bp.Services = append(bp.Services, vs.Name)
		}
		st.Prefixes = append(st.Prefixes, bp)
	}
	sort.Slice(st.Prefixes, func(i, j int) bool { return st.Prefixes[i].Prefix < st.Prefixes[j].Prefix })
	return st
}

// handleHold answers POST /v1/bgp/withdraw and /v1/bgp/announce: an
// operator takes a virtual server's address back for maintenance, or
// ends that.
func (b *bgpManager) handleHold(hold bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req api.BGPHold
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			status.WriteError(w, http.StatusBadRequest, err)
			return
		}
		if !b.setHold(r.Context(), req.Service, hold, "an operator") {
			status.WriteError(w, http.StatusNotFound, fmt.Errorf("no virtual server %q with announce = \"bgp\"", req.Service))
			return
		}
		status.WriteJSON(w, http.StatusOK, b.status(r.Context()))
	}
}

// setHold withdraws (hold) or announces again a virtual server's address
// at once; false when there is no such virtual server with announce =
// "bgp".
func (b *bgpManager) setHold(ctx context.Context, name string, hold bool, by string) bool {
	b.mu.Lock()
	ok := slices.ContainsFunc(b.cfg.VirtualServers, func(vs config.VirtualServer) bool {
		return vs.Name == name && vs.Announce == config.AnnounceBGP
	})
	if ok {
		if hold {
			b.held[name] = true
		} else {
			delete(b.held, name)
		}
	}
	b.mu.Unlock()
	if !ok {
		return false
	}
	verb := map[bool]string{true: "withdrawn", false: "announced again"}[hold]
	b.log.Info("BGP: virtual server "+verb+" by "+by, "virtual_server", name)
	b.sync(ctx)
	return true
}

// announcedPrefixes are the prefixes announced here.
func (b *bgpManager) announcedPrefixes() []netip.Prefix {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []netip.Prefix
	for p, why := range b.state {
		if why == "" {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return out
}

// announced is announcedPrefixes as text, for the other directors' drill
// gates.
func (b *bgpManager) announced() []string {
	var out []string
	for _, p := range b.announcedPrefixes() {
		out = append(out, p.String())
	}
	return out
}

// bgpCollector exports the sessions and the announcements.
type bgpCollector struct {
	b               *bgpManager
	peer, announced *prometheus.Desc
}

func newBGPCollector(b *bgpManager) *bgpCollector {
	return &bgpCollector{b: b,
		peer: prometheus.NewDesc("directord_bgp_session_established", "1 while the BGP session with the router is established.",
			[]string{"neighbor"}, nil),
		announced: prometheus.NewDesc("directord_bgp_prefix_announced", "1 while this director announces the address (0: withdrawn; directorctl bgp says why).",
			[]string{"prefix"}, nil),
	}
}

func (c *bgpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.peer
	ch <- c.announced
}

func (c *bgpCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st := c.b.status(ctx)
	for _, p := range st.Peers {
		ch <- prometheus.MustNewConstMetric(c.peer, prometheus.GaugeValue, one(p.State == "established"), p.Address)
	}
	for _, p := range st.Prefixes {
		ch <- prometheus.MustNewConstMetric(c.announced, prometheus.GaugeValue, one(p.Announced), p.Prefix)
	}
}

// loopbackAddr puts p on lo, or takes it off; was says whether it was
// there already.
func loopbackAddr(p netip.Prefix, add bool) (bool, error) {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return false, fmt.Errorf("lo: %w", err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if !add {
		if err := netlink.AddrDel(lo, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return true, fmt.Errorf("take %s off lo: %w", p, err)
		}
		return true, nil
	}
	if err := netlink.AddrAdd(lo, a); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return true, nil
		}
		return false, fmt.Errorf("put %s on lo: %w", p, err)
	}
	return false, nil
}

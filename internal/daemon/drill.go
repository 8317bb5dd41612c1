package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/directord/directord/cluster"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/daemon/probe"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/lvs"
	dsync "github.com/directord/directord/sync"
	"github.com/directord/directord/vrrp"
)

// A failover drill (directorctl drill) moves an instance mastered here to
// the peer on purpose, after checking that the peer is ready to carry it,
// and measures from this host what the handover cost.

// drillConfirm is how long a drill waits to see its checks pass again:
// longer than the peers' publishing interval and a few gossip rounds.
const drillConfirm = time.Second

// drillsKept is how many drills status remembers.
const drillsKept = 10

// peerInfo is what a director tells the others about itself through the
// cluster's gossip, so that a drill can see its peer. memberlist carries
// at most 512 bytes of it.
type peerInfo struct {
	// VRRP is "STATE/priority" by instance.
	VRRP    map[string]string `json:"vrrp,omitempty"`
	Applied uint64            `json:"applied"`
	// Table is the digest of the load-balancer table programmed here.
	Table string `json:"table,omitempty"`
	// TableError: the committed table is not in force here (the data
	// plane refused it, or fails to program it).
	TableError bool `json:"table_error,omitempty"`
	// Sync is the connection sync's state: "conntrack master connected",
	// "conntrack backup", "ipvs backup", "ipvs master+backup".
	Sync string `json:"sync,omitempty"`
	// BGP are the prefixes this director announces.
	BGP []string `json:"bgp,omitempty"`
}

func (d *Daemon) peerInfo() peerInfo {
	info := peerInfo{VRRP: map[string]string{}, Applied: d.cluster.node.AppliedIndex()}
	for _, s := range d.vrrp.Status() {
		info.VRRP[s.Name] = fmt.Sprintf("%s/%d", s.State, s.Priority)
	}
	if d.lbReady.Load() {
		info.Table = d.lvs.digest()
	}
	_, terr := d.cluster.programmed()
	info.TableError = terr != ""
	info.Sync = d.syncState()
	if d.bgp != nil {
		info.BGP = d.bgp.announced()
	}
	return info
}

func (d *Daemon) syncState() string {
	if c := d.ctsync; c != nil {
		st := c.s.Status()
		s := "conntrack " + st.Role
		if st.Connected {
			s += " connected"
		}
		return s
	}
	if s := d.syncd; s != nil && s.cfg != nil {
		ds, err := lvs.SyncDaemons()
		if err != nil {
			return "ipvs error"
		}
		var states []string
		for _, x := range ds {
			states = append(states, x.State.String())
		}
		slices.Sort(states)
		return "ipvs " + strings.Join(states, "+")
	}
	return ""
}

// publishLoop keeps this node's peerInfo current in the gossip.
func (d *Daemon) publishLoop(ctx context.Context) error {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		b, _ := json.Marshal(d.peerInfo())
		if err := d.cluster.node.SetAppMeta(b); err != nil {
			d.log.Debug("cluster: node metadata not published", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (d *Daemon) handleDrill(w http.ResponseWriter, r *http.Request) {
	var req api.DrillRequest
	if !d.startDrill(w, r, &req) {
		return
	}
	defer d.drillMu.Unlock()
	// A drill under way finishes even if directorctl goes away: left
	// half-way, this director would stay backup for the whole hold.
	res, err := d.drill(context.WithoutCancel(r.Context()), req)
	if err != nil {
		status.WriteError(w, http.StatusBadRequest, err)
		return
	}
	d.mu.Lock()
	d.drillCount++
	res.Number = d.drillCount
	d.drills = append(d.drills, res)
	if len(d.drills) > drillsKept {
		d.drills = d.drills[len(d.drills)-drillsKept:]
	}
	d.mu.Unlock()
	outcome := "ok"
	switch {
	case res.Refused != "":
		outcome = "refused"
		d.log.Warn("drill refused: nothing moved", "number", res.Number, "instance", res.Instance, "reason", res.Refused)
	case !res.OK:
		outcome = "failed"
		d.log.Error("drill failed", "number", res.Number, "instance", res.Instance, "err", res.Error)
	default:
		args := []any{"number", res.Number, "instance", res.Instance, "peer", res.Peer, "gap", res.Handover.Gap,
			"new_master", res.Handover.Master, "moved", res.Moved}
		d.mDrillGap.WithLabelValues(res.Instance).Observe(res.Handover.GapMS / 1000)
		if res.Back != nil {
			args = append(args, "back_gap", res.Back.Gap)
			d.mDrillGap.WithLabelValues(res.Instance).Observe(res.Back.GapMS / 1000)
		}
		d.log.Info("drill done", args...)
	}
	d.mDrills.WithLabelValues(outcome).Inc()
	status.WriteJSON(w, http.StatusOK, res)
}

// startDrill decodes a drill request into req (an empty body is the
// defaults) and takes the drill lock; false: it answered the error (a bad
// request, or a drill running already).
func (d *Daemon) startDrill(w http.ResponseWriter, r *http.Request, req any) bool {
	if r.ContentLength != 0 {
		if err := json.NewDecoder(r.Body).Decode(req); err != nil {
			status.WriteError(w, http.StatusBadRequest, fmt.Errorf("bad request: %w", err))
			return false
		}
	}
	if !d.drillMu.TryLock() {
		status.WriteError(w, http.StatusConflict, errors.New("a drill is running already"))
		return false
	}
	return true
}

func (d *Daemon) drillsStatus() *api.DrillsStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &api.DrillsStatus{Drills: slices.Clone(d.drills)}
}

// drill runs one drill. An error is a bad request; a refusal or a failed
// handover is in the result.
func (d *Daemon) drill(ctx context.Context, req api.DrillRequest) (res api.DrillResult, err error) {
	cfg := d.config()
	res = api.DrillResult{Node: cfg.Node.Name, Started: time.Now(), Instance: req.Instance}
	defer func() { res.Duration = time.Since(res.Started).Round(time.Millisecond).String() }()
	if cfg.Node.Role == "witness" {
		return res, errors.New("a witness runs no VRRP: run the drill on the master")
	}
	hold := api.DefaultDrillHold
	if req.Hold != "" {
		h, err := time.ParseDuration(req.Hold)
		if err != nil || h <= 0 {
			return res, fmt.Errorf("hold %q is not a positive duration", req.Hold)
		}
		hold = h
	}
	states := map[string]vrrp.InstanceStatus{}
	var masters []string
	for _, s := range d.vrrp.Status() {
		states[s.Name] = s
		if s.State == vrrp.Master {
			masters = append(masters, s.Name)
		}
	}
	if res.Instance == "" {
		// Instances of one sync group move together: one drill.
		if len(masters) > 1 && !slices.ContainsFunc(masters, func(m string) bool {
			return !slices.Contains(movingWith(cfg, masters[0]), m)
		}) {
			masters = masters[:1]
		}
		if len(masters) != 1 {
			return res, fmt.Errorf("name the instance to drill with --instance (mastered here: %s)", listOrNone(masters))
		}
		res.Instance = masters[0]
	}
	inst, ok := findInstance(cfg, res.Instance)
	if !ok {
		return res, fmt.Errorf("no VRRP instance %q", res.Instance)
	}
	res.AdvertInt = inst.AdvertInt.String()
	if st := states[inst.Name]; st.State != vrrp.Master {
		res.Refused = fmt.Sprintf("%s is %s here: run the drill on its master", inst.Name, st.State)
		if st.Master != "" {
			res.Refused += " (" + st.Master + ")"
		}
		return res, nil
	}
	target, err := probeTarget(inst, req.Probe)
	if err != nil {
		return res, err
	}
	res.Probe = target.describe()
	moving := movingWith(cfg, inst.Name)

	// The peer's gossip runs a moment behind (it publishes every half
	// second): a refusal is retried for a while in case it is catching
	// up, and a pass is confirmed once gossip has had time to bring
	// news of a change made on the peer just before.
	deadline := time.Now().Add(5 * time.Second)
	for passes := 0; passes < 2; {
		res.Checks, res.Peer = d.drillChecks(inst, moving, req.Back)
		wait := 100 * time.Millisecond
		if res.Refused = refusal(res.Checks); res.Refused == "" {
			passes++
			wait = drillConfirm
		} else if passes = 0; d.cluster == nil || time.Now().After(deadline) {
			// Without a cluster no news of the peer can come: final.
			return res, nil
		}
		if passes == 2 {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(wait):
		}
	}

	pr, stop, err := target.start(ctx)
	if err != nil {
		res.Refused = err.Error()
		return res, nil
	}
	defer stop()
	if err := pr.WaitAnswered(time.Time{}, 2*time.Second); err != nil {
		res.Refused = "the probe is not answered before the handover: " + err.Error()
		return res, nil
	}
	// Long enough for a crash-like takeover, should the priority-0
	// advert be lost: a Master_Down_Interval and then some.
	patience := 4*inst.AdvertInt + 5*time.Second

	at := time.Now()
	if err := d.vrrp.Failover(ctx, inst.Name, hold); err != nil {
		res.Error = err.Error()
		return res, nil
	}
	res.Hold = hold.String()
	res.Handover, err = d.measureLeg(ctx, pr, inst.Name, at, patience, func(s vrrp.InstanceStatus) bool {
		return s.State == vrrp.Backup && s.Master != ""
	})
	if err != nil {
		res.Error = "handover: " + err.Error()
		return res, nil
	}
	for _, name := range moving {
		if in, ok := findInstance(cfg, name); ok {
			res.Moved = append(res.Moved, fmt.Sprintf("%s %s", name, prefixes(in.VIPs)))
		}
	}
	if !req.Back {
		res.OK = true
		return res, nil
	}
	at = time.Now()
	if err := d.vrrp.EndHold(ctx, inst.Name); err != nil {
		res.Error = "hand back: " + err.Error()
		return res, nil
	}
	res.Hold = ""
	res.Back, err = d.measureLeg(ctx, pr, inst.Name, at, patience, func(s vrrp.InstanceStatus) bool {
		return s.State == vrrp.Master
	})
	if err != nil {
		res.Error = "hand back: " + err.Error()
		return res, nil
	}
	res.OK = true
	return res, nil
}

// measureLeg waits until the instance's status satisfies done and the
// probe is answered again, then reads the gap since at.
func (d *Daemon) measureLeg(ctx context.Context, pr *probe.Prober, name string, at time.Time, patience time.Duration,
	done func(vrrp.InstanceStatus) bool) (*api.DrillLeg, error) {
	deadline := at.Add(patience)
	var st vrrp.InstanceStatus
	for {
		st = d.instanceStatus(name)
		if done(st) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s is still %s here after %s", name, st.State, patience)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	seen := time.Now()
	if err := pr.WaitAnswered(seen, time.Until(deadline)+time.Second); err != nil {
		return nil, err
	}
	leg := &api.DrillLeg{Took: seen.Sub(at).Round(time.Millisecond).String(), Master: st.Master}
	if st.State == vrrp.Master {
		leg.Master = st.Source
	}
	from, to := pr.Outage(at)
	gap := to.Sub(from)
	leg.Gap, leg.GapMS = gap.Round(time.Millisecond).String(), float64(gap.Microseconds())/1000
	leg.Unanswered = fmt.Sprintf("from %s to %s", from.Sub(at).Round(time.Millisecond), to.Sub(at).Round(time.Millisecond))
	leg.MasterNode = d.nodeMastering(name, st.State == vrrp.Master)
	return leg, nil
}

func (d *Daemon) instanceStatus(name string) vrrp.InstanceStatus {
	for _, s := range d.vrrp.Status() {
		if s.Name == name {
			return s
		}
	}
	return vrrp.InstanceStatus{Name: name}
}

// nodeMastering names the director that gossips being MASTER of name,
// waiting a moment for the gossip.
func (d *Daemon) nodeMastering(name string, self bool) string {
	if self {
		return d.config().Node.Name
	}
	if d.cluster == nil {
		return ""
	}
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		cs := d.cluster.node.Status()
		for _, m := range cs.Members {
			if info, ok := decodePeerInfo(m); ok && m.Name != cs.ID && m.State == "alive" && strings.HasPrefix(info.VRRP[name], "MASTER/") {
				return m.Name
			}
		}
	}
	return ""
}

func decodePeerInfo(m cluster.MemberStatus) (peerInfo, bool) {
	var info peerInfo
	if len(m.App) == 0 || json.Unmarshal(m.App, &info) != nil {
		return peerInfo{}, false
	}
	return info, true
}

// gateMembers is the cluster as the gossip shows it here: this node, the
// leader and every member with what it published.
func (d *Daemon) gateMembers() (self, leader string, members []gateMember) {
	cs := d.cluster.node.Status()
	for _, m := range cs.Members {
		gm := gateMember{Name: m.Name, State: m.State, Role: m.Role}
		gm.Info, gm.Told = decodePeerInfo(m)
		members = append(members, gm)
	}
	return cs.ID, cs.Leader, members
}

// drillChecks says whether a peer is ready to take inst (and the
// instances moving with it) over. It returns the checks and the peer.
func (d *Daemon) drillChecks(inst config.VRRPInstance, moving []string, back bool) ([]api.DrillCheck, string) {
	f := gateFacts{Instance: inst.Name, Moving: moving, Back: back, Preempt: inst.Preempt,
		Priority: int(d.instanceStatus(inst.Name).Priority)}
	if d.cluster != nil {
		f.Clustered = true
		f.Self, f.Leader, f.Members = d.gateMembers()
		f.Ping = func(name string) error { _, err := d.cluster.node.Ping(name); return err }
		f.Here = d.peerInfo()
	}
	if c := d.ctsync; c != nil && slices.Contains(moving, c.instance) {
		st := c.s.Status()
		f.ConnSync = &st
	}
	if s := d.syncd; s != nil && s.cfg != nil && slices.Contains(moving, s.cfg.Instance) {
		f.IPVSSync = true
	}
	return drillGate(f)
}

// gateFacts is what the drill's gate decides on: this director's view of
// the instance, the cluster's members and the connection sync.
type gateFacts struct {
	Instance string
	Moving   []string // the instance and its sync group
	Back     bool     // --back
	Preempt  bool
	Priority int // this director's effective priority for Instance

	Clustered    bool // false: no [cluster], no view of the peer
	Self, Leader string
	Members      []gateMember
	// Ping asks a member for a direct gossip answer.
	Ping func(name string) error
	Here peerInfo // what this director publishes

	ConnSync *dsync.Status // the conntrack sync of a moving instance, if any
	IPVSSync bool          // the IPVS sync daemons follow a moving instance
}

// gateMember is one cluster member as the gossip shows it.
type gateMember struct {
	Name, State, Role string
	Info              peerInfo
	Told              bool // Info came with the gossip
}

// drillGate is the drill's safety gate: every check, and the peer that
// would take over ("" when there is none). Any failed check refuses.
func drillGate(f gateFacts) ([]api.DrillCheck, string) {
	var checks []api.DrillCheck
	add := func(name string, ok bool, format string, args ...any) {
		checks = append(checks, api.DrillCheck{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	if !f.Clustered {
		add("peer", false, "no [cluster]: this director cannot see its peer's state, so it cannot tell whether the peer is ready")
		return checks, ""
	}

	// The peer: an alive director that is BACKUP for every moving instance.
	var peer *gateMember
	var seen []string
	for i, m := range f.Members {
		if m.Name == f.Self || m.Role != "director" {
			continue
		}
		switch {
		case m.State != "alive":
			seen = append(seen, m.Name+" is "+m.State)
		case !m.Told:
			seen = append(seen, m.Name+" has not told its state yet")
		default:
			var wrong []string
			for _, name := range f.Moving {
				if s := m.Info.VRRP[name]; !strings.HasPrefix(s, "BACKUP/") {
					wrong = append(wrong, fmt.Sprintf("%s %s", name, orUnknown(s)))
				}
			}
			if len(wrong) > 0 {
				seen = append(seen, m.Name+" is not BACKUP: "+strings.Join(wrong, ", "))
				continue
			}
			if peer == nil {
				peer = &f.Members[i]
			}
		}
	}
	if peer == nil {
		if len(seen) == 0 {
			seen = append(seen, "the cluster has no other director")
		}
		add("peer", false, "no director is ready to take %s: %s", f.Instance, strings.Join(seen, "; "))
		return checks, ""
	}
	// The gossip says alive until the failure detector has concluded; a
	// peer that died a moment ago must not be handed the VIPs.
	if err := f.Ping(peer.Name); err != nil {
		add("peer", false, "%s does not answer a gossip ping: %v", peer.Name, err)
		return checks, ""
	}
	info, self := peer.Info, f.Here
	peerPrio := priorityOf(info.VRRP[f.Instance])
	add("peer", true, "%s is alive, answers a gossip ping and is BACKUP for %s (priority %d)", peer.Name, strings.Join(f.Moving, ", "), peerPrio)

	if info.Applied < self.Applied {
		add("raft", false, "%s has applied Raft index %d, this director %d: it has not caught up", peer.Name, info.Applied, self.Applied)
	} else {
		add("raft", true, "%s has applied Raft index %d (here %d; leader %s)", peer.Name, info.Applied, self.Applied, orUnknown(f.Leader))
	}
	switch {
	case info.TableError:
		add("table", false, "%s does not hold the committed table: its data plane refused it or fails to program it (directorctl cluster there)", peer.Name)
	case self.TableError:
		add("table", false, "this director does not hold the committed table: its data plane refused it or fails to program it (directorctl cluster)")
	case info.Table != self.Table:
		add("table", false, "%s programs another load-balancer table (digest %s, here %s): compare directorctl lvs on both",
			peer.Name, orUnknown(info.Table), orUnknown(self.Table))
	default:
		add("table", true, "%s programs the same load-balancer table (digest %s)", peer.Name, orUnknown(self.Table))
	}
	switch st := f.ConnSync; {
	case st != nil && (st.Role != "master" || !st.Connected):
		add("sync", false, "conntrack sync is %s and not connected to %s: established connections would break", st.Role, st.Peer)
	case st != nil:
		add("sync", true, "conntrack sync connected to %s (%s says %q); %d messages sent", st.Peer, peer.Name, info.Sync, st.Sent)
	case f.IPVSSync && (!strings.Contains(self.Sync, "master") || !strings.Contains(info.Sync, "backup")):
		add("sync", false, "IPVS sync daemons: %s here, %s on %s; the peer needs a backup daemon and this director a master one",
			self.Sync, orUnknown(info.Sync), peer.Name)
	case f.IPVSSync:
		add("sync", true, "IPVS sync daemons: %s here, %s on %s", self.Sync, info.Sync, peer.Name)
	default:
		add("sync", true, "no connection sync for %s: connections through it will break at the handover", strings.Join(f.Moving, ", "))
	}
	if f.Back {
		switch {
		case !f.Preempt:
			add("back", false, "--back needs preempt: with nopreempt this director would not take %s back", f.Instance)
		case f.Priority <= peerPrio:
			add("back", false, "--back: this director's priority %d is not above %s's %d, so it would not take %s back",
				f.Priority, peer.Name, peerPrio, f.Instance)
		default:
			add("back", true, "this director (priority %d, preempt) takes %s back from %s (%d)", f.Priority, f.Instance, peer.Name, peerPrio)
		}
	}
	return checks, peer.Name
}

func refusal(checks []api.DrillCheck) string {
	var bad []string
	for _, c := range checks {
		if !c.OK {
			bad = append(bad, c.Detail)
		}
	}
	return strings.Join(bad, "; ")
}

// movingWith lists name and the members of its sync group, which move
// with it.
func movingWith(cfg *config.Config, name string) []string {
	for _, g := range cfg.SyncGroups {
		if slices.Contains(g.Members, name) {
			return slices.Clone(g.Members)
		}
	}
	return []string{name}
}

func findInstance(cfg *config.Config, name string) (config.VRRPInstance, bool) {
	for _, in := range cfg.VRRP {
		if in.Name == name {
			return in, true
		}
	}
	return config.VRRPInstance{}, false
}

func priorityOf(s string) int {
	_, p, _ := strings.Cut(s, "/")
	n, _ := strconv.Atoi(p)
	return n
}

func prefixes(ps []netip.Prefix) string {
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return strings.Join(out, " ")
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// drillTarget is what the drill probes.
type drillTarget struct {
	icmp netip.Addr
	tcp  netip.AddrPort
}

func probeTarget(inst config.VRRPInstance, spec string) (drillTarget, error) {
	if spec == "" {
		for _, p := range inst.VIPs {
			if p.Addr().Is4() {
				return drillTarget{icmp: p.Addr()}, nil
			}
		}
		return drillTarget{}, fmt.Errorf("%s has no IPv4 address to ping: give --probe [ADDR]:PORT for TCP probes", inst.Name)
	}
	if ap, err := netip.ParseAddrPort(spec); err == nil {
		return drillTarget{tcp: ap}, nil
	}
	a, err := netip.ParseAddr(spec)
	if err != nil {
		return drillTarget{}, fmt.Errorf("probe %q is neither ADDR nor ADDR:PORT", spec)
	}
	if !a.Is4() {
		return drillTarget{}, fmt.Errorf("probe %s: ICMP probes are IPv4 only; give [ADDR]:PORT for TCP probes", a)
	}
	return drillTarget{icmp: a}, nil
}

func (t drillTarget) describe() string {
	if t.tcp.IsValid() {
		return fmt.Sprintf("TCP connections to %s every 10ms", t.tcp)
	}
	return fmt.Sprintf("ICMP echo to %s every 5ms", t.icmp)
}

func (t drillTarget) start(ctx context.Context) (*probe.Prober, func(), error) {
	if t.tcp.IsValid() {
		p := probe.StartTCP(ctx, t.tcp, 10*time.Millisecond, 100*time.Millisecond, nil)
		return p, p.Stop, nil
	}
	conn, err := probe.Listen()
	if err != nil {
		return nil, nil, err
	}
	p := probe.Start(ctx, conn, t.icmp, 5*time.Millisecond)
	return p, func() { p.Stop(); conn.Close() }, nil
}

package lvs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// VirtualServer is a virtual service as configured.
type VirtualServer struct {
	Service
	Name  string
	Reals []Real
	// Sorry takes all traffic while the live weight is below Quorum.
	Sorry *Real
	// Quorum is the least total weight of live real servers the service
	// needs (default 1); Hysteresis keeps it from flapping around it.
	Quorum     int
	Hysteresis int
	// InhibitOnFailure keeps a failed real server at weight 0 instead of
	// removing it.
	InhibitOnFailure bool
	// DrainTimeout bounds how long a removed real server drains at weight
	// 0 before it is deleted with connections still open. 0: no bound.
	DrainTimeout time.Duration
}

// Health is what the health checks say of one real server.
type Health struct {
	Up bool
	// Weight, when not negative, replaces the configured weight (dynamic
	// weights of exec checks).
	Weight int
}

type realKey struct {
	svc  Key
	addr netip.AddrPort
}

// svcState is what the reconciler keeps of one configured service from one
// reconcile to the next: one lookup a service a reconcile, which is most
// of a reconcile's cost with 10,000 services and nothing to do.
type svcState struct {
	// seen: a reconcile of this run found the service in the kernel, and
	// reals its wanted real servers that were there, in configured order.
	// One of them missing later was removed behind directord's back
	// (drift), which is reported.
	seen  bool
	reals []netip.AddrPort
	// quorumUp is the quorum state, once known.
	quorumKnown, quorumUp bool
}

// Reconciler keeps a Dataplane equal to the configured table: it lists
// what the kernel has, diffs, and applies only the difference. It owns
// only the services it created or that the configuration names, so a
// hand-made ipvsadm rule survives.
type Reconciler struct {
	dp  Dataplane
	log *slog.Logger
	now func() time.Time
	// ownedFile remembers owned services across a crash ("" = memory only).
	ownedFile string

	mu       sync.Mutex
	desired  []VirtualServer
	health   map[realKey]Health
	owned    map[Key]bool
	draining map[realKey]time.Time
	// state holds each configured service's svcState.
	state map[Key]*svcState
	// ownsDesired: every configured service is owned (so since the last
	// reconcile, until Set or Shutdown).
	ownsDesired bool
	flush       bool // lvs_flush: remove foreign services at the next reconcile
	last        Result
	kick        chan struct{}
	// byKey is reconcile's index of the kernel's services, kept to be
	// refilled rather than grown again for 10,000 services each second.
	byKey    map[Key]int
	onRepair func(Repair)
	// refused are the services the kernel refused at the last reconcile,
	// with its error: logged when one appears or its error changes.
	refused map[Key]string
}

// Options configure a Reconciler.
type Options struct {
	Logger *slog.Logger
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
	// OwnedFile keeps the list of owned services, so that a restarted
	// daemon removes what its crashed predecessor made.
	OwnedFile string
	// Flush removes every virtual service not configured at the first
	// reconcile, ours or not (keepalived's lvs_flush).
	Flush bool
	// OnRepair is told of each drift repaired (after it is logged).
	OnRepair func(Repair)
}

// Result is what one reconcile did.
type Result struct {
	Ops      int       `json:"ops"`
	At       time.Time `json:"at"`
	Duration string    `json:"duration"`
	Err      string    `json:"error,omitempty"`
	// Refused are the services the kernel refused, by key, with its
	// error; the others were programmed.
	Refused map[string]string `json:"refused,omitempty"`
}

// NewReconciler returns a reconciler for dp with an empty desired table.
func NewReconciler(dp Dataplane, o Options) (*Reconciler, error) {
	r := &Reconciler{
		dp: dp, log: o.Logger, now: o.Now, ownedFile: o.OwnedFile, flush: o.Flush,
		health: map[realKey]Health{}, owned: map[Key]bool{}, draining: map[realKey]time.Time{},
		state: map[Key]*svcState{}, kick: make(chan struct{}, 1), byKey: map[Key]int{}, onRepair: o.OnRepair,
		refused: map[Key]string{},
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.ownedFile != "" {
		b, err := os.ReadFile(r.ownedFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("read owned services: %w", err)
		default:
			var keys []Key
			if err := json.Unmarshal(b, &keys); err != nil {
				return nil, fmt.Errorf("read owned services %s: %w", r.ownedFile, err)
			}
			for _, k := range keys {
				r.owned[k] = true
			}
		}
	}
	return r, nil
}

// Dataplane returns the data plane the reconciler programs.
func (r *Reconciler) Dataplane() Dataplane { return r.dp }

// Set replaces the desired table. It does not touch the kernel: call
// Reconcile, or let Run do it.
//
// A service the data plane's capability table refuses is left out, so that
// the rest of the table is programmed; the error names each one.
func (r *Reconciler) Set(vss []VirtualServer) error {
	caps := r.dp.Capabilities()
	var refused []error
	vss = slices.DeleteFunc(slices.Clone(vss), func(vs VirtualServer) bool {
		if err := caps.Check(vs.Service, vs.Reals); err != nil {
			refused = append(refused, fmt.Errorf("virtual server %s (%s) left out: %w", vs.Name, vs.Key, err))
			return true
		}
		return false
	})
	r.mu.Lock()
	r.desired = vss
	if len(r.health) > 0 {
		keep := map[realKey]bool{}
		for _, vs := range vss {
			for _, rl := range vs.Reals {
				keep[realKey{vs.Key, rl.Addr}] = true
			}
		}
		for k := range r.health {
			if !keep[k] {
				delete(r.health, k)
			}
		}
	}
	named := make(map[Key]bool, len(vss))
	for _, vs := range vss {
		named[vs.Key] = true
	}
	for k := range r.state {
		if !named[k] {
			delete(r.state, k)
		}
	}
	r.ownsDesired = false
	r.mu.Unlock()
	r.Kick()
	return errors.Join(refused...)
}

// SetHealth records a health check's verdict on one real server.
func (r *Reconciler) SetHealth(svc Key, addr netip.AddrPort, h Health) {
	r.mu.Lock()
	r.health[realKey{svc, addr}] = h
	r.mu.Unlock()
	r.Kick()
}

// Kick asks Run for a reconcile now.
func (r *Reconciler) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run reconciles whenever asked and every interval, which repairs hand
// edits and finishes drains. On return it removes what it owns, as
// keepalived does at exit.
func (r *Reconciler) Run(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	keeper, _ := r.dp.(PersistenceKeeper)
	for {
		if _, err := r.Reconcile(); err != nil {
			r.log.Error("lvs reconcile failed; retrying", "err", err)
		}
		if keeper != nil {
			if _, err := keeper.KeepPersistence(2 * interval); err != nil {
				r.log.Warn("lvs: persistence entries of open connections not renewed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return r.Shutdown()
		case <-t.C:
		case <-r.kick:
		}
	}
}

// forget drops what was seen programmed of service k (removed on purpose,
// or found gone).
func (r *Reconciler) forget(k Key) {
	if st := r.state[k]; st != nil {
		st.seen, st.reals = false, nil
	}
}

// repaired logs drift undone and tells OnRepair.
func (r *Reconciler) repaired(x Repair) {
	r.log.Warn("lvs: the kernel's table was changed outside directord; repairing it", "dataplane", r.dp.Name(), "kind", x.Kind, "found", x.Found)
	if r.onRepair != nil {
		r.onRepair(x)
	}
}

// Shutdown removes every service the reconciler owns.
func (r *Reconciler) Shutdown() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	have, err := r.dp.List()
	if err != nil {
		return fmt.Errorf("list %s: %w", r.dp.Name(), err)
	}
	var ops []Op
	for _, e := range have {
		if r.owned[e.Key] {
			ops = append(ops, Op{Kind: DelService, Service: e.Service})
		}
	}
	if err := r.dp.Apply(ops); err != nil {
		return fmt.Errorf("remove virtual services: %w", err)
	}
	r.owned = map[Key]bool{}
	r.ownsDesired = false
	r.saveOwned()
	r.log.Info("virtual services removed", "count", len(ops))
	return nil
}

// Last is the result of the latest reconcile.
func (r *Reconciler) Last() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last
}

// Reconcile makes the kernel match the desired table and returns the
// number of operations it took.
func (r *Reconciler) Reconcile() (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := r.now()
	n, err := r.reconcile()
	r.last = Result{Ops: n, At: start, Duration: r.now().Sub(start).String()}
	if err != nil {
		r.last.Err = err.Error()
	}
	if len(r.refused) > 0 {
		r.last.Refused = map[string]string{}
		for k, e := range r.refused {
			r.last.Refused[k.String()] = e
		}
	}
	return n, err
}

func (r *Reconciler) reconcile() (int, error) {
	have, err := r.dp.List()
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", r.dp.Name(), err)
	}
	if rp, ok := r.dp.(Repairer); ok {
		for _, x := range rp.TakeRepairs() {
			r.repaired(x)
			// The data plane emptied its table to rebuild it: what is
			// missing now is that, not more drift.
			for k := range r.state {
				r.forget(k)
			}
		}
	}
	byKey := r.byKey
	clear(byKey)
	for i := range have {
		byKey[have[i].Key] = i
	}
	// wanted says whether a service is configured: made only when the
	// kernel has services that are not, or owned ones are gone.
	var wantedSet map[Key]bool
	wanted := func(k Key) bool {
		if wantedSet == nil {
			wantedSet = make(map[Key]bool, len(r.desired))
			for _, vs := range r.desired {
				wantedSet[vs.Key] = true
			}
		}
		return wantedSet[k]
	}
	now := r.now()
	var ops []Op
	ownedBefore := len(r.owned)
	// matched counts the kernel's services found configured.
	matched := 0
	hit := make([]bool, len(have))
	for _, vs := range r.desired {
		svc := vs.Service.normal()
		st := r.state[svc.Key]
		if st == nil {
			st = &svcState{}
			r.state[svc.Key] = st
		}
		i, exists := byKey[svc.Key]
		var cur *Entry
		switch {
		case !exists:
			if st.seen {
				r.forget(svc.Key)
				r.repaired(Repair{Kind: "service", Found: svc.Key.String() + " missing from the kernel"})
			}
			ops = append(ops, Op{Kind: AddService, Service: svc})
			cur = &Entry{Service: svc}
		default:
			cur = &have[i]
			if !hit[i] {
				hit[i] = true
				matched++
			}
			if cur.Service.normal() != svc {
				ops = append(ops, Op{Kind: UpdateService, Service: svc})
			}
			st.seen = true
		}
		if !r.ownsDesired && !r.owned[svc.Key] {
			r.owned[svc.Key] = true
		}
		ops = append(ops, r.realOps(vs, svc, cur, st, now)...)
	}
	r.ownsDesired = true
	for i, e := range have {
		if hit[i] || matched == len(have) || wanted(e.Key) || !(r.owned[e.Key] || r.flush) {
			continue
		}
		ops = append(ops, Op{Kind: DelService, Service: e.Service})
		r.forget(e.Key)
		delete(r.owned, e.Key)
		for k := range r.draining {
			if k.svc == e.Key {
				delete(r.draining, k)
			}
		}
	}
	// Owned services that vanished from the kernel are no longer ours
	// to track unless configured (every one owned is configured when
	// there are as many as configured services).
	if len(r.owned) != len(r.state) {
		for k := range r.owned {
			if _, ok := byKey[k]; !ok && !wanted(k) {
				delete(r.owned, k)
			}
		}
	}
	r.flush = false
	if len(r.owned) != ownedBefore || len(ops) > 0 {
		r.saveOwned()
	}
	if len(ops) == 0 {
		r.settleRefused(nil, wanted)
		return 0, nil
	}
	for _, op := range ops {
		r.log.Debug("lvs", "op", op.String())
	}
	refused := r.apply(ops)
	r.settleRefused(refused, wanted)
	if len(refused) > 0 {
		keys := slices.SortedFunc(maps.Keys(refused), func(a, b Key) int { return strings.Compare(a.String(), b.String()) })
		return len(ops), fmt.Errorf("apply to %s: %d of the services refused, the rest programmed; %s: %w", r.dp.Name(), len(refused), keys[0], refused[keys[0]])
	}
	r.log.Info("lvs reconciled", "dataplane", r.dp.Name(), "ops", len(ops))
	return len(ops), nil
}

// apply carries out ops so that a service the kernel refuses keeps no
// other from being programmed, and returns the refused ones with the
// kernel's error. A data plane that applies all or nothing (nftables) is
// given the whole batch first, then, on a refusal, halves of it until
// each refused service stands alone; one that stops at its first failure
// (IPVS) is given one service at a time.
func (r *Reconciler) apply(ops []Op) map[Key]error {
	var groups [][]Op
	at := map[Key]int{}
	for _, op := range ops {
		i, ok := at[op.Service.Key]
		if !ok {
			i = len(groups)
			at[op.Service.Key] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], op)
	}
	refused := map[Key]error{}
	if !r.dp.Capabilities().Atomic {
		for _, g := range groups {
			if err := r.dp.Apply(g); err != nil {
				refused[g[0].Service.Key] = err
			}
		}
		return refused
	}
	var halve func(gs [][]Op)
	halve = func(gs [][]Op) {
		if len(gs) == 0 {
			return
		}
		err := r.dp.Apply(slices.Concat(gs...))
		switch {
		case err == nil:
		case len(gs) == 1:
			refused[gs[0][0].Service.Key] = err
		default:
			halve(gs[:len(gs)/2])
			halve(gs[len(gs)/2:])
		}
	}
	halve(groups)
	return refused
}

// settleRefused records the services refused at this reconcile: each one
// newly refused, or refused for another reason, is logged with the
// kernel's error. Every other service is in the kernel as wanted now (or
// no longer wanted): one refused before is logged as programmed.
func (r *Reconciler) settleRefused(refused map[Key]error, wanted func(Key) bool) {
	for k, err := range refused {
		if r.refused[k] != err.Error() {
			r.log.Warn("lvs: the kernel refused a virtual service; the others are programmed", "dataplane", r.dp.Name(), "service", k.String(), "err", err)
		}
		r.refused[k] = err.Error()
	}
	for k := range r.refused {
		if _, still := refused[k]; still {
			continue
		}
		delete(r.refused, k)
		if wanted(k) {
			r.log.Info("lvs: a virtual service the kernel refused is programmed now", "dataplane", r.dp.Name(), "service", k.String())
		}
	}
}

// realOps diffs one service's real servers. Removed servers drain at
// weight 0 and are deleted once idle or after DrainTimeout; failed ones
// go at once (or stay at weight 0 with InhibitOnFailure). p is what was
// seen of the service.
func (r *Reconciler) realOps(vs VirtualServer, svc Service, cur *Entry, p *svcState, now time.Time) []Op {
	want, failed := r.effective(vs, p)
	var ops []Op
	// found counts the wanted servers in the kernel; p.reals[:same] are
	// the first of them, as seen at the last reconcile.
	found, same := 0, 0
	for _, w := range want {
		if len(r.draining) > 0 {
			delete(r.draining, realKey{svc.Key, w.Addr})
		}
		c, ok := cur.Real(w.Addr)
		switch {
		case !ok:
			if len(cur.Reals) > 0 && slices.Contains(p.reals, w.Addr) {
				r.repaired(Repair{Kind: "real_server", Found: fmt.Sprintf("%s of %s missing from the kernel", w.Addr, svc.Key)})
			}
			ops = append(ops, Op{Kind: AddReal, Service: svc, Real: w})
			continue
		case c.Real != w:
			ops = append(ops, Op{Kind: UpdateReal, Service: svc, Real: w})
		}
		if same == found && same < len(p.reals) && p.reals[same] == w.Addr {
			same++
		}
		found++
	}
	if same != found || found != len(p.reals) {
		p.reals = make([]netip.AddrPort, 0, found)
		for _, w := range want {
			if _, ok := cur.Real(w.Addr); ok {
				p.reals = append(p.reals, w.Addr)
			}
		}
	}
	if found == len(cur.Reals) {
		return ops // the kernel has no server that is not wanted
	}
	for _, c := range cur.Reals {
		if slices.ContainsFunc(want, func(w Real) bool { return w.Addr == c.Addr }) {
			continue
		}
		rk := realKey{svc.Key, c.Addr}
		if failed[c.Addr] {
			ops = append(ops, Op{Kind: DelReal, Service: svc, Real: c.Real})
			delete(r.draining, rk)
			continue
		}
		since, ok := r.draining[rk]
		if !ok {
			since = now
			r.draining[rk] = now
		}
		if cc, ok := r.dp.(ConnCounter); ok && c.Weight == 0 {
			a, i, err := cc.Conns(svc.Key, c.Addr)
			if err != nil {
				// Unknown counts keep the server until the timeout.
				r.log.Warn("cannot count connections of a draining real server", "real", c.Addr.String(), "err", err)
				a = 1
			}
			c.Active, c.Inactive = a, i
		}
		switch {
		case c.Weight != 0:
			q := c.Real
			q.Weight = 0
			ops = append(ops, Op{Kind: UpdateReal, Service: svc, Real: q})
			r.log.Info("real server draining", "service", svc.Key.String(), "real", c.Addr.String(),
				"active", c.Active, "inactive", c.Inactive)
		case c.Active+c.Inactive == 0 || (vs.DrainTimeout > 0 && now.Sub(since) >= vs.DrainTimeout):
			ops = append(ops, Op{Kind: DelReal, Service: svc, Real: c.Real})
			delete(r.draining, rk)
			r.log.Info("real server removed after draining", "service", svc.Key.String(), "real", c.Addr.String(),
				"active", c.Active, "inactive", c.Inactive, "drained", now.Sub(since).String())
		}
	}
	return ops
}

// effective is the set of real servers vs should have now, given health
// and quorum, and the ones to delete without draining.
func (r *Reconciler) effective(vs VirtualServer, st *svcState) (want []Real, failed map[netip.AddrPort]bool) {
	// failed is made when there is one: 10,000 services have none.
	fail := func(a netip.AddrPort) {
		if failed == nil {
			failed = map[netip.AddrPort]bool{}
		}
		failed[a] = true
	}
	live := 0
	var down []Real
	// up is the configured servers themselves until a health verdict
	// changes one (most reconciles of 10,000 services change none), then
	// a copy; no caller changes it.
	up, copied := vs.Reals, false
	for i, rl := range vs.Reals {
		var h Health
		ok := false
		if len(r.health) > 0 {
			h, ok = r.health[realKey{vs.Key, rl.Addr}]
		}
		if ok && !copied && (!h.Up || (h.Weight >= 0 && h.Weight != rl.Weight)) {
			up, copied = append(make([]Real, 0, len(vs.Reals)), vs.Reals[:i]...), true
		}
		if ok && !h.Up {
			down = append(down, rl)
			continue
		}
		if ok && h.Weight >= 0 {
			rl.Weight = h.Weight
		}
		live += rl.Weight
		if copied {
			up = append(up, rl)
		}
	}
	quorum := max(vs.Quorum, 1)
	qUp, known := st.quorumUp, st.quorumKnown
	switch {
	case !known:
		qUp = live >= quorum
	case qUp && live < quorum-vs.Hysteresis:
		qUp = false
	case !qUp && live >= quorum+vs.Hysteresis:
		qUp = true
	}
	if known && qUp != st.quorumUp {
		if qUp {
			r.log.Info("quorum regained", "service", vs.Key.String(), "live_weight", live, "quorum", quorum)
		} else {
			r.log.Warn("quorum lost", "service", vs.Key.String(), "live_weight", live, "quorum", quorum,
				"sorry_server", vs.Sorry != nil)
		}
	}
	st.quorumUp, st.quorumKnown = qUp, true
	for _, rl := range down {
		if vs.InhibitOnFailure {
			rl.Weight = 0
			up = append(up, rl)
		} else {
			fail(rl.Addr)
		}
	}
	if vs.Sorry == nil {
		return up, failed
	}
	if qUp {
		fail(vs.Sorry.Addr)
		return up, failed
	}
	// Below quorum the sorry server takes everything, as in keepalived.
	for _, rl := range up {
		fail(rl.Addr)
	}
	return []Real{*vs.Sorry}, failed
}

// normal fills defaults so that a configured service and one read back
// from the kernel compare equal.
func (s Service) normal() Service {
	if s.Persistence == 0 {
		s.PersistenceBits = 0
	} else {
		s.PersistenceBits = s.persistenceBits()
	}
	return s
}

func (r *Reconciler) saveOwned() {
	if r.ownedFile == "" {
		return
	}
	keys := make([]Key, 0, len(r.owned))
	for k := range r.owned {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int {
		if a.sortKey() < b.sortKey() {
			return -1
		}
		if a.sortKey() > b.sortKey() {
			return 1
		}
		return 0
	})
	b, _ := json.Marshal(keys)
	tmp := r.ownedFile + ".tmp"
	if err := os.MkdirAll(filepath.Dir(r.ownedFile), 0o700); err == nil {
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, r.ownedFile)
		}
		if err != nil {
			r.log.Warn("cannot record owned virtual services", "file", r.ownedFile, "err", err)
		}
	}
}

// QuorumUp reports each configured service's quorum state.
func (r *Reconciler) QuorumUp() map[Key]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[Key]bool, len(r.state))
	for k, st := range r.state {
		if st.quorumKnown {
			out[k] = st.quorumUp
		}
	}
	return out
}

// Draining lists the real servers being drained, by service.
func (r *Reconciler) Draining() map[Key][]netip.AddrPort {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[Key][]netip.AddrPort{}
	for k := range r.draining {
		out[k.svc] = append(out[k.svc], k.addr)
	}
	return out
}

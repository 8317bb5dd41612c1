package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/directord/directord/cluster"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/lvs"
	"github.com/prometheus/client_golang/prometheus"
)

// clusterManager makes the replicated table the source of the load
// balancer's virtual servers. The file's virtual servers seed the cluster
// once; after that a file that differs is reported, not applied.
type clusterManager struct {
	log  *slog.Logger
	node ClusterNode
	tls  *cluster.TLS
	// hold puts VRRP in FAULT with a reason, or lifts it with "": a node
	// that left the cluster must not be MASTER with a frozen table.
	hold  func(reason string)
	cache string // the last committed state, for a start without quorum
	apply func(vss []config.VirtualServer) error
	// lastReconcile is the data plane's latest reconcile (set once the
	// load balancer is up; nil on a witness).
	lastReconcile func() (lvs.Result, bool)

	// What the kernel holds: the table of index want was handed to the
	// data plane at wantAt, and is programmed once a reconcile after that
	// succeeded; tableErr says why the committed table is not in force.
	pmu                 sync.Mutex
	want, programmedIdx uint64
	wantAt              time.Time
	tableErr, cacheErr  string

	mu      sync.Mutex
	cfg     *config.Config
	differs []string // virtual servers where the file and the cluster disagree
}

func newClusterManager(cfg *config.Config, log *slog.Logger, open func(cluster.Config) (ClusterNode, error), apply func([]config.VirtualServer) error) (*clusterManager, error) {
	c := &clusterManager{log: log.With("subsystem", "cluster"), cfg: cfg, apply: apply, cache: clusterCache(cfg),
		hold: func(string) {}}
	cc := cfg.Cluster
	t, err := cluster.LoadTLS(cc.TLSCert, cc.TLSKey, cc.TLSCA)
	if err != nil {
		return nil, err
	}
	c.tls = t
	node, err := open(cluster.Config{
		TLS: t,
		ID:  cfg.Node.Name, DataDir: filepath.Join(cfg.Node.DataDir, "cluster"),
		Gossip: cc.Bind, Raft: cc.RaftBind, Peers: cc.Peers, Members: cc.Members,
		BootstrapExpect: cc.BootstrapExpect, EncryptKey: cc.EncryptKey, EncryptKeysOld: cc.EncryptKeysOld,
		Witness: cfg.Node.Role == "witness", Logger: c.log, OnChange: c.changed, Validate: config.ValidateDocument,
	})
	if err != nil {
		return nil, err
	}
	c.node = node
	return c, nil
}

// clusterCache is where the last committed state is saved.
func clusterCache(cfg *config.Config) string {
	return filepath.Join(cfg.Node.DataDir, "cluster", "state.json")
}

// cachedState is the state last committed and saved at path, if any,
// without the virtual servers that fail validation.
func cachedState(path string, log *slog.Logger) (cluster.State, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return cluster.State{}, false
	}
	var s cluster.State
	if err := json.Unmarshal(b, &s); err != nil || !s.Seeded {
		if err != nil {
			log.Error("the cached table cannot be read; starting from the file's", "file", path, "err", err)
		}
		return cluster.State{}, false
	}
	for _, name := range s.Names() {
		if err := config.ValidateDocument(name, s.Services[name]); err != nil {
			log.Error("a virtual server of the cached table is invalid; left out", "virtual_server", name, "err", err)
			delete(s.Services, name)
		}
	}
	return s, true
}

// changed runs for every committed change: save it, program it, compare
// it with the file.
func (c *clusterManager) changed(s cluster.State) {
	// The load balancer first: the cache and the comparison with the
	// file cost tens of milliseconds for a big table, and Raft waits for
	// this function.
	if s.Seeded {
		vss, err := virtualServers(s)
		if err == nil {
			err = c.apply(vss)
		}
		if err != nil {
			c.log.Error("the committed table is not in force here; the last one stays programmed", "index", s.Index, "err", err)
			c.refused(s.Index, err)
		} else {
			c.programming(s.Index)
		}
	}
	c.pmu.Lock()
	c.cacheErr = ""
	if err := writeAtomic(c.cache, s); err != nil {
		c.cacheErr = err.Error()
		c.log.Error("the committed table was not saved; a restart without quorum would start from an older one", "file", c.cache, "err", err)
	}
	c.pmu.Unlock()
	if !s.Seeded {
		return
	}
	// Not c.compare: this runs from Raft, possibly while cluster.New
	// (restoring a snapshot) has not yet returned the node.
	c.mu.Lock()
	c.setDiffers(s)
	c.mu.Unlock()
}

// writeAtomic saves v as JSON at path: a temporary file, synced, renamed
// over it, and the directory synced, so that a crash leaves the old file
// or the new one, never half of one.
func writeAtomic(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer dir.Close()
	return dir.Sync()
}

// programming records that the table of index is handed to the data
// plane.
func (c *clusterManager) programming(index uint64) {
	c.pmu.Lock()
	c.want, c.wantAt, c.tableErr = index, time.Now(), ""
	c.pmu.Unlock()
}

// refused records that the data plane refused the table of index.
func (c *clusterManager) refused(index uint64, err error) {
	c.pmu.Lock()
	c.tableErr = fmt.Sprintf("the table at index %d is not in force here: %v", index, err)
	c.pmu.Unlock()
}

// programmed is the index of the table the kernel holds, and why the
// committed one is not in force ("" when it is, or is on its way).
func (c *clusterManager) programmed() (uint64, string) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.lastReconcile == nil {
		return c.programmedIdx, c.tableErr
	}
	r, ok := c.lastReconcile()
	switch {
	case !ok:
		// No data plane: nothing to program.
	case c.want > c.programmedIdx && r.At.After(c.wantAt) && r.Err == "":
		c.programmedIdx = c.want
	case c.want > c.programmedIdx && r.At.After(c.wantAt) && c.tableErr == "":
		return c.programmedIdx, "the data plane failed to program the table at index " + strconv.FormatUint(c.want, 10) + ": " + r.Err
	}
	return c.programmedIdx, c.tableErr
}

// virtualServers turns the replicated state into the table to program:
// the virtual servers with the operators' overrides applied. The FSM
// validated each one (cached validates what comes from the disk).
func virtualServers(s cluster.State) ([]config.VirtualServer, error) {
	var out []config.VirtualServer
	for _, name := range s.Names() {
		var vs config.VirtualServer
		if err := json.Unmarshal(s.Services[name], &vs); err != nil {
			return nil, fmt.Errorf("virtual server %s: %w", name, err)
		}
		vs.Name = name
		out = append(out, vs)
	}
	return applyOverrides(out, s.Overrides), nil
}

// applyOverrides lays the operators' overrides over vss: a disabled real
// server is left out, a drained one gets weight 0, a weight set by hand
// replaces the configured one.
func applyOverrides(vss []config.VirtualServer, overrides map[string]map[string]cluster.Override) []config.VirtualServer {
	out := make([]config.VirtualServer, 0, len(vss))
	for _, vs := range vss {
		ov := overrides[vs.Name]
		var reals []config.RealServer
		for _, rs := range vs.RealServers {
			o, ok := ov[rs.Address.String()]
			switch {
			case !ok:
			case o.Disabled:
				continue
			case o.Drain:
				rs.Weight = 0
			case o.Weight != nil:
				rs.Weight = *o.Weight
			}
			reals = append(reals, rs)
		}
		vs.RealServers = reals
		out = append(out, vs)
	}
	return out
}

// diffDocs names the virtual servers that differ between a and b.
func diffDocs(a, b map[string]json.RawMessage) []string {
	var out []string
	for name, doc := range a {
		if other, ok := b[name]; !ok || !bytes.Equal(doc, other) {
			out = append(out, name)
		}
	}
	for name := range b {
		if _, ok := a[name]; !ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// compare records where the file (cfg, or the last one) and the cluster
// disagree, and logs it once per change.
func (c *clusterManager) compare(cfg *config.Config) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cfg != nil {
		c.cfg = cfg
	}
	c.setDiffers(c.node.State())
}

// setDiffers compares the file with s; called with c.mu held.
func (c *clusterManager) setDiffers(s cluster.State) {
	if !s.Seeded {
		c.differs = nil
		return
	}
	d := diffDocs(config.Documents(c.cfg.VirtualServers), s.Services)
	if !slices.Equal(d, c.differs) && len(d) > 0 {
		c.log.Warn("the file's virtual servers differ from the cluster's; the cluster's are in force (directorctl apply -f FILE to change them)",
			"virtual_servers", d)
	}
	c.differs = d
}

// Run runs the node and, on a director, seeds the cluster with the file's
// virtual servers when it is formed and not yet seeded.
func (c *clusterManager) Run(ctx context.Context) error {
	if c.node.Left() {
		c.log.Warn("this node left the cluster: its VRRP instances are held in FAULT until directorctl cluster rejoin")
		c.hold(leftReason)
	}
	if c.cfg.Node.Role == "witness" {
		// A witness has no table of its own to seed with.
		return c.node.Run(ctx)
	}
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if c.node.State().Seeded {
				return
			}
			if c.node.Status().Leader == "" {
				continue // not formed yet
			}
			c.mu.Lock()
			docs := config.Documents(c.cfg.VirtualServers)
			c.mu.Unlock()
			// From any director: the leader may be a witness, which has no
			// table to seed with. A second seed is a no-op.
			if err := c.node.Submit(cluster.Command{Op: cluster.OpApply, Seed: true, Services: docs}, 5*time.Second); err != nil {
				c.log.Warn("seeding the cluster failed; retrying", "err", err)
				continue
			}
			c.log.Info("cluster seeded with this file's virtual servers", "count", len(docs))
			return
		}
	}()
	return c.node.Run(ctx)
}

func (c *clusterManager) status() *api.ClusterStatus {
	s := c.node.State()
	c.mu.Lock()
	d := slices.Clone(c.differs)
	c.mu.Unlock()
	ns := c.node.Status()
	st := &api.ClusterStatus{ID: ns.ID, Role: ns.Role, RaftState: ns.RaftState, Leader: ns.Leader, Term: ns.Term,
		CommitIndex: ns.CommitIndex, Applied: ns.Applied, LastContact: ns.LastContact, RaftTLS: ns.RaftTLS, Gossip: ns.Gossip,
		Members: make([]api.ClusterMember, 0, len(ns.Members)), StateIndex: s.Index, Seeded: s.Seeded, FileDiffers: d,
		Refused: s.Refused, ClusterID: ns.ClusterID, Left: ns.Left, Conflicts: ns.Conflicts, RefusedConnections: ns.Refused}
	st.ProgrammedIndex, st.TableError = c.programmed()
	c.pmu.Lock()
	st.CacheError = c.cacheErr
	c.pmu.Unlock()
	for _, m := range ns.Members {
		st.Members = append(st.Members, api.ClusterMember(m))
	}
	return st
}

func (c *clusterManager) handleLeave(w http.ResponseWriter, r *http.Request) {
	if err := c.node.Leave(5 * time.Second); err != nil {
		status.WriteError(w, http.StatusServiceUnavailable, err)
		return
	}
	c.log.Warn("this node left the cluster: its VRRP instances are held in FAULT until directorctl cluster rejoin")
	c.hold(leftReason)
	status.WriteJSON(w, http.StatusOK, api.LeaveResult{Left: c.cfg.Node.Name})
}

const leftReason = "this node left the cluster (directorctl cluster rejoin)"

func (c *clusterManager) handleRejoin(w http.ResponseWriter, r *http.Request) {
	if err := c.node.Rejoin(5 * time.Second); err != nil {
		status.WriteError(w, http.StatusServiceUnavailable, err)
		return
	}
	c.log.Info("this node rejoined the cluster")
	c.hold("")
	status.WriteJSON(w, http.StatusOK, api.LeaveResult{Left: c.cfg.Node.Name})
}

// secure wraps the conntrack sync's connections in the cluster's mutual
// TLS: the peer must be a member, from its certificate's address. Nil
// without a running cluster (the sync's key alone then).
func (c *clusterManager) secure() func(net.Conn, bool) (net.Conn, error) {
	if c == nil {
		return nil
	}
	members := c.cfg.Cluster.Members
	isMember := func(name string) bool { return slices.Contains(members, name) }
	return func(conn net.Conn, client bool) (net.Conn, error) {
		tc, _, err := c.tls.Handshake(conn, client, isMember, 5*time.Second)
		return tc, err
	}
}

// reloadSecrets re-reads the certificates and applies a new gossip key:
// both rotate on SIGHUP.
func (c *clusterManager) reloadSecrets(cfg *config.Config, keysChanged bool) error {
	if err := c.tls.Reload(); err != nil {
		return err
	}
	if keysChanged {
		if err := c.node.SetGossipKeys(cfg.Cluster.EncryptKey, cfg.Cluster.EncryptKeysOld); err != nil {
			return err
		}
		c.log.Info("cluster: gossip keys rotated", "old_keys_accepted", len(cfg.Cluster.EncryptKeysOld))
	}
	return nil
}

func (c *clusterManager) handle(w http.ResponseWriter, r *http.Request) {
	var req api.ClusterRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		status.WriteError(w, http.StatusBadRequest, fmt.Errorf("decode request: %w", err))
		return
	}
	cmd := cluster.Command{Op: req.Op, Services: req.Services, Name: req.Service, Real: req.Real, Weight: req.Weight, Service: req.Document}
	res := api.ClusterResult{Changed: []string{}}
	if req.Op == cluster.OpApply {
		if req.Services == nil {
			req.Services = map[string]json.RawMessage{}
			cmd.Services = req.Services
		}
		res.Changed = diffDocs(req.Services, c.node.State().Services)
		if res.Changed == nil {
			res.Changed = []string{}
		}
	}
	if req.DryRun {
		status.WriteJSON(w, http.StatusOK, res)
		return
	}
	if err := c.node.Submit(cmd, 5*time.Second); err != nil {
		code := http.StatusServiceUnavailable
		if errors.Is(err, cluster.ErrCommand) { // the leader's refusal, forwarded or not
			code = http.StatusUnprocessableEntity
		}
		status.WriteError(w, code, err)
		return
	}
	res.Applied = true
	status.WriteJSON(w, http.StatusOK, res)
}

// clusterCollector exports the node's Raft and membership state.
type clusterCollector struct {
	c                                           *clusterManager
	leader, term, commit, applied, members, idx *prometheus.Desc
	programmed, tableErr                        *prometheus.Desc
}

func newClusterCollector(c *clusterManager) *clusterCollector {
	return &clusterCollector{c: c,
		leader:  prometheus.NewDesc("directord_cluster_leader", "1 when this node leads the Raft cluster.", nil, nil),
		term:    prometheus.NewDesc("directord_cluster_raft_term", "Raft term.", nil, nil),
		commit:  prometheus.NewDesc("directord_cluster_raft_commit_index", "Raft commit index.", nil, nil),
		applied: prometheus.NewDesc("directord_cluster_raft_applied_index", "Raft index applied here.", nil, nil),
		members: prometheus.NewDesc("directord_cluster_members", "Gossip members by state.", []string{"state"}, nil),
		idx:     prometheus.NewDesc("directord_cluster_table_index", "Raft index of the table committed and applied here.", nil, nil),
		programmed: prometheus.NewDesc("directord_cluster_table_programmed_index",
			"Raft index of the table the kernel holds here (a reconcile after it was handed over succeeded).", nil, nil),
		tableErr: prometheus.NewDesc("directord_cluster_table_error", "1 while the committed table is not in force here (refused or failing).", nil, nil),
	}
}

func (m *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.leader, m.term, m.commit, m.applied, m.members, m.idx, m.programmed, m.tableErr} {
		ch <- d
	}
}

func (m *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	st := m.c.node.Status()
	num := func(s string) float64 {
		v, _ := strconv.ParseFloat(s, 64)
		return v
	}
	leader := 0.0
	if st.RaftState == "Leader" {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(m.leader, prometheus.GaugeValue, leader)
	ch <- prometheus.MustNewConstMetric(m.term, prometheus.GaugeValue, num(st.Term))
	ch <- prometheus.MustNewConstMetric(m.commit, prometheus.GaugeValue, num(st.CommitIndex))
	ch <- prometheus.MustNewConstMetric(m.applied, prometheus.GaugeValue, float64(st.Applied))
	ch <- prometheus.MustNewConstMetric(m.idx, prometheus.GaugeValue, float64(m.c.node.State().Index))
	p, terr := m.c.programmed()
	ch <- prometheus.MustNewConstMetric(m.programmed, prometheus.GaugeValue, float64(p))
	bad := 0.0
	if terr != "" {
		bad = 1
	}
	ch <- prometheus.MustNewConstMetric(m.tableErr, prometheus.GaugeValue, bad)
	byState := map[string]float64{"alive": 0, "left or failed": 0}
	for _, mb := range st.Members {
		byState[mb.State]++
	}
	for s, n := range byState {
		ch <- prometheus.MustNewConstMetric(m.members, prometheus.GaugeValue, n, s)
	}
}

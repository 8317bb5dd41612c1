// Package daemon wires directord's subsystems together: it loads the
// configuration, runs every subsystem as a task under one errgroup, serves
// the status socket and metrics, and applies reloads.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/vrrp"
)

// Options are what the command line gives the daemon.
type Options struct {
	ConfigFile string
	Version    string
	// Reload delivers a request to re-read the file (SIGHUP).
	Reload <-chan struct{}
	// Dump asks for the status written to a file beside the status
	// socket: "data" (SIGUSR1, keepalived's data dump) or "stats"
	// (SIGUSR2).
	Dump <-chan string
	// Log receives the daemon's log; os.Stderr when nil.
	Log io.Writer
}

// Daemon is one running directord.
type Daemon struct {
	opts       Options
	log        *slog.Logger
	level      *slog.LevelVar
	started    time.Time
	reg        *prometheus.Registry
	status     *status.Server
	reloads    chan chan api.ReloadResult
	vrrp       *vrrp.Group
	notify     *notifier
	fifo       *fifo
	local      *localOverrides // rs overrides without [cluster]
	localMu    sync.Mutex      // orders rs changes with reloads
	sd         *systemd
	scripts    *scriptRunner
	lvs        *lvsManager
	health     *health
	cluster    *clusterManager // nil without [cluster]
	bgp        *bgpManager     // nil without [bgp]
	clusterErr error           // why the cluster could not start, if it could not
	// programs runs every external program: as the script user, bounded.
	programs *healthcheck.Programs
	lbReady  atomic.Bool // lvs and health are set up
	// syncd and ctsync are set by New, before anything runs.
	syncd   *syncDaemons
	ctsync  *ctSync    // nil without [sync]
	drillMu sync.Mutex // one drill at a time

	mu         sync.Mutex
	cfg        *config.Config
	loadedAt   time.Time
	generation int
	reloadsOK  int
	reloadsBad int
	last       *api.ReloadResult
	drills     []api.DrillResult // the last drillsKept
	drillCount int

	mReloads    *prometheus.CounterVec
	mGeneration prometheus.Gauge
	mLastOK     prometheus.Gauge
	mDrills     *prometheus.CounterVec
	mDrillGap   *prometheus.HistogramVec
}

// Run loads the configuration and runs the daemon on the real kernel until
// ctx ends. It returns nil on a clean shutdown.
func Run(ctx context.Context, opts Options) error {
	if opts.Log == nil {
		opts.Log = os.Stderr
	}
	cfg, err := config.Load(opts.ConfigFile)
	if err != nil {
		return err
	}
	deps := KernelDeps()
	if err := deps.Privileges(); err != nil {
		return err
	}
	// Listen before anything else starts: status.Listen changes the
	// process umask for an instant.
	ln, err := status.Listen(cfg.Node.StatusSocket)
	if err != nil {
		return err
	}
	defer ln.Close()
	d, err := New(cfg, opts, deps)
	if err != nil {
		return err
	}
	return d.Run(ctx, ln)
}

// New sets up a daemon for cfg on deps: the cluster member, the data plane
// with cfg's table, the connection sync and the health checks. VRRP, the
// checks, the reconciler and the sync run only from Run; the cluster's
// Raft starts when the member is opened, as it restores its table.
func New(cfg *config.Config, opts Options, deps Deps) (*Daemon, error) {
	if opts.Log == nil {
		opts.Log = os.Stderr
	}
	d := newDaemon(opts, cfg, deps)
	if p := cfg.Node.RealtimePriority; p > 0 && deps.Realtime != nil {
		if err := deps.Realtime(p); err != nil {
			d.log.Warn("realtime priority not set; running at ordinary priority", "priority", p, "err", err)
		} else {
			d.log.Info("running under SCHED_RR", "priority", p)
		}
	}
	if err := os.MkdirAll(cfg.Node.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	witness := cfg.Node.Role == "witness"
	lbCfg := cfg // where the load balancer's virtual servers come from
	var err error
	if cfg.Cluster != nil {
		apply := func(vss []config.VirtualServer) error { return d.applyVirtualServers(nil, vss) }
		d.cluster, err = newClusterManager(cfg, d.log, deps.Cluster, apply)
		if err != nil {
			// VRRP never waits on the cluster: a corrupt raft.db stops
			// the replication, not the failover.
			d.clusterErr = err
			d.log.Error("the cluster cannot start; VRRP and the load balancer run without it, on the last committed table", "err", err)
		} else {
			d.cluster.hold = d.vrrp.SetFault
			d.status.HandleTable("POST /v1/cluster", d.cluster.handle)
			d.status.Handle("POST /v1/cluster/leave", d.cluster.handleLeave)
			d.status.Handle("POST /v1/cluster/rejoin", d.cluster.handleRejoin)
			d.reg.MustRegister(newClusterCollector(d.cluster))
		}
		// Start from the last committed table: the data plane must not
		// wait for Raft (a restart without quorum keeps serving).
		if s, ok := cachedState(clusterCache(cfg), d.log); ok {
			if vss, err := virtualServers(s); err == nil {
				c := *cfg
				c.VirtualServers = vss
				lbCfg = &c
				if d.cluster != nil {
					d.cluster.programming(s.Index)
				}
			}
		}
	}
	if cfg.Cluster == nil {
		// Without a cluster the operators' rs changes are this
		// director's own, kept in data_dir.
		if d.local, err = loadLocalOverrides(localOverridesFile(cfg.Node.DataDir)); err != nil {
			d.log.Error("the real-server overrides kept from the last run cannot be read; starting without them", "err", err)
		}
		c := *cfg
		c.VirtualServers = d.local.apply(cfg.VirtualServers)
		lbCfg = &c
		d.status.Handle("POST /v1/cluster", d.handleLocal)
	}
	if witness {
		// A witness only votes: no data plane, no checks, no VRRP.
		c := *cfg
		c.VirtualServers = nil
		lbCfg = &c
		d.lvs = &lvsManager{log: d.log, reason: "none: this node is a witness"}
	} else if d.lvs, err = openLVS(lbCfg, d.log, deps); err != nil {
		return nil, err
	}
	d.reg.MustRegister(newLVSCollector(d.lvs))
	d.syncd = newSyncDaemons(d.log, cfg, d.lvs.dp)
	cts, err := newCTSync(lbCfg, d.lvs.dp, d.log, deps, d.cluster.secure())
	if err != nil {
		return nil, err
	}
	if cts != nil {
		d.ctsync = cts
		d.reg.MustRegister(newCTSyncCollector(cts))
	}
	d.health = newHealth(d.log, d.lvs, d.programs)
	if err := d.health.apply(lbCfg); err != nil {
		return nil, err
	}
	d.lbReady.Store(true)
	if d.cluster != nil {
		d.cluster.lastReconcile = d.lvs.lastReconcile
		// A change committed while the load balancer was being set up.
		if s := d.cluster.node.State(); s.Seeded {
			d.cluster.changed(s)
		}
	}
	d.reg.MustRegister(newHealthCollector(d.health))
	if !witness {
		if d.bgp, err = newBGPManager(d.log, lbCfg, deps, d.lvs); err != nil {
			return nil, err
		}
	}
	if d.bgp != nil {
		d.reg.MustRegister(newBGPCollector(d.bgp))
		d.status.Handle("POST /v1/bgp/withdraw", d.bgp.handleHold(true))
		d.status.Handle("POST /v1/bgp/announce", d.bgp.handleHold(false))
		d.status.Handle("POST /v1/bgp/drill", http.HandlerFunc(d.handleBGPDrill))
	}
	return d, nil
}

// Run serves the status API on ln and runs every subsystem until ctx
// ends. It returns nil on a clean shutdown.
func (d *Daemon) Run(ctx context.Context, ln net.Listener) error {
	defer d.syncd.stop()
	cfg := d.config()
	var mln net.Listener
	if cfg.Node.MetricsListen != "" {
		var err error
		if mln, err = net.Listen("tcp", cfg.Node.MetricsListen); err != nil {
			return fmt.Errorf("metrics_listen: %w", err)
		}
		defer mln.Close()
	}

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return d.status.Serve(ctx, ln) })
	if mln != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
		g.Go(func() error { return status.ServeHTTP(ctx, mln, mux, d.log) })
	}
	g.Go(func() error { return d.reloadLoop(ctx) })
	g.Go(func() error { return d.ready(ctx) })
	g.Go(func() error {
		return d.sd.watch(ctx, d.vrrp.Ping, func(err error) { d.log.Error("systemd watchdog not fed", "err", err) })
	})
	// VRRP runs from the file's settings alone and never waits on any other
	// subsystem: failover must work whatever else is doing.
	if cfg.Node.Role != "witness" {
		g.Go(func() error {
			// keepalived's vrrp_startup_delay: after a boot the links may
			// need a moment before VRRP should judge them.
			if delay := cfg.Node.VRRPStartupDelay; delay > 0 {
				d.log.Info("VRRP starts after vrrp_startup_delay", "delay", delay)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(delay):
				}
			}
			return d.vrrp.Run(ctx, vrrpConfigs(cfg))
		})
	}
	if d.cluster != nil {
		g.Go(func() error { return d.cluster.Run(ctx) })
		g.Go(func() error { return d.publishLoop(ctx) })
	}
	g.Go(func() error { return d.scripts.Run(ctx, cfg.VRRPScripts) })
	g.Go(func() error { return d.trackFiles(ctx, time.Second) })
	g.Go(func() error { return d.trackProcesses(ctx, "/proc") })
	// With BGP the data plane outlives the rest at a stop: it serves
	// until the routes are withdrawn, after shutdown_delay.
	lvsCtx := ctx
	if b := d.bgp; b != nil {
		var stopLVS context.CancelFunc
		lvsCtx, stopLVS = context.WithCancel(context.WithoutCancel(ctx))
		g.Go(func() error { return b.Run(ctx) })
		g.Go(func() error {
			<-ctx.Done()
			<-b.done
			stopLVS()
			return nil
		})
	}
	g.Go(func() error { return d.lvs.Run(lvsCtx, cfg.Dataplane.ReconcileInterval) })
	g.Go(func() error { return d.health.runner.Run(ctx) })
	if cts := d.ctsync; cts != nil {
		g.Go(func() error { return cts.Run(ctx) })
	}

	d.log.Info("directord started", "node", cfg.Node.Name, "version", d.opts.Version, "config", cfg.File,
		"status_socket", cfg.Node.StatusSocket, "metrics", cfg.Node.MetricsListen,
		"vrrp_instances", len(cfg.VRRP), "virtual_servers", len(cfg.VirtualServers))
	err := g.Wait()
	d.notify.Close() // runs the notify_stop programs of the shutdown
	d.fifo.Close()
	d.log.Info("directord stopped")
	return err
}

func newDaemon(opts Options, cfg *config.Config, kernel Deps) *Daemon {
	level := new(slog.LevelVar)
	level.Set(parseLevel(cfg.Node.LogLevel))
	d := &Daemon{
		opts:       opts,
		log:        newLogger(opts.Log, cfg.Node.LogFormat, level),
		level:      level,
		started:    time.Now(),
		reg:        prometheus.NewRegistry(),
		reloads:    make(chan chan api.ReloadResult),
		cfg:        cfg,
		loadedAt:   time.Now(),
		generation: 1,
	}
	d.status = status.NewServer(d.log, d.document)
	d.sd = newSystemd(os.Getenv)
	d.programs = newPrograms(cfg.Node)
	deps := kernel.VRRP
	deps.Log = d.log
	d.notify = newNotifier(d.log, func(name string) (config.Notify, bool) {
		for _, in := range d.config().VRRP {
			if in.Name == name {
				return in.Notify, true
			}
		}
		return config.Notify{}, false
	}, d.programs)
	d.fifo = newFIFO(d.log, func() string { return d.config().Node.NotifyFIFO })
	deps.LowerPriority = func(instance string, from netip.Addr, prio uint8) {
		d.notify.LowerPriority(instance, from, prio)
		d.fifo.line("INSTANCE", instance, "MASTER_RX_LOWER_PRI", prio)
	}
	deps.Notify = func(instance string, t vrrp.Transition) {
		d.notify.Notify(instance, t)
		d.fifo.line("INSTANCE", instance, stateName(t.To), t.Priority)
		if s := d.syncd; s != nil {
			s.transition(instance, t)
		}
		if c := d.ctsync; c != nil {
			c.transition(instance, t)
		}
	}
	d.vrrp = vrrp.NewGroup(deps)
	d.scripts = newScriptRunner(d.log, d.vrrp.SetScript, d.programs)
	d.registerMetrics()
	d.status.Handle("GET /v1/config", func(w http.ResponseWriter, r *http.Request) {
		status.WriteJSON(w, http.StatusOK, config.Shown(redacted(d.config())))
	})
	d.status.Handle("POST /v1/reload", d.handleReload)
	d.status.Handle("POST /v1/vrrp/{instance}/failover", d.handleFailover)
	d.status.Handle("POST /v1/drill", d.handleDrill)
	d.status.Handle("GET /v1/lvs/flows", func(w http.ResponseWriter, r *http.Request) { d.lvs.handleFlows(w, r) })
	d.status.Handle("POST /v1/lvs/zero", func(w http.ResponseWriter, r *http.Request) { d.lvs.handleZero(w, r) })
	return d
}

func newLogger(w io.Writer, format string, level *slog.LevelVar) *slog.Logger {
	// Durations read the same in both formats and in every line: Go
	// duration strings ("1.5s"), where the JSON handler would write
	// nanoseconds next to fields logged as strings.
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Value.Kind() == slog.KindDuration {
			a.Value = slog.StringValue(a.Value.Duration().String())
		}
		return a
	}}
	if toJournal(w, os.Getenv("JOURNAL_STREAM")) {
		return slog.New(newJournalHandler(w, format == "json", opts))
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(s)) // validated by config
	return l
}

func (d *Daemon) registerMetrics() {
	d.mReloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directord_config_reloads_total",
		Help: "Configuration reloads, by result (ok, failed).",
	}, []string{"result"})
	d.mGeneration = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "directord_config_generation",
		Help: "Number of configurations applied since start (1 = the one read at start).",
	})
	d.mLastOK = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "directord_config_last_load_success_timestamp_seconds",
		Help: "When the running configuration was loaded.",
	})
	d.mDrills = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "directord_drills_total",
		Help: "Drills run here (failover and BGP), by outcome (ok, refused, failed).",
	}, []string{"outcome"})
	for _, o := range []string{"ok", "refused", "failed"} {
		d.mDrills.WithLabelValues(o)
	}
	d.mDrillGap = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "directord_drill_gap_seconds",
		Help:    "Longest gap between answered probes during a drill's handover (and its hand back), by VRRP instance.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2, 3, 5, 10, 30},
	}, []string{"vrrp_instance"})
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "directord_build_info",
		Help: "Always 1; labels give the version of directord and Go.",
	}, []string{"version", "goversion"})
	info.WithLabelValues(d.opts.Version, runtime.Version()).Set(1)
	d.mReloads.WithLabelValues("ok")
	d.mReloads.WithLabelValues("failed")
	d.mGeneration.Set(1)
	d.mLastOK.Set(float64(d.loadedAt.UnixNano()) / 1e9)
	d.reg.MustRegister(d.mReloads, d.mGeneration, d.mLastOK, d.mDrills, d.mDrillGap, info,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newVRRPCollector(d.vrrp))
}

func (d *Daemon) config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg
}

// redacted is cfg as /v1/config shows it: health-check header values
// (tokens, basic auth) are secrets. Keys are shown; the gossip and sync
// keys never are (json:"-").
func redacted(cfg *config.Config) *config.Config {
	c := *cfg
	c.VirtualServers = slices.Clone(cfg.VirtualServers)
	for i, vs := range c.VirtualServers {
		if vs.HealthCheck == nil || len(vs.HealthCheck.Headers) == 0 {
			continue
		}
		hc := *vs.HealthCheck
		hc.Headers = map[string]string{}
		for k := range vs.HealthCheck.Headers {
			hc.Headers[k] = "(redacted)"
		}
		c.VirtualServers[i].HealthCheck = &hc
	}
	return &c
}

// dump writes the status document ("data": every section; "stats": the
// counters of VRRP, the load balancer and the checks) as JSON beside the
// status socket, and logs where.
func (d *Daemon) dump(kind string) {
	doc := d.document("")
	name := "directord.json"
	if kind == "stats" {
		doc = api.Document{APIVersion: doc.APIVersion, VRRP: doc.VRRP, LVS: doc.LVS, Health: doc.Health, Sync: doc.Sync}
		name = "directord.stats.json"
	}
	path := filepath.Join(filepath.Dir(d.config().Node.StatusSocket), name)
	if err := writeAtomic(path, doc); err != nil {
		d.log.Error("status dump failed", "kind", kind, "file", path, "err", err)
		return
	}
	d.log.Info("status dumped", "kind", kind, "file", path)
}

// reloadLoop serialises reloads from SIGHUP and from the status socket.
func (d *Daemon) reloadLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.opts.Reload:
			d.notifiedReload()
		case kind := <-d.opts.Dump:
			d.dump(kind)
		case reply := <-d.reloads:
			reply <- d.notifiedReload()
		}
	}
}

// notifiedReload is reload between systemd's RELOADING=1 and READY=1.
func (d *Daemon) notifiedReload() api.ReloadResult {
	if err := d.sd.reloading(); err != nil {
		d.log.Warn("systemd notify", "err", err)
	}
	res := d.reload()
	status := "STATUS=reload applied"
	if !res.OK {
		status = "STATUS=reload refused; running the previous configuration"
	}
	if err := d.sd.notify("READY=1", status); err != nil {
		d.log.Warn("systemd notify", "err", err)
	}
	return res
}

// ready tells systemd the daemon is up once its status socket answers
// (it serves from the start of Run) and the first reconcile has run,
// and that it is stopping when ctx ends.
func (d *Daemon) ready(ctx context.Context) error {
	for d.lvs.rec != nil && d.lvs.rec.Last().At.IsZero() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := d.sd.notify("READY=1", "STATUS=running"); err != nil {
		d.log.Warn("systemd notify", "err", err)
	}
	<-ctx.Done()
	if err := d.sd.notify("STOPPING=1"); err != nil {
		d.log.Warn("systemd notify", "err", err)
	}
	return nil
}

// reload re-reads the file. A file with any problem changes nothing: the
// running configuration stays as it was.
func (d *Daemon) reload() api.ReloadResult {
	res := api.ReloadResult{At: time.Now()}
	cfg, err := config.Load(d.opts.ConfigFile)
	if err == nil {
		err = d.lvs.check(cfg)
	}
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				res.Problems = append(res.Problems, p.String())
			}
		} else {
			res.Problems = []string{err.Error()}
		}
		d.log.Error("reload rejected: the running configuration is unchanged",
			"config", d.opts.ConfigFile, "problems", len(res.Problems))
		for _, p := range res.Problems {
			d.log.Error("config problem", "problem", p)
		}
		d.mu.Lock()
		d.reloadsBad++
		d.last = &res
		d.mu.Unlock()
		d.mReloads.WithLabelValues("failed").Inc()
		return res
	}

	changes := config.Diff(d.config(), cfg)
	res.OK, res.Changes = true, &changes
	if slices.Contains(changes.Live, "node.log_level") {
		d.level.Set(parseLevel(cfg.Node.LogLevel))
	}
	d.scripts.Update(cfg.VRRPScripts)
	res.VRRPStarted, res.VRRPInPlace = d.vrrp.Update(vrrpConfigs(cfg))
	if len(res.VRRPStarted)+len(res.VRRPInPlace) > 0 {
		d.log.Info("reload: VRRP applied", "started", res.VRRPStarted, "reconfigured_in_place", res.VRRPInPlace)
	}
	switch {
	case d.cluster != nil:
		// The cluster's table is in force; the file's is only compared.
		d.cluster.compare(cfg)
		if err := d.cluster.reloadSecrets(cfg, slices.Contains(changes.Live, "cluster.encrypt_key")); err != nil {
			d.log.Error("reload: the cluster's certificates or keys were not rotated", "err", err)
			res.Problems = append(res.Problems, err.Error())
		}
	case d.clusterErr == nil:
		// Held until the new file is the running one: an rs change made
		// meanwhile applies against it, not the old one.
		d.localMu.Lock()
		defer d.localMu.Unlock()
		d.applyVirtualServers(cfg, d.local.apply(cfg.VirtualServers))
	}
	if changes.Empty() {
		d.log.Info("reload: no change", "config", cfg.File)
	} else {
		d.log.Info("reload applied", "config", cfg.File,
			"vrrp_added", changes.VRRP.Added, "vrrp_removed", changes.VRRP.Removed, "vrrp_changed", changes.VRRP.Changed,
			"vs_added", changes.VirtualServers.Added, "vs_removed", changes.VirtualServers.Removed, "vs_changed", changes.VirtualServers.Changed,
			"live", changes.Live)
	}
	if len(changes.Restart) > 0 {
		d.log.Warn("reload: these settings take effect only after a restart", "settings", changes.Restart)
	}
	d.mu.Lock()
	d.cfg = cfg
	d.loadedAt = res.At
	d.generation++
	d.reloadsOK++
	d.last = &res
	gen := d.generation
	d.mu.Unlock()
	d.mReloads.WithLabelValues("ok").Inc()
	d.mGeneration.Set(float64(gen))
	d.mLastOK.Set(float64(res.At.UnixNano()) / 1e9)
	return res
}

// applyVirtualServers programs vss (from the file, or the cluster) with
// the rest of base, or of the running configuration when base is nil.
func (d *Daemon) applyVirtualServers(base *config.Config, vss []config.VirtualServer) error {
	if !d.lbReady.Load() {
		return nil // the start applies the latest table itself
	}
	if base == nil {
		base = d.config()
	}
	c := *base
	c.VirtualServers = vss
	if c.Node.Role == "witness" {
		return nil
	}
	if err := d.lvs.check(&c); err != nil {
		d.log.Error("virtual servers not applied: this node's data plane cannot carry them out", "err", err)
		return err
	}
	err := d.lvs.apply(&c)
	d.ctsync.setServices(vss)
	if d.bgp != nil {
		d.bgp.apply(&c)
	}
	if herr := d.health.apply(&c); herr != nil {
		d.log.Error("health checks not updated", "err", herr)
	}
	return err
}

func (d *Daemon) handleReload(w http.ResponseWriter, r *http.Request) {
	reply := make(chan api.ReloadResult, 1)
	select {
	case d.reloads <- reply:
	case <-r.Context().Done():
		return
	}
	res := <-reply
	if !res.OK {
		status.WriteError(w, http.StatusUnprocessableEntity,
			errors.New("configuration rejected; the running configuration is unchanged"), res.Problems...)
		return
	}
	status.WriteJSON(w, http.StatusOK, res)
}

// document builds the status document, or only its section called only.
// A section is present when its subsystem is running here.
func (d *Daemon) document(only string) api.Document {
	want := func(name string) bool { return only == "" || only == name }
	doc := api.Document{APIVersion: api.Version}
	if want(api.SectionNode) {
		doc.Node = d.nodeStatus()
	}
	if want(api.SectionConfig) {
		doc.Config = d.configStatus()
	}
	if want(api.SectionVRRP) {
		doc.VRRP = vrrpStatus(d.vrrp, d.scripts)
	}
	if want(api.SectionLVS) && d.lvs != nil {
		doc.LVS = d.lvs.status()
		if doc.LVS != nil {
			doc.LVS.Overrides = d.local.shown()
		}
	}
	if want(api.SectionHealth) && d.health != nil {
		doc.Health = d.health.status()
	}
	if want(api.SectionCluster) && d.cluster != nil {
		doc.Cluster = d.cluster.status()
	} else if want(api.SectionCluster) && d.clusterErr != nil {
		doc.Cluster = &api.ClusterStatus{ID: d.config().Node.Name, Error: d.clusterErr.Error()}
	}
	if cts := d.ctsync; want(api.SectionSync) && cts != nil {
		doc.Sync = cts.status()
	}
	if want(api.SectionDrills) {
		doc.Drills = d.drillsStatus()
	}
	if want(api.SectionBGP) && d.bgp != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		doc.BGP = d.bgp.status(ctx)
		cancel()
	}
	return doc
}

func (d *Daemon) nodeStatus() *api.NodeStatus {
	return &api.NodeStatus{
		Name:      d.config().Node.Name,
		Version:   d.opts.Version,
		PID:       os.Getpid(),
		StartedAt: d.started,
		Uptime:    time.Since(d.started).Round(time.Second).String(),
	}
}

func (d *Daemon) configStatus() *api.ConfigStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &api.ConfigStatus{
		File:           d.cfg.File,
		LoadedAt:       d.loadedAt,
		Generation:     d.generation,
		ReloadsOK:      d.reloadsOK,
		ReloadsFailed:  d.reloadsBad,
		LastReload:     d.last,
		Dataplane:      d.cfg.Dataplane.Kind,
		VRRPInstances:  len(d.cfg.VRRP),
		VirtualServers: len(d.cfg.VirtualServers),
		Cluster:        d.cfg.Cluster != nil,
	}
}

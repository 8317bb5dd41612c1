package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/lvs"
	"github.com/prometheus/client_golang/prometheus"
)

// lvsManager runs the load balancer's reconciler. Both directors program
// their kernel whatever their VRRP state, so a backup's table is ready
// when it takes over.
type lvsManager struct {
	log    *slog.Logger
	dp     lvs.Dataplane // nil when no data plane could be opened
	rec    *lvs.Reconciler
	reason string // why this data plane (or why none)
	sysctl func([]lvs.Sysctl) []lvs.Sysctl

	mu         sync.Mutex
	repairs    map[string]uint64 // drift repaired, by kind
	sysctls    []lvs.Sysctl
	names      map[lvs.Key]string
	reals      map[lvs.Key][]netip.AddrPort // as configured, sorry server included
	lastDigest string                       // digest of the kernel's table...
	digestAt   time.Time                    // ...after the reconcile of this time
}

// planeName is dp's name, or "none".
func planeName(dp lvs.Dataplane) string {
	if dp == nil {
		return "none"
	}
	return dp.Name()
}

// chooseDataplane resolves kind ("auto", "ipvs", "nftables") to a data
// plane name and says why.
func chooseDataplane(kind string) (name, reason string, err error) {
	switch kind {
	case "ipvs":
		if err := lvs.DetectIPVS(); err != nil {
			return "", "", err
		}
		return "ipvs", "configured: dataplane.kind = ipvs", nil
	case "nftables":
		return "nftables", "configured: dataplane.kind = nftables", nil
	}
	if err := lvs.DetectIPVS(); err != nil {
		return "nftables", "auto: " + err.Error(), nil
	}
	return "ipvs", "auto: the kernel has IPVS", nil
}

func openLVS(cfg *config.Config, log *slog.Logger, deps Deps) (*lvsManager, error) {
	m := &lvsManager{log: log, sysctl: deps.Sysctls}
	var reason string
	var err error
	m.dp, reason, err = deps.Dataplane(cfg.Dataplane, log.With("subsystem", "lvs"))
	if err != nil {
		if len(cfg.VirtualServers) > 0 || cfg.Dataplane.Kind != "auto" {
			return nil, fmt.Errorf("dataplane %s: %w", cfg.Dataplane.Kind, err)
		}
		m.dp = nil
		m.reason = "none: " + err.Error()
		log.Warn("no load-balancer data plane; virtual servers cannot be added until one works", "err", err)
		return m, nil
	}
	m.reason = reason
	if err := checkDataplane(cfg, m.dp.Capabilities()); err != nil {
		m.dp.Close()
		return nil, err
	}
	m.rec, err = lvs.NewReconciler(m.dp, lvs.Options{
		Logger:    log.With("subsystem", "lvs"),
		OwnedFile: filepath.Join(cfg.Node.DataDir, "lvs-owned.json"),
		Flush:     cfg.Dataplane.LVSFlush,
		OnRepair: func(x lvs.Repair) {
			m.mu.Lock()
			if m.repairs == nil {
				m.repairs = map[string]uint64{}
			}
			m.repairs[x.Kind]++
			m.mu.Unlock()
		},
	})
	if err != nil {
		m.dp.Close()
		return nil, err
	}
	log.Info("load balancer", "dataplane", m.dp.Name(), "reason", reason)
	m.apply(cfg)
	return m, nil
}

// check says whether cfg can run on the open data plane.
func (m *lvsManager) check(cfg *config.Config) error {
	if m.dp == nil {
		if len(cfg.VirtualServers) > 0 {
			return &config.Error{Problems: []config.Problem{
				cfg.ProblemAt("no load-balancer data plane ("+m.reason+")", "virtual_server", 0, "name")}}
		}
		return nil
	}
	return checkDataplane(cfg, m.dp.Capabilities())
}

// checkDataplane lists, with their lines, the settings a data plane with
// capabilities caps cannot carry out.
func checkDataplane(cfg *config.Config, caps lvs.Capabilities) error {
	var ps []config.Problem
	for i, vs := range lvsConfigs(cfg) {
		for _, u := range caps.Unsupported(vs.Service, vs.Reals) {
			path := []any{"virtual_server", i, u.Field}
			if u.Real >= 0 {
				path = []any{"virtual_server", i, "real_server", u.Real, u.Field}
				if u.Field == "forwarding" && cfg.VirtualServers[i].RealServers[u.Real].Forwarding == cfg.VirtualServers[i].Forwarding {
					path = []any{"virtual_server", i, "forwarding"}
				}
			}
			ps = append(ps, cfg.ProblemAt(u.Msg, path...))
		}
		if caps.Name == lvs.NFTCapabilities.Name && cfg.Dataplane.DRInterface == "" &&
			slices.ContainsFunc(vs.Reals, func(r lvs.Real) bool { return r.Method == lvs.DR }) {
			ps = append(ps, cfg.ProblemAt("direct routing on the nftables data plane needs dataplane.dr_interface, the interface facing the router, whose ingress takes the service's packets", "virtual_server", i, "forwarding"))
		}
	}
	if len(ps) == 0 {
		return nil
	}
	return &config.Error{Problems: dedupe(ps)}
}

func dedupe(ps []config.Problem) []config.Problem {
	seen := map[config.Problem]bool{}
	var out []config.Problem
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// CheckConfig loads a file and checks it against the data plane this
// machine would use: what directord -t does. It touches no kernel state:
// "auto" is resolved from files (lvs.IPVSAvailable).
func CheckConfig(file string) (*config.Config, error) {
	return checkConfig(file, lvs.IPVSAvailable, lvs.IPVSKernelCapabilities)
}

// checkConfig is CheckConfig with the kernel's answers injected: whether
// it has IPVS, and IPVS's table with the schedulers it has.
func checkConfig(file string, ipvsAvailable func() (bool, string), ipvsCaps func() (lvs.Capabilities, string)) (*config.Config, error) {
	cfg, err := config.Load(file)
	if err != nil {
		return nil, err
	}
	if len(cfg.VirtualServers) == 0 {
		return cfg, nil
	}
	caps, reason := lvs.NFTCapabilities, "configured: dataplane.kind = nftables"
	switch cfg.Dataplane.Kind {
	case "ipvs":
		c, scheds := ipvsCaps()
		caps, reason = c, "configured: dataplane.kind = ipvs; "+scheds
	case "auto":
		ok, why := ipvsAvailable()
		reason = "auto: " + why
		if ok {
			c, scheds := ipvsCaps()
			caps, reason = c, reason+"; "+scheds
		}
	}
	if err := checkDataplane(cfg, caps); err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			for i := range ce.Problems {
				ce.Problems[i].Msg += " (data plane " + caps.Name + ", " + reason + ")"
			}
		}
		return nil, err
	}
	return cfg, nil
}

// apply hands the configuration to the reconciler and sets the sysctls it
// needs. The reconcile itself happens in Run. The error is the part of
// the table the data plane cannot carry out.
func (m *lvsManager) apply(cfg *config.Config) error {
	if m.rec == nil {
		return nil
	}
	vss := lvsConfigs(cfg)
	names, reals := map[lvs.Key]string{}, map[lvs.Key][]netip.AddrPort{}
	for _, vs := range vss {
		names[vs.Key] = vs.Name
		for _, r := range vs.Reals {
			reals[vs.Key] = append(reals[vs.Key], r.Addr)
		}
		if vs.Sorry != nil {
			reals[vs.Key] = append(reals[vs.Key], vs.Sorry.Addr)
		}
	}
	sys := m.sysctl(lvs.NeededSysctls(m.dp.Capabilities(), vss))
	for _, s := range sys {
		if s.Err != "" {
			m.log.Error("cannot set a sysctl the load balancer needs", "key", s.Key, "want", s.Want, "err", s.Err)
		} else if s.Was != s.Want {
			m.log.Info("sysctl set for the load balancer", "key", s.Key, "was", s.Was, "now", s.Want, "why", s.Why)
		}
	}
	m.mu.Lock()
	// Keep the value found before directord first set it.
	for i, s := range sys {
		for _, old := range m.sysctls {
			if old.Key == s.Key && s.Was == s.Want && old.Was != "" {
				sys[i].Was = old.Was
			}
		}
	}
	m.sysctls, m.names, m.reals = sys, names, reals
	m.mu.Unlock()
	if m.dp.Capabilities().SlotWeights {
		for _, vs := range vss {
			if lvs.SlotsScaled(vs.Scheduler, vs.Reals) {
				m.log.Warn("wrr weights scaled: their ratio needs more slots than the data plane gives a service, so traffic follows it only roughly",
					"virtual_server", vs.Name, "dataplane", m.dp.Name(), "max_slots", lvs.MaxSlots)
			}
		}
	}
	if ts, ok := m.dp.(lvs.TimeoutSetter); ok {
		if err := ts.SetTimeouts(lvs.Timeouts(cfg.Dataplane.Timeouts)); err != nil {
			m.log.Error("cannot set the connections' timeouts", "err", err)
		}
	}
	if err := m.rec.Set(vss); err != nil {
		m.log.Error("the data plane cannot carry out part of the table", "err", err)
		return err
	}
	return nil
}

// lastReconcile is the latest reconcile's result, or false without a
// data plane.
func (m *lvsManager) lastReconcile() (lvs.Result, bool) {
	if m.rec == nil {
		return lvs.Result{}, false
	}
	return m.rec.Last(), true
}

// Run reconciles until ctx ends, then removes what it made.
func (m *lvsManager) Run(ctx context.Context, interval time.Duration) error {
	if m.rec == nil {
		<-ctx.Done()
		return nil
	}
	err := m.rec.Run(ctx, interval)
	if cerr := m.dp.Close(); err == nil {
		err = cerr
	}
	return err
}

func lvsConfigs(cfg *config.Config) []lvs.VirtualServer {
	out := make([]lvs.VirtualServer, 0, len(cfg.VirtualServers))
	for _, vs := range cfg.VirtualServers {
		s := lvs.Service{Scheduler: vs.Scheduler, OnePacket: vs.OnePacket, Masquerade: vs.Masquerade,
			Persistence: vs.PersistenceTimeout, PersistenceBits: vs.PersistenceBits}
		if vs.FWMark != 0 {
			s.Key = lvs.Key{FWMark: vs.FWMark, IPv6: vs.IPv6}
		} else {
			s.Key = lvs.Key{Protocol: lvs.Protocol(vs.Protocol), Addr: vs.Address}
		}
		for _, f := range vs.SchedulerFlags {
			s.Flags |= lvs.SchedFlags[f]
		}
		v := lvs.VirtualServer{Service: s, Name: vs.Name, Quorum: vs.Quorum, Hysteresis: vs.Hysteresis,
			InhibitOnFailure: vs.InhibitOnFailure, DrainTimeout: vs.DrainTimeout}
		for _, rs := range vs.RealServers {
			v.Reals = append(v.Reals, lvs.Real{Addr: rs.Address, Weight: rs.Weight, Method: lvs.Method(rs.Forwarding),
				Upper: uint32(rs.UpperThreshold), Lower: uint32(rs.LowerThreshold)})
		}
		if vs.SorryServer != nil {
			v.Sorry = &lvs.Real{Addr: *vs.SorryServer, Weight: 1, Method: lvs.Method(vs.Forwarding)}
		}
		out = append(out, v)
	}
	return out
}

func (m *lvsManager) status() *api.LVSStatus {
	st := &api.LVSStatus{Dataplane: "none", Reason: m.reason, Services: []api.LVSService{}}
	if m.dp == nil {
		return st
	}
	st.Dataplane = m.dp.Name()
	caps := m.dp.Capabilities()
	st.Capabilities = &api.Capabilities{Schedulers: caps.Schedulers, Features: caps.Features()}
	for _, f := range caps.Methods {
		st.Capabilities.Forwarding = append(st.Capabilities.Forwarding, string(f))
	}
	m.mu.Lock()
	for _, s := range m.sysctls {
		st.Sysctls = append(st.Sysctls, api.Sysctl(s))
	}
	names := m.names
	m.mu.Unlock()
	st.LastReconcile = api.Reconcile(m.rec.Last())
	if ts, ok := m.dp.(lvs.TimeoutSetter); ok {
		if t, err := ts.Timeouts(); err == nil && t != (lvs.Timeouts{}) {
			st.Timeouts = &api.Timeouts{TCP: t.TCP.String(), TCPFin: t.TCPFin.String(), UDP: t.UDP.String()}
		}
	}
	es, err := lvs.ListWithStats(m.dp)
	if err != nil {
		st.Error = err.Error()
	}
	if caps.SyncDaemon {
		sds, _ := lvs.SyncDaemons()
		for _, sd := range sds {
			st.SyncDaemons = append(st.SyncDaemons, api.SyncDaemon{State: api.SyncDaemonState(sd.State), Interface: sd.Interface,
				SyncID: sd.SyncID, MaxLen: sd.MaxLen, Group: sd.Group, Port: sd.Port, TTL: sd.TTL})
		}
	}
	quorum, draining := m.rec.QuorumUp(), m.rec.Draining()
	for _, e := range es {
		st.Services = append(st.Services, apiService(e, names[e.Key], quorum[e.Key], draining[e.Key]))
	}
	return st
}

// apiService is a kernel's service entry as the API has it.
// apiKey is a service's key in the status's terms.
func apiKey(k lvs.Key) api.LVSKey {
	return api.LVSKey{Protocol: string(k.Protocol), Addr: k.Addr, FWMark: k.FWMark, IPv6: k.IPv6}
}

func apiService(e lvs.Entry, name string, quorum bool, draining []netip.AddrPort) api.LVSService {
	s := api.LVSService{
		Name:      name,
		LVSKey:    apiKey(e.Key),
		Scheduler: e.Scheduler, Flags: e.Flags, OnePacket: e.OnePacket, Persistence: e.Persistence,
		PersistenceBits: e.PersistenceBits, Masquerade: e.Masquerade,
		Reals: make([]api.LVSReal, 0, len(e.Reals)), Stats: api.LVSStats(e.Stats), QuorumUp: quorum, Draining: draining,
	}
	for _, r := range e.Reals {
		s.Reals = append(s.Reals, api.LVSReal{Addr: r.Addr, Weight: r.Weight, Method: string(r.Method), Upper: r.Upper, Lower: r.Lower,
			Active: r.Active, Inactive: r.Inactive, Stats: api.LVSStats(r.Stats)})
	}
	return s
}

// digest fingerprints the services directord manages as the kernel has
// them ("" without a data plane), for a peer to compare with its own. The
// kernel is read again only after a reconcile: listing a large IPVS table
// costs a netlink dump per service.
func (m *lvsManager) digest() string {
	if m.dp == nil {
		return ""
	}
	last := m.rec.Last().At
	m.mu.Lock()
	if !last.IsZero() && last.Equal(m.digestAt) {
		d := m.lastDigest
		m.mu.Unlock()
		return d
	}
	names := m.names
	m.mu.Unlock()
	es, err := m.dp.List()
	if err != nil {
		return "error"
	}
	es = slices.DeleteFunc(es, func(e lvs.Entry) bool { _, ok := names[e.Key]; return !ok })
	d := lvs.Digest(es)
	m.mu.Lock()
	m.lastDigest, m.digestAt = d, last
	m.mu.Unlock()
	return d
}

// lvsCollector exports the kernel's counters per virtual server and real
// server. The service label is the virtual server's name, as in every
// other family; a configured real server the kernel does not hold (down,
// or drained away) keeps its series, at 0.
type lvsCollector struct {
	m                                               *lvsManager
	conns, pktsIn, pktsOut, bytesIn, bytesOut       *prometheus.Desc
	active, inactive, weight, ops, refused, repairs *prometheus.Desc
	inKernel, info, quorum                          *prometheus.Desc
	// The service's own totals, in families of their own.
	svcConns, svcPktsIn, svcPktsOut, svcBytesIn, svcBytesOut *prometheus.Desc
}

func newLVSCollector(m *lvsManager) *lvsCollector {
	rs, svc := []string{"service", "real_server"}, []string{"service"}
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc("directord_lvs_"+name, help, labels, nil)
	}
	return &lvsCollector{m: m,
		conns:       d("connections_total", "Connections scheduled to the real server.", rs),
		pktsIn:      d("packets_in_total", "Packets from clients to the real server.", rs),
		pktsOut:     d("packets_out_total", "Packets from the real server to clients.", rs),
		bytesIn:     d("bytes_in_total", "Bytes from clients to the real server.", rs),
		bytesOut:    d("bytes_out_total", "Bytes from the real server to clients.", rs),
		active:      d("active_connections", "Established connections of a real server (IPVS only).", rs),
		inactive:    d("inactive_connections", "Other connections of a real server (IPVS only).", rs),
		weight:      d("weight", "A real server's weight as programmed; 0 when it is not in the kernel's table.", rs),
		inKernel:    d("real_server_programmed", "1 while the real server is in the kernel's table (0: down and removed, or drained away).", rs),
		svcConns:    d("service_connections_total", "Connections scheduled by the virtual server.", svc),
		svcPktsIn:   d("service_packets_in_total", "Packets from clients to the virtual server.", svc),
		svcPktsOut:  d("service_packets_out_total", "Packets from the virtual server to clients.", svc),
		svcBytesIn:  d("service_bytes_in_total", "Bytes from clients to the virtual server.", svc),
		svcBytesOut: d("service_bytes_out_total", "Bytes from the virtual server to clients.", svc),
		info:        d("service_info", "Always 1: the virtual server's address (or fwmark) and protocol.", []string{"service", "address", "protocol"}),
		quorum:      d("service_quorum_up", "1 while the virtual server's live real servers reach its quorum (0: the sorry server, or nothing, takes its traffic).", svc),
		ops:         prometheus.NewDesc("directord_lvs_reconcile_operations", "Kernel operations the last reconcile issued.", nil, nil),
		refused: d("service_refused",
			"1 for each virtual server the kernel refused at the last reconcile (the others are programmed); its error is in directorctl lvs.", svc),
		repairs: prometheus.NewDesc("directord_lvs_repairs_total",
			"Changes made to the kernel's table outside directord, found and undone, by kind (table, service, real_server).", []string{"dataplane", "kind"}, nil),
	}
}

func (c *lvsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.pktsIn, c.pktsOut, c.bytesIn, c.bytesOut, c.active, c.inactive, c.weight,
		c.inKernel, c.quorum, c.svcConns, c.svcPktsIn, c.svcPktsOut, c.svcBytesIn, c.svcBytesOut, c.info, c.ops, c.refused, c.repairs} {
		ch <- d
	}
}

func (c *lvsCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m.dp == nil {
		return
	}
	last := c.m.rec.Last()
	ch <- prometheus.MustNewConstMetric(c.ops, prometheus.GaugeValue, float64(last.Ops))
	c.m.mu.Lock()
	names, reals := c.m.names, c.m.reals
	for _, kind := range []string{"table", "service", "real_server"} {
		ch <- prometheus.MustNewConstMetric(c.repairs, prometheus.CounterValue, float64(c.m.repairs[kind]), c.m.dp.Name(), kind)
	}
	c.m.mu.Unlock()
	quorum := c.m.rec.QuorumUp()
	for k, name := range names {
		if q, ok := quorum[k]; ok {
			ch <- prometheus.MustNewConstMetric(c.quorum, prometheus.GaugeValue, one(q), name)
		}
		_, refused := last.Refused[k.String()]
		ch <- prometheus.MustNewConstMetric(c.refused, prometheus.GaugeValue, one(refused), name)
		addr, proto := k.Addr.String(), string(k.Protocol)
		if k.FWMark != 0 {
			addr, proto = fmt.Sprintf("fwmark %d", k.FWMark), "any"
		}
		ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, name, addr, proto)
	}
	es, err := lvs.ListWithStats(c.m.dp)
	if err != nil {
		return
	}
	stats := func(s lvs.Stats, ds [5]*prometheus.Desc, labels ...string) {
		for i, v := range []uint64{s.Connections, s.PacketsIn, s.PacketsOut, s.BytesIn, s.BytesOut} {
			ch <- prometheus.MustNewConstMetric(ds[i], prometheus.CounterValue, float64(v), labels...)
		}
	}
	perReal := [5]*prometheus.Desc{c.conns, c.pktsIn, c.pktsOut, c.bytesIn, c.bytesOut}
	perService := [5]*prometheus.Desc{c.svcConns, c.svcPktsIn, c.svcPktsOut, c.svcBytesIn, c.svcBytesOut}
	for _, e := range es {
		svc, ours := names[e.Key]
		if !ours {
			continue // not directord's: another tool's service
		}
		stats(e.Stats, perService, svc)
		seen := map[netip.AddrPort]bool{}
		for _, r := range e.Reals {
			rs := r.Addr.String()
			seen[r.Addr] = true
			stats(r.Stats, perReal, svc, rs)
			ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(r.Active), svc, rs)
			ch <- prometheus.MustNewConstMetric(c.inactive, prometheus.GaugeValue, float64(r.Inactive), svc, rs)
			ch <- prometheus.MustNewConstMetric(c.weight, prometheus.GaugeValue, float64(r.Weight), svc, rs)
			ch <- prometheus.MustNewConstMetric(c.inKernel, prometheus.GaugeValue, 1, svc, rs)
		}
		for _, a := range reals[e.Key] {
			if seen[a] {
				continue
			}
			// Down or drained: its series stay, so that a graph shows
			// the server at 0 rather than a gap.
			rs := a.String()
			stats(lvs.Stats{}, perReal, svc, rs)
			for _, d := range []*prometheus.Desc{c.active, c.inactive, c.weight, c.inKernel} {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, 0, svc, rs)
			}
		}
	}
}

// handleFlows answers GET /v1/lvs/flows: the data plane's connections and
// persistence templates.
func (m *lvsManager) handleFlows(w http.ResponseWriter, r *http.Request) {
	fl, ok := m.dp.(lvs.FlowLister)
	if !ok {
		status.WriteError(w, http.StatusNotFound, fmt.Errorf("the %s data plane lists no connections", planeName(m.dp)))
		return
	}
	flows, err := fl.Flows()
	if err != nil {
		status.WriteError(w, http.StatusInternalServerError, err)
		return
	}
	lvs.SortFlows(flows)
	out := api.LVSFlows{Dataplane: m.dp.Name(), Flows: []api.LVSFlow{}}
	for _, f := range flows {
		out.Flows = append(out.Flows, api.LVSFlow{Protocol: string(f.Protocol), Client: f.Client, Service: apiKey(f.Service), Real: f.Real,
			State: f.State, Expires: f.Expires.String(), Template: f.Template})
	}
	status.WriteJSON(w, http.StatusOK, out)
}

// handleZero answers POST /v1/lvs/zero: the counters set to zero, as
// ipvsadm -Z.
func (m *lvsManager) handleZero(w http.ResponseWriter, r *http.Request) {
	z, ok := m.dp.(lvs.Zeroer)
	if !ok {
		status.WriteError(w, http.StatusConflict, fmt.Errorf("the %s data plane cannot zero its counters", planeName(m.dp)))
		return
	}
	if err := z.Zero(); err != nil {
		status.WriteError(w, http.StatusInternalServerError, err)
		return
	}
	m.log.Info("load balancer counters zeroed", "dataplane", m.dp.Name())
	status.WriteJSON(w, http.StatusOK, struct{}{})
}

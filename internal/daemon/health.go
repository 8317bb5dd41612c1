package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/lvs"
	"github.com/prometheus/client_golang/prometheus"
)

// health runs the real servers' checks and hands their transitions to the
// load balancer and the notify_up / notify_down programs. A real server
// with several checks is up while every one of them passes (keepalived's
// checkers of one real_server).
type health struct {
	log      *slog.Logger
	runner   *healthcheck.Runner
	programs *healthcheck.Programs
	// setHealth tells the load balancer; nil without one.
	setHealth func(lvs.Key, netip.AddrPort, lvs.Health)

	mu     sync.Mutex
	cfg    *config.Config
	checks map[healthcheck.ID]*config.HealthCheck
	alpha  map[healthcheck.ID]bool
	of     map[server][]healthcheck.ID // every check of a real server
	last   map[healthcheck.ID]healthcheck.Transition
	told   map[server]lvs.Health // what the load balancer was last told
}

// server is a real server of a virtual server.
type server struct {
	service string
	real    netip.AddrPort
}

// assumed is what the load balancer takes a server to be until told.
var assumed = lvs.Health{Up: true, Weight: -1}

func newHealth(log *slog.Logger, m *lvsManager, programs *healthcheck.Programs) *health {
	h := &health{log: log.With("subsystem", "healthcheck"), programs: programs,
		last: map[healthcheck.ID]healthcheck.Transition{}, told: map[server]lvs.Health{}}
	if m != nil && m.rec != nil {
		h.setHealth = m.rec.SetHealth
	}
	h.runner = healthcheck.NewRunner(h.log, h.transition)
	return h
}

// apply sets the checks of cfg; unchanged ones keep running.
func (h *health) apply(cfg *config.Config) error {
	specs, checks := healthSpecs(cfg, h.programs)
	h.mu.Lock()
	h.cfg, h.checks = cfg, checks
	h.alpha, h.of = map[healthcheck.ID]bool{}, map[server][]healthcheck.ID{}
	for id, s := range specs {
		h.alpha[id] = s.Alpha
		k := server{id.Service, id.Real}
		h.of[k] = append(h.of[k], id)
	}
	for id := range h.last {
		if _, ok := specs[id]; !ok {
			delete(h.last, id)
		}
	}
	h.mu.Unlock()
	if err := h.runner.Update(specs); err != nil {
		return err
	}
	// A check taken away can bring its server up (or end the only
	// check of one): tell the load balancer what the rest say.
	h.mu.Lock()
	type told struct {
		k server
		h lvs.Health
	}
	var changed []told
	for k, prev := range h.told {
		if now := h.state(k); now != prev {
			h.told[k] = now
			changed = append(changed, told{k, now})
		}
	}
	h.mu.Unlock()
	for _, c := range changed {
		h.tell(cfg, c.k, c.h)
	}
	return nil
}

// state is what the checks of k say together; under h.mu.
func (h *health) state(k server) lvs.Health {
	out := assumed
	for _, id := range h.of[k] {
		t, ok := h.last[id]
		if !ok {
			t = healthcheck.Transition{Up: !h.alpha[id], Weight: -1}
		}
		if !t.Up {
			return lvs.Health{Up: false, Weight: -1}
		}
		// An exec check with dynamic weights sets the weight; with
		// several, the lowest holds.
		if t.Weight >= 0 && (out.Weight < 0 || t.Weight < out.Weight) {
			out.Weight = t.Weight
		}
	}
	return out
}

// tell hands the load balancer a server's state.
func (h *health) tell(cfg *config.Config, k server, st lvs.Health) {
	i := slices.IndexFunc(cfg.VirtualServers, func(vs config.VirtualServer) bool { return vs.Name == k.service })
	if i < 0 || h.setHealth == nil {
		return
	}
	h.setHealth(lvsKey(cfg.VirtualServers[i]), k.real, st)
}

func (h *health) transition(t healthcheck.Transition) {
	k := server{t.ID.Service, t.ID.Real}
	h.mu.Lock()
	cfg, hc := h.cfg, h.checks[t.ID]
	h.last[t.ID] = t
	prev, ok := h.told[k]
	if !ok {
		prev = assumed
	}
	now := h.state(k)
	h.told[k] = now
	h.mu.Unlock()
	if now == prev || hc == nil {
		return
	}
	h.tell(cfg, k, now)
	if now.Up == prev.Up {
		return // a weight: no notify program
	}
	prog, script := hc.NotifyDown, hc.NotifyDownScript
	if now.Up {
		prog, script = hc.NotifyUp, hc.NotifyUpScript
	}
	if script != "" {
		// The replicated table names it; this director's file says what
		// it runs.
		if prog = checkScript(cfg, script); prog == nil {
			h.log.Warn("notify program not run: this director has no [[check_script]] of that name", "script", script, "virtual_server", k.service)
			return
		}
	}
	if len(prog) == 0 {
		return
	}
	// The program learns which server: the virtual server's name and the
	// real server's address come after its own arguments.
	args := append(slices.Clone(prog), k.service, k.real.String())
	go func() {
		out, err, timedOut := runProgram(h.programs, args, 30*time.Second)
		switch {
		case timedOut:
			h.log.Warn("notify program killed after 30s", "program", args[0])
		case err != nil:
			h.log.Warn("notify program failed", "program", args[0], "err", err, "output", strings.TrimSpace(string(out)))
		}
	}()
}

// checkScript is the command of cfg's [[check_script]] name, or nil.
func checkScript(cfg *config.Config, name string) []string {
	i := slices.IndexFunc(cfg.CheckScripts, func(c config.CheckScript) bool { return c.Name == name })
	if i < 0 {
		return nil
	}
	return cfg.CheckScripts[i].Command
}

func lvsKey(vs config.VirtualServer) lvs.Key {
	if vs.FWMark != 0 {
		return lvs.Key{FWMark: vs.FWMark, IPv6: vs.IPv6}
	}
	return lvs.Key{Protocol: lvs.Protocol(vs.Protocol), Addr: vs.Address}
}

// healthSpecs makes the checks of every real server: its own list when
// it has one, else its virtual server's health_check. It returns each
// check's configuration too, for its notify programs.
func healthSpecs(cfg *config.Config, programs *healthcheck.Programs) (map[healthcheck.ID]healthcheck.Spec, map[healthcheck.ID]*config.HealthCheck) {
	out, checks := map[healthcheck.ID]healthcheck.Spec{}, map[healthcheck.ID]*config.HealthCheck{}
	for _, vs := range cfg.VirtualServers {
		for _, rs := range vs.RealServers {
			hcs := []*config.HealthCheck{vs.HealthCheck}
			if len(rs.Checks) > 0 {
				hcs = hcs[:0]
				for i := range rs.Checks {
					hcs = append(hcs, &rs.Checks[i])
				}
			}
			seen := map[string]int{}
			for _, hc := range hcs {
				if hc == nil {
					continue
				}
				s := healthSpec(hc, vs, rs.Address)
				s.Exec.Programs = programs
				if hc.Script != "" {
					// The replicated table names a script; this director's
					// file says what it runs.
					if s.Exec.Argv = checkScript(cfg, hc.Script); s.Exec.Argv == nil {
						s.Exec.Missing = hc.Script
					}
				}
				// Checks are named by type, numbered from the second of
				// a type on: "http", "http#2".
				seen[hc.Type]++
				name := hc.Type
				if n := seen[hc.Type]; n > 1 {
					name = fmt.Sprintf("%s#%d", hc.Type, n)
				}
				id := healthcheck.ID{Service: vs.Name, Real: rs.Address, Check: name}
				out[id], checks[id] = s, hc
			}
		}
	}
	return out, checks
}

func healthSpec(hc *config.HealthCheck, vs config.VirtualServer, rs netip.AddrPort) healthcheck.Spec {
	addr, port := rs.Addr(), rs.Port()
	if hc.ConnectIP.IsValid() {
		addr = hc.ConnectIP
	}
	if hc.ConnectPort != 0 {
		port = hc.ConnectPort
	}
	if port == 0 && vs.FWMark == 0 {
		port = vs.Address.Port()
	}
	s := healthcheck.Spec{
		Type: hc.Type, Addr: netip.AddrPortFrom(addr, port), BindTo: hc.BindTo,
		Interval: hc.Interval, Timeout: hc.Timeout, Retry: hc.Retry, DelayBeforeRetry: hc.DelayBeforeRetry,
		Warmup: hc.Warmup, Rise: hc.Rise, Fall: hc.Fall, Alpha: hc.Alpha, LogAllFailures: hc.LogAllFailures,
		HTTP: healthcheck.HTTPSpec{Method: hc.Method, Path: hc.Path, Host: hc.Host, Headers: hc.Headers,
			Digest: hc.Digest, SNI: hc.SNI, Verify: hc.VerifyCert},
		TLS:  healthcheck.TLSSpec{SNI: hc.SNI, Verify: hc.VerifyCert, WarnDays: hc.WarnDays},
		UDP:  healthcheck.UDPSpec{Payload: []byte(hc.Payload)},
		DNS:  healthcheck.DNSSpec{Name: hc.QueryName, QType: hc.QueryType, Rcode: hc.Rcode},
		SMTP: healthcheck.SMTPSpec{Helo: hc.HeloName},
		Exec: healthcheck.ExecSpec{Argv: hc.Command, Dynamic: hc.Dynamic},
	}
	for _, c := range hc.StatusCodes {
		from, to, _ := config.StatusRange(c) // validated
		s.HTTP.Status = append(s.HTTP.Status, healthcheck.StatusRange{From: from, To: to})
	}
	if hc.BodyRegex != "" {
		s.HTTP.Body = regexp.MustCompile(hc.BodyRegex) // validated
	}
	if hc.Expect != "" {
		re := regexp.MustCompile(hc.Expect)
		s.UDP.Expect, s.DNS.Expect = re, re
	}
	return s
}

func (h *health) status() *api.HealthStatus {
	st := h.runner.States()
	slices.SortFunc(st, func(a, b healthcheck.Status) int {
		if c := strings.Compare(a.ID.Service, b.ID.Service); c != 0 {
			return c
		}
		if c := a.ID.Real.Compare(b.ID.Real); c != 0 {
			return c
		}
		return strings.Compare(a.ID.Check, b.ID.Check)
	})
	out := &api.HealthStatus{Checks: make([]api.CheckStatus, 0, len(st))}
	for _, c := range st {
		out.Checks = append(out.Checks, api.CheckStatus{
			ID: api.CheckID{Service: c.ID.Service, Real: c.ID.Real, Check: c.ID.Check}, Check: c.Check, Up: c.Up, Weight: c.Weight,
			Since: c.Since, Transitions: c.Transitions, Checks: c.Checks, Failures: c.Failures, LastAt: c.LastAt,
			LastOK: c.LastOK, LastError: c.LastError, Latency: c.Latency, LatencySecs: c.LatencySecs, Missed: c.Missed,
		})
	}
	return out
}

// healthCollector exports each check's state and counters, each real
// server's state as its checks make it, and the checks' durations.
type healthCollector struct {
	h                                              *health
	up, checks, failures, transitions, missed, lat *prometheus.Desc
	serverUp                                       *prometheus.Desc
	duration                                       *prometheus.HistogramVec
}

func newHealthCollector(h *health) *healthCollector {
	labels := []string{"service", "real_server", "check"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("directord_health_"+name, help, labels, nil)
	}
	c := &healthCollector{h: h,
		up:          d("up", "1 when the check passes (after rise and fall)."),
		checks:      d("checks_total", "Checks run."),
		failures:    d("failures_total", "Checks that failed."),
		transitions: d("transitions_total", "Changes between up and down."),
		missed:      d("missed_intervals_total", "Checks that started more than an interval late."),
		lat:         d("latency_seconds", "Duration of the last check."),
		serverUp: prometheus.NewDesc("directord_health_real_server_up",
			"1 when every check of the real server passes: what the load balancer is told.", []string{"service", "real_server"}, nil),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "directord_health_check_duration_seconds",
			Help:    "Duration of every check, by virtual server and check type.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"service", "check"}),
	}
	h.runner.Observe(func(id healthcheck.ID, took time.Duration, _ bool) {
		typ, _, _ := strings.Cut(id.Check, "#")
		c.duration.WithLabelValues(id.Service, typ).Observe(took.Seconds())
	})
	return c
}

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.checks, c.failures, c.transitions, c.missed, c.lat, c.serverUp} {
		ch <- d
	}
	c.duration.Describe(ch)
}

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	servers := map[server]bool{}
	for _, s := range c.h.runner.States() {
		l := []string{s.ID.Service, s.ID.Real.String(), s.ID.Check}
		servers[server{s.ID.Service, s.ID.Real}] = true
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, one(s.Up), l...)
		ch <- prometheus.MustNewConstMetric(c.checks, prometheus.CounterValue, float64(s.Checks), l...)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(s.Failures), l...)
		ch <- prometheus.MustNewConstMetric(c.transitions, prometheus.CounterValue, float64(s.Transitions), l...)
		ch <- prometheus.MustNewConstMetric(c.missed, prometheus.CounterValue, float64(s.Missed), l...)
		ch <- prometheus.MustNewConstMetric(c.lat, prometheus.GaugeValue, s.LatencySecs, l...)
	}
	c.h.mu.Lock()
	for k := range servers {
		ch <- prometheus.MustNewConstMetric(c.serverUp, prometheus.GaugeValue, one(c.h.state(k).Up), k.service, k.real.String())
	}
	c.h.mu.Unlock()
	c.duration.Collect(ch)
}

// one is 1 for true, for a gauge.
func one(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

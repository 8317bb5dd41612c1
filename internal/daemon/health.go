package daemon

import (
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
// load balancer and the notify_up / notify_down programs.
type health struct {
	log      *slog.Logger
	runner   *healthcheck.Runner
	lvs      *lvsManager
	programs *healthcheck.Programs

	mu  sync.Mutex
	cfg *config.Config
}

func newHealth(log *slog.Logger, m *lvsManager, programs *healthcheck.Programs) *health {
	h := &health{log: log.With("subsystem", "healthcheck"), lvs: m, programs: programs}
	h.runner = healthcheck.NewRunner(h.log, h.transition)
	return h
}

// apply sets the checks of cfg; unchanged ones keep running.
func (h *health) apply(cfg *config.Config) error {
	h.mu.Lock()
	h.cfg = cfg
	h.mu.Unlock()
	return h.runner.Update(healthSpecs(cfg, h.programs))
}

func (h *health) transition(t healthcheck.Transition) {
	h.mu.Lock()
	cfg := h.cfg
	h.mu.Unlock()
	i := slices.IndexFunc(cfg.VirtualServers, func(vs config.VirtualServer) bool { return vs.Name == t.ID.Service })
	if i < 0 {
		return
	}
	vs := cfg.VirtualServers[i]
	if h.lvs.rec != nil {
		h.lvs.rec.SetHealth(lvsKey(vs), t.ID.Real, lvs.Health{Up: t.Up, Weight: t.Weight})
	}
	prog, script := vs.HealthCheck.NotifyDown, vs.HealthCheck.NotifyDownScript
	if t.Up {
		prog, script = vs.HealthCheck.NotifyUp, vs.HealthCheck.NotifyUpScript
	}
	if script != "" {
		// The replicated table names it; this director's file says what
		// it runs.
		if prog = checkScript(cfg, script); prog == nil {
			h.log.Warn("notify program not run: this director has no [[check_script]] of that name", "script", script, "virtual_server", vs.Name)
			return
		}
	}
	if len(prog) == 0 {
		return
	}
	// The program learns which server: the virtual server's name and the
	// real server's address come after its own arguments.
	args := append(slices.Clone(prog), vs.Name, t.ID.Real.String())
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

// healthSpecs makes one check per real server of every virtual server
// with a health_check.
func healthSpecs(cfg *config.Config, programs *healthcheck.Programs) map[healthcheck.ID]healthcheck.Spec {
	out := map[healthcheck.ID]healthcheck.Spec{}
	for _, vs := range cfg.VirtualServers {
		hc := vs.HealthCheck
		if hc == nil {
			continue
		}
		for _, rs := range vs.RealServers {
			s := healthSpec(hc, vs, rs.Address)
			s.Exec.Programs = programs
			if hc.Script != "" {
				// The replicated table names a script; this director's
				// file says what it runs.
				if s.Exec.Argv = checkScript(cfg, hc.Script); s.Exec.Argv == nil {
					s.Exec.Missing = hc.Script
				}
			}
			out[healthcheck.ID{Service: vs.Name, Real: rs.Address}] = s
		}
	}
	return out
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
		return a.ID.Real.Compare(b.ID.Real)
	})
	out := &api.HealthStatus{Checks: make([]api.CheckStatus, 0, len(st))}
	for _, c := range st {
		out.Checks = append(out.Checks, api.CheckStatus{
			ID: api.CheckID{Service: c.ID.Service, Real: c.ID.Real}, Check: c.Check, Up: c.Up, Weight: c.Weight,
			Since: c.Since, Transitions: c.Transitions, Checks: c.Checks, Failures: c.Failures, LastAt: c.LastAt,
			LastOK: c.LastOK, LastError: c.LastError, Latency: c.Latency, LatencySecs: c.LatencySecs, Missed: c.Missed,
		})
	}
	return out
}

// healthCollector exports each check's state and counters.
type healthCollector struct {
	h                                              *health
	up, checks, failures, transitions, missed, lat *prometheus.Desc
}

func newHealthCollector(h *health) *healthCollector {
	labels := []string{"service", "real_server"}
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("directord_health_"+name, help, labels, nil)
	}
	return &healthCollector{h: h,
		up:          d("up", "1 when the real server is up by its health check."),
		checks:      d("checks_total", "Checks run."),
		failures:    d("failures_total", "Checks that failed."),
		transitions: d("transitions_total", "Changes between up and down."),
		missed:      d("missed_intervals_total", "Checks that started more than an interval late."),
		lat:         d("latency_seconds", "Duration of the last check."),
	}
}

func (c *healthCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.checks, c.failures, c.transitions, c.missed, c.lat} {
		ch <- d
	}
}

func (c *healthCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.h.runner.States() {
		l := []string{s.ID.Service, s.ID.Real.String()}
		up := 0.0
		if s.Up {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up, l...)
		ch <- prometheus.MustNewConstMetric(c.checks, prometheus.CounterValue, float64(s.Checks), l...)
		ch <- prometheus.MustNewConstMetric(c.failures, prometheus.CounterValue, float64(s.Failures), l...)
		ch <- prometheus.MustNewConstMetric(c.transitions, prometheus.CounterValue, float64(s.Transitions), l...)
		ch <- prometheus.MustNewConstMetric(c.missed, prometheus.CounterValue, float64(s.Missed), l...)
		ch <- prometheus.MustNewConstMetric(c.lat, prometheus.GaugeValue, s.LatencySecs, l...)
	}
}

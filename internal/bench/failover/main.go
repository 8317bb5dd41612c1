// Command failover measures the client-visible gap of a VRRP failover for a
// directord pair and a keepalived pair, side by side on the same lab, and
// writes the table into docs/benchmarks.md. Run it with make bench-failover.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/directord/directord/internal/bench/report"
	"github.com/directord/directord/internal/daemon/probe"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/vrrp"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	runs := flag.Int("runs", 10, "failovers of each kind per implementation at advert_int 1s")
	runsFast := flag.Int("runs-fast", 40, "the same at the sub-second settings, where runs are cheap and the random phase needs more samples")
	soak := flag.Duration("soak", 60*time.Second, "length of the busy-CPU false-takeover run at advert_int 20ms (0: skip)")
	soakFast := flag.Duration("soak-fast", 10*time.Minute, "length of the busy-CPU false-takeover run at advert_int 10ms (0: skip)")
	soakFastRT := flag.Int("soak-fast-rt", 10, "realtime priority of both implementations in the 10ms run (realtime_priority, vrrp_rt_priority; 0: none)")
	cpu := flag.Duration("cpu", 10*time.Second, "window of the CPU measurement of a settled pair (five windows at 20ms and at 10ms; 0: skip)")
	only := flag.String("only", "", "run only this phase (gaps, soak, cpu) and print it; the report is left alone")
	onlyImpl := flag.String("impl", "", "with -only: run only this implementation (directord, keepalived)")
	out := flag.String("out", "docs/benchmarks.md", "report to update")
	flag.Parse()
	if *runs < report.MinRuns || *runsFast < report.MinRuns {
		fmt.Fprintf(os.Stderr, "bench-failover: medians need at least %d runs\n", report.MinRuns)
		os.Exit(2)
	}
	var targets report.Targets
	var soaks []soakSpec
	if *soak > 0 {
		soaks = append(soaks, soakSpec{20 * time.Millisecond, *soak, 0})
	}
	if *soakFast > 0 {
		soaks = append(soaks, soakSpec{10 * time.Millisecond, *soakFast, *soakFastRT})
	}
	if *onlyImpl != "" {
		if *only == "" {
			fmt.Fprintln(os.Stderr, "bench-failover: -impl needs -only (the report compares both)")
			os.Exit(2)
		}
		impls = slices.DeleteFunc(impls, func(im impl) bool { return im.name != *onlyImpl })
	}
	if err := run(*bin, *runs, *runsFast, soaks, *cpu, *only, *out, &targets); err != nil {
		fmt.Fprintln(os.Stderr, "bench-failover:", err)
		os.Exit(1)
	}
	os.Exit(targets.Summary(os.Stdout, "bench-failover"))
}

// slack is how much slower than keepalived's a median gap may be and
// still count as as fast: a tenth, and at least the probe's 5 ms period.
func slack(keepalived time.Duration) time.Duration {
	return max(keepalived/10, 5*time.Millisecond)
}

type impl struct {
	name  string
	start func(p *scene.Pair, h *lab.Host, prio int, interval time.Duration) *lab.Process
}

var impls = []impl{
	{"directord", func(p *scene.Pair, h *lab.Host, prio int, interval time.Duration) *lab.Process {
		p.WriteConfig(h, prio, fmt.Sprintf("advert_int = %q", interval))
		return p.Start(h)
	}},
	{"keepalived", func(p *scene.Pair, h *lab.Host, prio int, interval time.Duration) *lab.Process {
		return p.StartKeepalived(h, prio, 3, interval)
	}},
}

// result holds the gaps of one implementation at one setting.
type result struct {
	crash, graceful []time.Duration
}

// soakSpec is one false-takeover run: a settled pair at interval while
// both cores spin for d, both directors at realtime priority rt (0: none).
type soakSpec struct {
	interval, d time.Duration
	rt          int
}

// cpuSettings are the intervals at which the CPU of a settled pair is
// measured: where the per-advert cost shows.
var cpuSettings = []time.Duration{20 * time.Millisecond, 10 * time.Millisecond}

func run(bin string, runs, runsFast int, soaks []soakSpec, cpuWindow time.Duration, only, out string, targets *report.Targets) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	if _, err := exec.LookPath("keepalived"); err != nil {
		return errors.New("needs keepalived (apt-get install keepalived) to compare with")
	}
	bins, err := scene.BinariesIn(bin)
	if err != nil {
		return err
	}
	defer lab.Recover(&err)
	want := func(phase string) bool { return only == "" || only == phase }

	settings := []time.Duration{time.Second, 100 * time.Millisecond, 20 * time.Millisecond, 10 * time.Millisecond}
	results := map[string]map[time.Duration]*result{}
	if want("gaps") {
		for _, im := range impls {
			results[im.name] = map[time.Duration]*result{}
			for _, s := range settings {
				n := runs
				if s < time.Second {
					n = runsFast
				}
				r, err := measure(bins, im, s, n)
				if err != nil {
					return fmt.Errorf("%s at %s: %w", im.name, s, err)
				}
				results[im.name][s] = r
				fmt.Printf("%-10s %-6s crash median %-8s max %-8s graceful median %-8s max %s\n", im.name, s,
					median(r.crash), slices.Max(r.crash), median(r.graceful), slices.Max(r.graceful))
			}
		}
	}
	soaked := map[soakSpec]map[string]int{}
	if want("soak") {
		for _, sp := range soaks {
			soaked[sp] = map[string]int{}
			for _, im := range impls {
				n, err := soakRun(bins, im, sp)
				if err != nil {
					return fmt.Errorf("%s soak at %s: %w", im.name, sp.interval, err)
				}
				soaked[sp][im.name] = n
				fmt.Printf("%-10s %s at %s with both cores busy (realtime priority %d): %d false takeovers\n", im.name, sp.d, sp.interval, sp.rt, n)
			}
		}
	}
	cpus := map[time.Duration]map[string]cpuResult{}
	if want("cpu") && cpuWindow > 0 {
		for _, s := range cpuSettings {
			cpus[s] = map[string]cpuResult{}
			for _, im := range impls {
				c, err := cpuRun(bins, im, s, cpuWindow)
				if err != nil {
					return fmt.Errorf("%s CPU at %s: %w", im.name, s, err)
				}
				cpus[s][im.name] = c
				fmt.Printf("%-10s %-6s CPU over %s: master %s (%.1f switches/advert), backup %s (%.1f)\n", im.name, s, cpuWindow,
					c.master, float64(c.masterSwitch)/float64(c.adverts), c.backup, float64(c.backupSwitch)/float64(c.adverts))
			}
		}
	}
	if only != "" {
		return nil
	}
	for _, st := range settings {
		for _, ev := range events(results, st) {
			d, k := median(ev.d), median(ev.k)
			targets.Check(fmt.Sprintf("%s gap at advert_int %s no longer than keepalived's", ev.name, st), d <= k+slack(k),
				"median %s against %s (%d runs each; slack %s)", ms(d), ms(k), len(ev.d), ms(slack(k)))
		}
	}
	fast := settings[len(settings)-1]
	if r := results["directord"][fast]; r != nil {
		targets.Check(fmt.Sprintf("crash gap at advert_int %s under 50 ms", fast), median(r.crash) < 50*time.Millisecond,
			"median %s (%d runs)", ms(median(r.crash)), len(r.crash))
	}
	for _, sp := range soaks {
		targets.Check(fmt.Sprintf("no false takeover at advert_int %s with both cores busy for %s%s", sp.interval, sp.d, sp.rtNote()), soaked[sp]["directord"] == 0,
			"%d (keepalived %d)", soaked[sp]["directord"], soaked[sp]["keepalived"])
	}
	for _, s := range cpuSettings {
		d, k := cpus[s]["directord"], cpus[s]["keepalived"]
		targets.Check(fmt.Sprintf("pair CPU at advert_int %s within 2x keepalived's", s), d.master+d.backup <= 2*(k.master+k.backup),
			"directord %s, keepalived %s over %s (median of %d windows)", ms(d.master+d.backup), ms(k.master+k.backup), cpuWindow, cpuWindows)
	}
	return writeReport(out, settings, runs, runsFast, soaks, soaked, cpuWindow, cpus, results, *targets)
}

// adverts records when the client last saw an advert from each source.
type adverts struct {
	mu   sync.Mutex
	last map[netip.Addr]time.Time
}

func watchAdverts(c vrrp.Conn) *adverts {
	a := &adverts{last: map[netip.Addr]time.Time{}}
	go func() {
		buf := make([]byte, 1500)
		for {
			_, src, _, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			a.mu.Lock()
			a.last[src] = time.Now()
			a.mu.Unlock()
		}
	}()
	return a
}

// next waits for an advert from src seen after now and returns its time.
func (a *adverts) next(src netip.Addr, timeout time.Duration) (time.Time, error) {
	start := time.Now()
	for time.Since(start) < timeout {
		a.mu.Lock()
		t := a.last[src]
		a.mu.Unlock()
		if t.After(start) {
			return t, nil
		}
		time.Sleep(time.Millisecond)
	}
	return time.Time{}, fmt.Errorf("no advert from %s for %s", src, timeout)
}

// startScene starts a pair of im at interval with lb1 master, a prober, and a
// watcher of the adverts on the client's link.
// startScene starts a settled pair of im at interval, at realtime
// priority rt (0: none).
func startScene(bins scene.Binaries, im impl, interval time.Duration, rt int) (*scene.Pair, *probe.Prober, *adverts, func(), error) {
	tmp, err := os.MkdirTemp("", "directord-bench")
	if err != nil {
		return nil, nil, nil, nil, err
	}
	l := lab.Open(func(string, ...any) {})
	cleanup := func() { l.Close(); os.RemoveAll(tmp) }
	p := scene.NewPair(l, tmp, bins)
	p.Realtime = rt
	im.start(p, p.LB1, 150, interval)
	if err := p.WaitOwner(p.LB1, scene.VIP, 10*time.Second+5*interval); err != nil {
		cleanup()
		return nil, nil, nil, nil, err
	}
	im.start(p, p.LB2, 100, interval)
	var conn net.PacketConn
	var vc vrrp.Conn
	if err := p.Client.Do(func() (err error) {
		if conn, err = probe.Listen(); err != nil {
			return err
		}
		vc, err = vrrp.ListenIPv4("eth0")
		return err
	}); err != nil {
		cleanup()
		return nil, nil, nil, nil, err
	}
	pr := probe.Start(context.Background(), conn, netip.MustParseAddr(scene.VIP), 5*time.Millisecond)
	stop := func() { pr.Stop(); conn.Close(); vc.Close(); cleanup() }
	if err := pr.WaitAnswered(time.Time{}, 10*time.Second); err != nil {
		stop()
		return nil, nil, nil, nil, err
	}
	// Let the backup settle: it must have heard the master several times.
	time.Sleep(5 * interval)
	return p, pr, watchAdverts(vc), stop, nil
}

func measure(bins scene.Binaries, im impl, interval time.Duration, runs int) (*result, error) {
	p, pr, adv, stop, err := startScene(bins, im, interval, 0)
	if err != nil {
		return nil, err
	}
	defer stop()
	lb1 := netip.MustParseAddr("192.0.2.11")
	limit := 10*time.Second + 10*interval
	// The gap depends on how long before the event the master's last
	// advert was. Each event therefore comes a random time after an
	// advert the client saw, from a sequence seeded by the setting: both
	// implementations meet the same phases, and the comparison is paired
	// rather than left to noise.
	phases := rand.New(rand.NewPCG(uint64(interval), 1))
	takeover := func(event func()) (time.Duration, error) {
		seen, err := adv.next(lb1, limit)
		if err != nil {
			return 0, err
		}
		time.Sleep(time.Until(seen.Add(time.Duration(phases.Int64N(int64(interval))))))
		at := time.Now()
		event()
		if err := lab.Eventually(limit, func() error {
			if !scene.HasAddr(p.LB2, scene.VIP) {
				return errors.New("lb2 has not taken the VIP")
			}
			return nil
		}); err != nil {
			return 0, err
		}
		if err := pr.WaitAnswered(time.Now(), limit); err != nil {
			return 0, err
		}
		return pr.Gap(at), nil
	}
	restore := func() error {
		p.Revive(p.LB1)
		im.start(p, p.LB1, 150, interval)
		if err := p.WaitOwner(p.LB1, scene.VIP, limit); err != nil {
			return err
		}
		if err := pr.WaitAnswered(time.Now(), limit); err != nil {
			return err
		}
		time.Sleep(5 * interval) // the backup hears the master again
		return nil
	}
	r := &result{}
	for range runs {
		g, err := takeover(func() { p.Crash(p.LB1) })
		if err != nil {
			return nil, fmt.Errorf("crash: %w", err)
		}
		r.crash = append(r.crash, g)
		if err := restore(); err != nil {
			return nil, fmt.Errorf("restore after crash: %w", err)
		}
		g, err = takeover(func() { _ = p.Procs[p.LB1].Signal(syscall.SIGTERM) })
		if err != nil {
			return nil, fmt.Errorf("graceful: %w", err)
		}
		r.graceful = append(r.graceful, g)
		if _, err := p.Procs[p.LB1].Wait(limit); err != nil {
			return nil, err
		}
		if err := restore(); err != nil {
			return nil, fmt.Errorf("restore after stop: %w", err)
		}
	}
	return r, nil
}

// rtNote names the realtime priority of a run that has one.
func (sp soakSpec) rtNote() string {
	if sp.rt == 0 {
		return ""
	}
	return fmt.Sprintf(" (realtime priority %d)", sp.rt)
}

// soakRun keeps a pair at interval up while both cores spin and counts
// the times the backup took the VIP.
func soakRun(bins scene.Binaries, im impl, sp soakSpec) (int, error) {
	p, _, _, stop, err := startScene(bins, im, sp.interval, sp.rt)
	if err != nil {
		return 0, err
	}
	defer stop()
	if sp.rt != 0 {
		// Say what is in force: keepalived gives the priority to its VRRP
		// process, not to its parent.
		for _, h := range p.Directors() {
			rr, all := treeRealtime(p.Procs[h], sp.rt)
			fmt.Printf("%-10s %s: %d of %d threads SCHED_RR at %d\n", im.name, h.Name, rr, all, sp.rt)
			if rr == 0 {
				return 0, fmt.Errorf("%s on %s: no thread at realtime priority %d", im.name, h.Name, sp.rt)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), sp.d)
	defer cancel()
	for range runtime.NumCPU() {
		go func() {
			for ctx.Err() == nil {
			}
		}()
	}
	takeovers, had := 0, false
	for ctx.Err() == nil {
		has := scene.HasAddr(p.LB2, scene.VIP)
		if has && !had {
			takeovers++
		}
		had = has
		time.Sleep(5 * time.Millisecond)
	}
	return takeovers, nil
}

func median(ds []time.Duration) time.Duration {
	m, _ := report.Median(ds)
	return m
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func writeReport(path string, settings []time.Duration, runs, runsFast int, soaks []soakSpec, soaked map[soakSpec]map[string]int,
	cpuWindow time.Duration, cpus map[time.Duration]map[string]cpuResult, res map[string]map[time.Duration]*result, targets report.Targets) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## VRRP failover (`make bench-failover`)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. A client probes the VIP with ICMP echo every 5 ms; the gap is the\n", time.Now().UTC().Format("2006-01-02"), machine())
	fmt.Fprintf(&b, "longest time between two answered probes around the event. Crash = the master's cable cut, then\n")
	fmt.Fprintf(&b, "every process of it killed, as in a power loss; graceful = SIGTERM (priority-0 advert), each a random time within\n")
	fmt.Fprintf(&b, "one interval after an advert the client saw, the same sequence for both implementations. VRRPv3, priorities\n")
	fmt.Fprintf(&b, "150/100, %d runs of each at 1s and %d at the shorter intervals, directord and Debian's keepalived\n", runs, runsFast)
	fmt.Fprintf(&b, "in the same run on the same lab, on idle cores. The crash gap is about 3 intervals + skew minus that random time.\n\n")
	fmt.Fprintf(&b, "| advert_int | event | directord median | directord max | keepalived median | keepalived max | ratio of medians |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|\n")
	for _, s := range settings {
		for _, ev := range events(res, s) {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %.3f |\n", s, ev.name, ms(median(ev.d)), ms(slices.Max(ev.d)),
				ms(median(ev.k)), ms(slices.Max(ev.k)), float64(median(ev.d))/float64(median(ev.k)))
		}
	}
	if len(soaks) > 0 {
		fmt.Fprintf(&b, "\nFalse takeovers of a settled pair while a spinning goroutine per core keeps both cores saturated:\n\n")
		fmt.Fprintf(&b, "| advert_int | duration | realtime priority (both) | directord | keepalived |\n|---|---|---|---|---|\n")
		for _, sp := range soaks {
			rt := "none"
			if sp.rt != 0 {
				rt = fmt.Sprintf("%d (`realtime_priority`, `vrrp_rt_priority`)", sp.rt)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %d | %d |\n", sp.interval, sp.d, rt, soaked[sp]["directord"], soaked[sp]["keepalived"])
		}
	}
	if len(cpus) > 0 {
		fmt.Fprintf(&b, "\nCPU of a settled pair, idle cores: time on CPU of every thread of each director's process tree\n")
		fmt.Fprintf(&b, "(/proc/PID/task/*/schedstat; keepalived's VRRP child included) over %s, the median of %d windows by\n", cpuWindow, cpuWindows)
		fmt.Fprintf(&b, "pair total; per advert = that time over the adverts sent in the window; switches = times a thread\n")
		fmt.Fprintf(&b, "was switched in, per advert.\n\n")
		fmt.Fprintf(&b, "| advert_int | implementation | master | backup | master per advert | backup per advert | switches master / backup | ratio of pair totals |\n|---|---|---|---|---|---|---|---|\n")
		for _, s := range cpuSettings {
			d, k := cpus[s]["directord"], cpus[s]["keepalived"]
			for _, row := range []struct {
				name string
				c    cpuResult
			}{{"directord", d}, {"keepalived", k}} {
				c := row.c
				ratio := ""
				if row.name == "directord" && k.master+k.backup > 0 {
					ratio = fmt.Sprintf("%.2f", float64(d.master+d.backup)/float64(k.master+k.backup))
				}
				per := func(t time.Duration) string {
					return fmt.Sprintf("%.0f µs", float64(t)/float64(time.Microsecond)/float64(max(c.adverts, 1)))
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %.1f / %.1f | %s |\n", s, row.name, ms(c.master), ms(c.backup), per(c.master), per(c.backup),
					float64(c.masterSwitch)/float64(max(c.adverts, 1)), float64(c.backupSwitch)/float64(max(c.adverts, 1)), ratio)
			}
		}
	}
	png := filepath.Join(filepath.Dir(path), plotFile)
	if err := writePlot(png, settings, res); err != nil {
		return err
	}
	fmt.Fprintf(&b, "\nEvery run, in the order run (dots; dashed lines are the medians):\n\n![gap per run, directord and keepalived](%s)\n", plotFile)
	b.WriteString("\n" + targets.Markdown())
	fmt.Fprintf(&b, "\nReproduce: `sudo make bench-failover` (needs keepalived; about fifty minutes, twenty of them the 10 ms soak).\n")
	return report.WriteSection(path, "failover", b.String())
}

// event is one kind of failover at one setting, both implementations' gaps.
type event struct {
	name string
	d, k []time.Duration
}

func events(res map[string]map[time.Duration]*result, s time.Duration) []event {
	d, k := res["directord"][s], res["keepalived"][s]
	return []event{{"crash", d.crash, k.crash}, {"graceful", d.graceful, k.graceful}}
}

// plotFile is the PNG of the gaps, beside the report.
const plotFile = "benchmarks-failover.png"

func writePlot(path string, settings []time.Duration, res map[string]map[time.Duration]*result) error {
	msOf := func(ds []time.Duration) []float64 {
		out := make([]float64, len(ds))
		for i, d := range ds {
			out[i] = float64(d) / float64(time.Millisecond)
		}
		return out
	}
	var panels []report.Panel
	for _, s := range settings {
		for _, ev := range events(res, s) {
			panels = append(panels, report.Panel{Title: fmt.Sprintf("advert_int %s, %s", s, ev.name), Unit: "ms", Series: []report.Series{
				{Name: "directord", Color: report.Blue, Values: msOf(ev.d)},
				{Name: "keepalived", Color: report.Orange, Values: msOf(ev.k)},
			}})
		}
	}
	return report.WritePlot(path, "Client-visible gap of a VRRP failover, each run (make bench-failover)", 2, panels)
}

func machine() string {
	kv, _ := exec.Command("keepalived", "--version").CombinedOutput()
	kver := strings.Fields(string(kv))
	k := "keepalived"
	if len(kver) > 1 {
		k = kver[0] + " " + kver[1]
	}
	return report.Machine() + ", " + k
}

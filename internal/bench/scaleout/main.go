// Command scaleout is make bench-scaleout: directors side by side behind
// FRR (BGP, ECMP), balancing by stateless direct routing. It measures the
// connections a second through 1, 2 and 3 directors with the same real
// servers, the share of long-lived connections that survive the loss of a
// director with mh, sh and, for comparison, rr (stateful NAT), and the gap
// a client sees when a director leaves gracefully and when it crashes. It
// writes the results to docs/benchmarks.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/directord/directord/internal/bench/load"
	"github.com/directord/directord/internal/bench/report"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	rounds := flag.Int("rounds", 3, "runs of each measurement")
	conns := flag.Int("conns", 300, "long-lived connections for the survival runs")
	out := flag.String("out", "docs/benchmarks.md", "report to update")
	gen := load.RegisterFlags()
	rate := flag.Int("rate", 20000, "connections a second asked of the load generator (more than the lab carries: the rate reached is the measure)")
	dur := flag.Duration("duration", 5*time.Second, "each rate run")
	flag.Parse()
	if gen.Run(*rate, *dur) {
		return
	}
	var targets report.Targets
	if err := run(*bin, *rounds, *conns, *rate, *dur, *out, &targets); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scaleout:", err)
		os.Exit(1)
	}
	os.Exit(targets.Summary(os.Stdout, "bench-scaleout"))
}

// maxGracefulGap is the target for a director leaving on SIGTERM.
const maxGracefulGap = 100 * time.Millisecond

var vipAddr = fmt.Sprintf("%s:%d", scene.ScaleOutVIP, scene.TCPPort)

// setup is the lab with three directors running.
type setup struct {
	*scene.ScaleOut
	bins  scene.Binaries
	close func()
}

func start(bins scene.Binaries, o scene.DirectorOptions) (_ *setup, err error) {
	l := lab.Open(func(string, ...any) {})
	dir, err := os.MkdirTemp("", "bench-scaleout")
	if err != nil {
		l.Close()
		return nil, err
	}
	st := &setup{bins: bins, close: func() { l.Close(); os.RemoveAll(dir) }}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	st.ScaleOut = scene.NewScaleOut(l, 3, 2)
	if err := st.StartDirectors(bins.Directord, dir, o); err != nil {
		return nil, err
	}
	return st, nil
}

// open makes n long-lived connections through the VIP.
func (st *setup) open(n int) ([]*scene.Conn, error) {
	var conns []*scene.Conn
	for len(conns) < n {
		var c *scene.Conn
		if err := lab.Eventually(5*time.Second, func() (err error) { c, err = st.Open("", vipAddr); return err }); err != nil {
			closeAll(conns)
			return nil, fmt.Errorf("connection %d: %w", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	return conns, nil
}

func closeAll(conns []*scene.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// survival opens n connections, crashes a director and counts the
// connections that still exchange a line with the server they started
// with.
func survival(bins scene.Binaries, o scene.DirectorOptions, n int) (int, error) {
	st, err := start(bins, o)
	if err != nil {
		return 0, err
	}
	defer st.close()
	conns, err := st.open(n)
	if err != nil {
		return 0, err
	}
	defer closeAll(conns)
	if err := st.Crash(1); err != nil {
		return 0, err
	}
	// TCP retransmits with back-off: a connection stalled for the hold
	// time may wait as long again for its next try.
	return scene.Answering(conns, "after", time.Minute), nil
}

// gaps measures, in one lab, the longest gap of 60 connections while
// director 1 leaves with SIGTERM, then while director 2 crashes.
func gaps(bins scene.Binaries) (graceful, crash time.Duration, err error) {
	st, err := start(bins, scene.DirectorOptions{ShutdownDelay: "2s"})
	if err != nil {
		return 0, 0, err
	}
	defer st.close()
	conns, err := st.open(60)
	if err != nil {
		return 0, 0, err
	}
	defer closeAll(conns)

	p := scene.Talk(conns, 20*time.Millisecond)
	time.Sleep(time.Second) // the gaps of the steady state, for reference
	if err := st.Procs[0].Signal(syscall.SIGTERM); err != nil {
		return 0, 0, err
	}
	if _, err := st.Procs[0].Wait(20 * time.Second); err != nil {
		return 0, 0, fmt.Errorf("d1 did not stop: %w", err)
	}
	time.Sleep(time.Second)
	graceful, broken := p.Stop()
	if broken > 0 {
		return 0, 0, fmt.Errorf("%d connections broke while d1 stopped", broken)
	}

	p = scene.Talk(conns, 20*time.Millisecond)
	time.Sleep(time.Second)
	if err := st.Crash(1); err != nil {
		return 0, 0, err
	}
	// Until every stalled connection has retransmitted through d3.
	if err := lab.Eventually(30*time.Second, func() error {
		if n := p.Waiting(time.Second); n > 0 {
			return fmt.Errorf("%d connections still waiting after d2's crash", n)
		}
		return nil
	}); err != nil {
		return 0, 0, err
	}
	crash, broken = p.Stop()
	if broken > 0 {
		return 0, 0, fmt.Errorf("%d connections broke after d2 crashed", broken)
	}
	return graceful, crash, nil
}

// rates measures the connections a second through 3, 2 and 1 directors
// (the others withdrawn with directorctl bgp withdraw), rounds times each.
func rates(bins scene.Binaries, rounds, rate int, d time.Duration) (map[int][]float64, error) {
	st, err := start(bins, scene.DirectorOptions{})
	if err != nil {
		return nil, err
	}
	defer st.close()
	srcs := []string{scene.ScaleOutClient}
	for i := 1; i < 8; i++ {
		a := fmt.Sprintf("198.51.100.%d", 50+i)
		st.Client.AddAddr("eth0", a+"/24")
		srcs = append(srcs, a)
	}
	st.Sysctl(st.Client, "net/ipv4/ip_local_port_range", "1024 65535")
	out := map[int][]float64{}
	for n := 3; n >= 1; n-- {
		if n < 3 {
			if b, err := exec.Command(st.bins.Directorctl, "--socket", st.Socks[n], "bgp", "withdraw", "web").CombinedOutput(); err != nil {
				return nil, fmt.Errorf("directorctl bgp withdraw on d%d: %v: %s", n+1, err, b)
			}
			if err := st.WaitHops(n, 10*time.Second); err != nil {
				return nil, err
			}
		}
		for r := range rounds {
			wait, err := load.Start(st.Client, vipAddr, srcs, rate, d)
			if err != nil {
				return nil, err
			}
			got, err := wait()
			if err != nil {
				return nil, err
			}
			fmt.Printf("%d director(s), run %d: %.0f connections a second\n", n, r+1, got)
			out[n] = append(out[n], got)
		}
	}
	return out, nil
}

func median(vs []float64) float64 {
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func run(bin string, rounds, n, rate int, d time.Duration, out string, targets *report.Targets) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	defer lab.Recover(&err)
	bins, err := scene.BinariesIn(bin)
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## Scale-out behind a router (`make bench-scaleout`)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. FRR 8.4 (zebra, bgpd; Debian's package) routes between a client and three\n", time.Now().UTC().Format("2006-01-02"), report.Machine())
	fmt.Fprintf(&b, "directors announcing the VIP with BGP (ECMP, hashing on ports, hold time %d s); two real servers answer\n", scene.ScaleOutHoldSec)
	fmt.Fprintf(&b, "the client through the router. Directors balance by stateless direct routing on nftables unless said\n")
	fmt.Fprintf(&b, "otherwise. Every namespace shares this machine's 2 cores: the client, the router, the\n")
	fmt.Fprintf(&b, "directors and the servers all take their turn on them, so more directors add no cores and the\n")
	fmt.Fprintf(&b, "rate shows what a director's path costs, not what three machines would carry.\n\n")

	// Connections a second.
	rs, err := rates(bins, rounds, rate, d)
	if err != nil {
		return fmt.Errorf("rates: %w", err)
	}
	fmt.Fprintf(&b, "| directors announcing | connections a second (median of %d runs of %s, each a full TCP connection reading the server's greeting) |\n|---|---|\n", rounds, d)
	for k := 1; k <= 3; k++ {
		fmt.Fprintf(&b, "| %d | %.0f (runs: %s) |\n", k, median(rs[k]), joinRates(rs[k]))
	}
	targets.Check("connections pass through every director count (1, 2, 3)", median(rs[1]) > 0 && median(rs[2]) > 0 && median(rs[3]) > 0,
		"%.0f / %.0f / %.0f a second (medians of %d runs)", median(rs[1]), median(rs[2]), median(rs[3]), rounds)

	// Survival of a crash.
	fmt.Fprintf(&b, "\n| scheduler | long-lived connections surviving a director's crash (cable cut, kill -9) |\n|---|---|\n")
	for _, c := range []struct {
		name string
		o    scene.DirectorOptions
	}{
		{"mh, stateless direct routing", scene.DirectorOptions{Scheduler: "mh"}},
		{"sh, stateless direct routing", scene.DirectorOptions{Scheduler: "sh"}},
		{"rr, NAT with masquerade (state in each director's conntrack)", scene.DirectorOptions{Scheduler: "rr", NAT: true}},
	} {
		ok, err := survival(bins, c.o, n)
		if err != nil {
			return fmt.Errorf("survival with %s: %w", c.name, err)
		}
		fmt.Printf("%s: %d of %d connections survived\n", c.name, ok, n)
		fmt.Fprintf(&b, "| %s | %d of %d (%.1f %%) |\n", c.name, ok, n, 100*float64(ok)/float64(n))
		if c.o.Scheduler == "mh" {
			targets.Check("every long-lived connection survives a director's crash with mh", ok == n, "%d of %d (1 run)", ok, n)
		}
	}

	fmt.Fprintf(&b, "\nWith rr behind NAT each director holds its flows in its own conntrack table, and losing one\n")
	fmt.Fprintf(&b, "costs more than its own share: the router's ECMP is hash-threshold, so going from three next hops\n")
	fmt.Fprintf(&b, "to two also moves flows between the two survivors, which do not know them either. With mh\n")
	fmt.Fprintf(&b, "(and sh) every director sends a flow to the same server, so a moved flow carries on.\n")

	// Gaps.
	var worstG, worstC []time.Duration
	for r := range rounds {
		g, c, err := gaps(bins)
		if err != nil {
			return fmt.Errorf("gaps, run %d: %w", r+1, err)
		}
		fmt.Printf("run %d: longest gap %s on SIGTERM, %s on a crash\n", r+1, ms(g), ms(c))
		worstG, worstC = append(worstG, g), append(worstC, c)
	}
	slices.Sort(worstG)
	slices.Sort(worstC)
	fmt.Fprintf(&b, "\n| event | longest gap any of 60 connections saw (each exchanges a line every 20 ms), median of %d runs | runs |\n|---|---|---|\n", rounds)
	fmt.Fprintf(&b, "| SIGTERM of a director (GRACEFUL_SHUTDOWN, `shutdown_delay` 2 s) | %s | %s |\n", ms(worstG[len(worstG)/2]), joinDur(worstG))
	fmt.Fprintf(&b, "| crash of a director (cable cut, kill -9) | %s | %s |\n", ms(worstC[len(worstC)/2]), joinDur(worstC))
	fmt.Fprintf(&b, "\nOn SIGTERM the longest gap is one exchange period (20 ms) and its round trip: no connection\n")
	fmt.Fprintf(&b, "waits. A crash costs the connections through that director up to the BGP hold time (%d s here;\n", scene.ScaleOutHoldSec)
	fmt.Fprintf(&b, "less when the last keepalive came well before the crash) plus TCP's retransmission back-off;\n")
	fmt.Fprintf(&b, "BFD on the router (FRR's bfdd) is the way below it ([scale-out.md](scale-out.md)).\n")
	targets.Check("a client sees a gap under 100ms when a director leaves with SIGTERM", worstG[len(worstG)/2] < maxGracefulGap,
		"%s (median of %d runs of 60 connections)", ms(worstG[len(worstG)/2]), rounds)

	fmt.Fprintf(&b, "\n%s\nReproduce: `sudo make bench-scaleout` (about five minutes).\n", targets.Markdown())
	if out == "" {
		return nil
	}
	return report.WriteSection(out, "scaleout", b.String())
}

func joinRates(vs []float64) string {
	var s []string
	for _, v := range vs {
		s = append(s, fmt.Sprintf("%.0f", v))
	}
	return strings.Join(s, ", ")
}

func joinDur(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, ms(d))
	}
	return strings.Join(s, ", ")
}

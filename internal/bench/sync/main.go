// Command sync is make bench-sync: the share of established flows that
// survive a master crash with conntrack sync, and the sync lag while
// clients open 5,000 new connections a second. It writes the results to
// docs/benchmarks.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	stdsync "sync"
	"sync/atomic"
	"time"

	"github.com/directord/directord/internal/bench/report"
	"github.com/directord/directord/internal/lab"
	"github.com/directord/directord/internal/lblab"
	"github.com/directord/directord/internal/pairlab"
	"github.com/directord/directord/internal/synclab"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	rounds := flag.Int("rounds", 3, "crash rounds")
	flows := flag.Int("flows", 200, "established flows per round")
	rate := flag.Int("rate", 5000, "new connections per second for the lag run")
	dur := flag.Duration("duration", 10*time.Second, "lag run")
	out := flag.String("out", "docs/benchmarks.md", "report to update")
	load := flag.String("load", "", "internal: open -rate connections a second to this address for -duration and print how many were answered")
	lagOnly := flag.Bool("lag-only", false, "measure the lag only and print it; the report is left alone")
	flag.Parse()
	if *load != "" {
		fmt.Println(generate(*load, *rate, *dur))
		return
	}
	if *lagOnly {
		*rounds, *out = 0, ""
	}
	if err := run(*bin, *rounds, *flows, *rate, *dur, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench-sync:", err)
		os.Exit(1)
	}
}

func scene(bins pairlab.Binaries, syncOn bool) (*synclab.Scene, func(), error) {
	l := lab.Open(func(string, ...any) {})
	dir, err := os.MkdirTemp("", "bench-sync")
	if err != nil {
		l.Close()
		return nil, nil, err
	}
	cleanup := func() { l.Close(); os.RemoveAll(dir) }
	s, err := synclab.New(l, dir, bins.Directord, bins.Directorctl, synclab.Options{Sync: syncOn})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return s, cleanup, nil
}

// survival opens n flows through the master, crashes it, and counts the
// flows that still exchange data through the backup.
func survival(bins pairlab.Binaries, n int, syncOn bool) (int, error) {
	s, cleanup, err := scene(bins, syncOn)
	if err != nil {
		return 0, err
	}
	defer cleanup()
	var conns []*lblab.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for len(conns) < n {
		c, err := s.Open("", "192.0.2.100:80")
		if err != nil {
			return 0, err
		}
		conns = append(conns, c)
	}
	if err := lab.Eventually(20*time.Second, func() error {
		if !syncOn {
			return nil
		}
		st, err := s.SyncStatus(s.LB[1])
		if err != nil || st.Applied < uint64(n) {
			return fmt.Errorf("backup applied %d, %v", st.Applied, err)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	s.Crash(s.LB[0])
	if err := lab.Eventually(10*time.Second, func() error { return s.Owns(s.LB[1], true) }); err != nil {
		return 0, err
	}
	var ok atomic.Int64
	var wg stdsync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ans, err := c.Echo("after"); err == nil && ans == c.Server+" after" {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(ok.Load()), nil
}

// lag opens rate connections a second for d and samples the backup's
// sync lag.
func lag(bins pairlab.Binaries, rate int, d time.Duration) (achieved float64, samples []float64, dropped uint64, err error) {
	s, cleanup, err := scene(bins, true)
	if err != nil {
		return 0, nil, 0, err
	}
	defer cleanup()
	// The load comes from a process of its own in the client's namespace:
	// goroutines locked to a namespace's thread cost a thread switch at
	// every wait, which capped an in-process generator near 1,300/s.
	self, err := os.Executable()
	if err != nil {
		return 0, nil, 0, err
	}
	gen := s.Client.Command(self, "-load", "192.0.2.100:80", "-rate", strconv.Itoa(rate), "-duration", d.String())
	var out strings.Builder
	gen.Stdout, gen.Stderr = &out, &out
	if err := gen.Start(); err != nil {
		return 0, nil, 0, err
	}
	start := time.Now()
	for time.Since(start) < d {
		time.Sleep(100 * time.Millisecond)
		st, err := s.SyncStatus(s.LB[1])
		if err == nil && st.Received > 0 {
			samples = append(samples, st.LagMillis)
		}
	}
	if err := gen.Wait(); err != nil {
		return 0, nil, 0, fmt.Errorf("load generator: %v: %s", err, out.String())
	}
	if _, err := fmt.Sscanf(strings.TrimSpace(out.String()), "%f", &achieved); err != nil {
		return 0, nil, 0, fmt.Errorf("load generator said %q", out.String())
	}
	st, err := s.SyncStatus(s.LB[0])
	if err != nil {
		return 0, nil, 0, err
	}
	return achieved, samples, st.Dropped, nil
}

// generate opens rate connections a second to addr for d, each reading
// the server's greeting, and returns the rate answered.
func generate(addr string, rate int, d time.Duration) float64 {
	tokens := make(chan struct{}, rate)
	stop := make(chan struct{})
	var done atomic.Int64
	var wg stdsync.WaitGroup
	for range 256 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for range tokens {
				c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Read(buf); err == nil {
					done.Add(1)
				}
				c.Close()
			}
		}()
	}
	go func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		per := float64(rate) / 1000
		acc := 0.0
		for {
			select {
			case <-stop:
				close(tokens)
				return
			case <-t.C:
				for acc += per; acc >= 1; acc-- {
					select {
					case tokens <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	start := time.Now()
	time.Sleep(d)
	close(stop)
	wg.Wait()
	return float64(done.Load()) / time.Since(start).Seconds()
}

func run(bin string, rounds, flows, rate int, d time.Duration, out string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	defer lab.Recover(&err)
	bins, err := pairlab.BinariesIn(bin)
	if err != nil {
		return err
	}
	total, survived := 0, 0
	for r := range rounds {
		n, err := survival(bins, flows, true)
		if err != nil {
			return fmt.Errorf("survival round %d: %w", r+1, err)
		}
		fmt.Printf("round %d: %d of %d flows survived the crash\n", r+1, n, flows)
		total += flows
		survived += n
	}
	// The anchor: the same crash without [sync], which is what a
	// keepalived pair without conntrackd gives in this NAT set-up.
	without := 0
	if rounds > 0 {
		if without, err = survival(bins, flows, false); err != nil {
			return fmt.Errorf("survival without sync: %w", err)
		}
		fmt.Printf("without sync: %d of %d flows survived the crash\n", without, flows)
	}
	achieved, samples, dropped, err := lag(bins, rate, d)
	if err != nil {
		return err
	}
	slices.Sort(samples)
	if len(samples) == 0 {
		return errors.New("no lag samples")
	}
	p := func(q float64) float64 { return samples[int(q*float64(len(samples)-1))] }
	fmt.Printf("lag at %.0f new connections/s: p50 %.2f ms, p99 %.2f ms, max %.2f ms; %d events dropped\n", achieved, p(0.5), p(0.99), samples[len(samples)-1], dropped)
	if out == "" {
		return nil
	}

	var b strings.Builder
	fmt.Fprintf(&b, "## Connection sync (`make bench-sync`)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. LVS-NAT with two directors (nftables, conntrack sync over TCP with a\n", time.Now().UTC().Format("2006-01-02"), report.Machine())
	fmt.Fprintf(&b, "shared key); the master's cables are cut and its processes killed while %d TCP connections are\n", flows)
	fmt.Fprintf(&b, "established through it; a connection survives when it still exchanges a message with the\n")
	fmt.Fprintf(&b, "same real server through the backup. The lag is the age of the last sync message the backup\n")
	fmt.Fprintf(&b, "applied (sender's clock, same host), sampled every 100 ms while clients open connections.\n\n")
	fmt.Fprintf(&b, "The anchor is the same crash without `[sync]`, in the same run: what a keepalived pair without\n")
	fmt.Fprintf(&b, "conntrackd gives in this NAT set-up (conntrackd itself is not measured here). Without sync the\n")
	fmt.Fprintf(&b, "backup schedules each mid-stream packet afresh, so a flow survives only when rr happens to pick\n")
	fmt.Fprintf(&b, "its old real server again: about one in three.\n\n")
	fmt.Fprintf(&b, "| measure | result | anchor: without sync |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| established flows surviving a master crash | %d of %d (%.1f %%), %d rounds | %d of %d (%.1f %%) |\n", survived, total,
		100*float64(survived)/float64(total), rounds, without, flows, 100*float64(without)/float64(flows))
	fmt.Fprintf(&b, "| new connections per second (asked %d) | %.0f | |\n", rate, achieved)
	fmt.Fprintf(&b, "| sync lag p50 / p99 / max | %.2f / %.2f / %.2f ms | |\n", p(0.5), p(0.99), samples[len(samples)-1])
	fmt.Fprintf(&b, "| events dropped by the master's queue | %d | |\n\n", dropped)
	if achieved < 0.9*float64(rate) {
		fmt.Fprintf(&b, "The lab reached %.0f of the %d new connections per second asked: its two cores run the client,\n", achieved, rate)
		fmt.Fprintf(&b, "both directors and the real servers. The lag was measured at that rate, not at %d.\n\n", rate)
	}
	fmt.Fprintf(&b, "Targets: 100 %% of flows survive; p99 lag under %d new connections per second.\n\nReproduce: `sudo make bench-sync` (about a minute).\n", rate)
	return report.WriteSection(out, "sync", b.String())
}

// Command sync is make bench-sync: the share of established flows that
// survive a master crash with conntrack sync, and the sync lag while
// clients open 5,000 new connections a second. It writes the results to
// docs/benchmarks.md.
package main

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/directord/directord/internal/bench/load"
	"github.com/directord/directord/internal/bench/report"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	dsync "github.com/directord/directord/sync"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	rounds := flag.Int("rounds", 3, "crash rounds")
	flows := flag.Int("flows", 200, "established flows per round")
	rate := flag.Int("rate", 5000, "new connections per second for the lag run")
	dur := flag.Duration("duration", 10*time.Second, "lag run")
	out := flag.String("out", "docs/benchmarks.md", "report to update")
	gen := load.RegisterFlags()
	lagOnly := flag.Bool("lag-only", false, "measure the lag only and print it; the report is left alone")
	flag.Parse()
	if gen.Run(*rate, *dur) {
		return
	}
	if *lagOnly {
		*rounds, *out = 0, ""
	}
	var targets report.Targets
	if err := run(*bin, *rounds, *flows, *rate, *dur, *out, &targets); err != nil {
		fmt.Fprintln(os.Stderr, "bench-sync:", err)
		os.Exit(1)
	}
	os.Exit(targets.Summary(os.Stdout, "bench-sync"))
}

// maxLagP99 is the lag target: a flow reaches the backup well within the
// crash gap at the default advert_int of the examples (100 ms adverts: a
// gap of about 310 ms), so a crash loses only flows younger than that.
const maxLagP99 = 100 * time.Millisecond

func startScene(bins scene.Binaries, syncOn bool) (*scene.Sync, func(), error) {
	l := lab.Open(func(string, ...any) {})
	dir, err := os.MkdirTemp("", "bench-sync")
	if err != nil {
		l.Close()
		return nil, nil, err
	}
	cleanup := func() { l.Close(); os.RemoveAll(dir) }
	s, err := scene.NewSync(l, dir, bins.Directord, bins.Directorctl, scene.SyncOptions{Sync: syncOn})
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return s, cleanup, nil
}

// survival opens n flows through the master, crashes it, and counts the
// flows that still exchange data through the backup.
func survival(bins scene.Binaries, n int, syncOn bool) (int, error) {
	s, cleanup, err := startScene(bins, syncOn)
	if err != nil {
		return 0, err
	}
	defer cleanup()
	var conns []*scene.Conn
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
	// The crash comes at a random moment up to 100 ms after the last
	// connection was established, without waiting for the backup to have
	// applied every flow: a crash does not wait either, so the flows
	// still in the sync's queue count.
	time.Sleep(rand.N(100 * time.Millisecond))
	s.Crash(s.LB[0])
	if err := lab.Eventually(10*time.Second, func() error { return s.Owns(s.LB[1], true) }); err != nil {
		return 0, err
	}
	return scene.Answering(conns, "after", 5*time.Second), nil
}

// lagRun is one lag measurement.
type lagRun struct {
	achieved float64   // per second
	samples  []float64 // lag, ms
	dropped  uint64
	applied  uint64 // by the backup
}

func (r lagRun) p(q float64) float64 {
	s := slices.Clone(r.samples)
	slices.Sort(s)
	return s[int(q*float64(len(s)-1))]
}

// lag loads the master for d and samples the backup's sync lag every
// 100 ms. throughVIP: it opens rate connections a second from
// the client through the VIP; otherwise it writes rate conntrack entries
// a second (DNAT'd flows to the VIP, as the kernel would make them) into
// the master's table, which costs the lab no packets.
func lag(bins scene.Binaries, throughVIP bool, rate int, d time.Duration) (r lagRun, err error) {
	s, cleanup, err := startScene(bins, true)
	if err != nil {
		return r, err
	}
	defer cleanup()
	var wait func() (float64, error)
	if throughVIP {
		wait, err = connections(s, rate, d)
	} else {
		wait, err = entries(s, rate, d)
	}
	if err != nil {
		return r, err
	}
	start := time.Now()
	for time.Since(start) < d {
		time.Sleep(100 * time.Millisecond)
		st, err := s.SyncStatus(s.LB[1])
		if err == nil && st.Received > 0 {
			r.samples = append(r.samples, st.LagMillis)
		}
	}
	if r.achieved, err = wait(); err != nil {
		return r, err
	}
	if len(r.samples) == 0 {
		return r, errors.New("no lag samples")
	}
	st, err := s.SyncStatus(s.LB[0])
	if err != nil {
		return r, err
	}
	bst, err := s.SyncStatus(s.LB[1])
	if err != nil {
		return r, err
	}
	r.dropped, r.applied = st.Dropped, bst.Applied
	return r, nil
}

// connections starts the load generator in the client's namespace: a
// process of its own, from several addresses with the whole port range,
// as many clients would. (From one address each connect searched a port
// range crowded with TIME_WAIT sockets, which alone capped the rate near
// 1,300/s.)
func connections(s *scene.Sync, rate int, d time.Duration) (wait func() (float64, error), err error) {
	var srcs []string
	for i := range scene.Clients {
		if i > 0 {
			s.Client.AddAddr("eth0", scene.ClientAddr(i)+"/24")
		}
		srcs = append(srcs, scene.ClientAddr(i))
	}
	s.Sysctl(s.Client, "net/ipv4/ip_local_port_range", "1024 65535")
	return load.Start(s.Client, "192.0.2.100:80", srcs, rate, d)
}

// entries writes rate established, DNAT'd flows a second into the
// master's conntrack table, each from its own client address and port to
// the VIP, to the real servers in turn.
func entries(s *scene.Sync, rate int, d time.Duration) (wait func() (float64, error), err error) {
	ns, err := scene.NetNS(s.LB[0].Host)
	if err != nil {
		return nil, err
	}
	t, err := dsync.OpenTable(int(ns.Fd()))
	if err != nil {
		ns.Close()
		return nil, err
	}
	vip := netip.MustParseAddrPort("192.0.2.100:80")
	var written atomic.Int64
	var werr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer ns.Close()
		defer t.Close()
		load.Paced(rate, d, func(from, to int) bool {
			var fs []dsync.Flow
			for i := from; i < to; i++ {
				// Clients from 198.51.100.0/24 up, 60,000 ports each.
				c := netip.AddrFrom4([4]byte{198, 51, byte(100 + i/60000/250), byte(1 + i/60000%250)})
				fs = append(fs, dsync.Flow{Proto: syscall.IPPROTO_TCP, Client: netip.AddrPortFrom(c, uint16(1024+i%60000)), VIP: vip,
					Real: netip.MustParseAddrPort(fmt.Sprintf("%s:%d", scene.RealAddr(i%3), scene.TCPPort)), Timeout: 300})
			}
			n, err := t.WriteBatch(fs)
			written.Add(int64(n))
			werr = err
			return err == nil
		})
	}()
	start := time.Now()
	return func() (float64, error) {
		<-done
		return float64(written.Load()) / time.Since(start).Seconds(), werr
	}, nil
}

func run(bin string, rounds, flows, rate int, d time.Duration, out string, targets *report.Targets) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	defer lab.Recover(&err)
	bins, err := scene.BinariesIn(bin)
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
	conns, err := lag(bins, true, rate, d)
	if err != nil {
		return fmt.Errorf("lag under connections: %w", err)
	}
	fmt.Printf("lag at %.0f new connections/s: p50 %.2f ms, p99 %.2f ms, max %.2f ms; %d events dropped, %d applied\n",
		conns.achieved, conns.p(0.5), conns.p(0.99), conns.p(1), conns.dropped, conns.applied)
	ents, err := lag(bins, false, rate, d)
	if err != nil {
		return fmt.Errorf("lag under entries: %w", err)
	}
	fmt.Printf("lag at %.0f new conntrack entries/s: p50 %.2f ms, p99 %.2f ms, max %.2f ms; %d events dropped, %d applied\n",
		ents.achieved, ents.p(0.5), ents.p(0.99), ents.p(1), ents.dropped, ents.applied)
	*targets = nil
	if rounds > 0 {
		targets.Check("every established flow survives a master crash", survived == total, "%d of %d, %d rounds", survived, total, rounds)
	}
	for _, l := range []struct {
		what string
		r    lagRun
	}{{"connections through the VIP", conns}, {"conntrack entries written", ents}} {
		targets.Check(fmt.Sprintf("sync lag p99 under %s at %d %s a second", maxLagP99, rate, l.what),
			l.r.p(0.99) < float64(maxLagP99)/float64(time.Millisecond), "%.2f ms (%d samples)", l.r.p(0.99), len(l.r.samples))
		targets.Check(fmt.Sprintf("no event lost or dropped on the master (%s)", l.what), l.r.dropped == 0, "%d", l.r.dropped)
	}
	if out == "" {
		return nil
	}

	var b strings.Builder
	fmt.Fprintf(&b, "## Connection sync (`make bench-sync`)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. LVS-NAT with two directors (nftables, conntrack sync over TCP with a\n", time.Now().UTC().Format("2006-01-02"), report.Machine())
	fmt.Fprintf(&b, "shared key); the master's cables are cut and its processes killed at a random moment 0-100 ms\n")
	fmt.Fprintf(&b, "after the last of %d TCP connections through it was established, without waiting for the\n", flows)
	fmt.Fprintf(&b, "backup to apply them; a connection survives when it still exchanges a message with the same\n")
	fmt.Fprintf(&b, "real server through the backup. The lag runs from the master's conntrack event of a flow (the\n")
	fmt.Fprintf(&b, "oldest of the last message the backup applied) to the backup's write, so it includes the\n")
	fmt.Fprintf(&b, "master's queue and batching (both clocks are this host's); sampled every 100 ms for %s under\n", d)
	fmt.Fprintf(&b, "load, in two ways:\n")
	fmt.Fprintf(&b, "clients opening TCP connections through the VIP (each reads the server's greeting and closes),\n")
	fmt.Fprintf(&b, "and the same number of established, DNAT'd conntrack entries a second written straight into the\n")
	fmt.Fprintf(&b, "master's table, which the master syncs just the same but which cost the lab no packets.\n\n")
	fmt.Fprintf(&b, "The anchor is the same crash without `[sync]`, in the same run: what a keepalived pair without\n")
	fmt.Fprintf(&b, "conntrackd gives in this NAT set-up (conntrackd itself is not measured here). Without sync the\n")
	fmt.Fprintf(&b, "backup schedules each mid-stream packet afresh, so a flow survives only when rr happens to pick\n")
	fmt.Fprintf(&b, "its old real server again: about one in three.\n\n")
	fmt.Fprintf(&b, "| measure | result | anchor: without sync |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| established flows surviving a master crash | %d of %d (%.1f %%), %d rounds | %d of %d (%.1f %%) |\n", survived, total,
		100*float64(survived)/float64(total), rounds, without, flows, 100*float64(without)/float64(flows))
	for _, l := range []struct {
		what string
		r    lagRun
	}{{"TCP connections through the VIP", conns}, {"conntrack entries written on the master", ents}} {
		fmt.Fprintf(&b, "| %s: asked %d/s, reached | %.0f/s (%d synced flows applied by the backup) | |\n", l.what, rate, l.r.achieved, l.r.applied)
		fmt.Fprintf(&b, "| sync lag p50 / p99 / max under them | %.2f / %.2f / %.2f ms | |\n", l.r.p(0.5), l.r.p(0.99), l.r.p(1))
		fmt.Fprintf(&b, "| events lost or dropped on the master | %d | |\n", l.r.dropped)
	}
	fmt.Fprintf(&b, "\n")
	if conns.achieved < 0.9*float64(rate) {
		fmt.Fprintf(&b, "The clients reached %.0f of the %d connections a second asked: the lab's two cores carry every\n", conns.achieved, rate)
		fmt.Fprintf(&b, "hop of every connection (client, bridges, both directors' NAT and conntrack, the real\n")
		fmt.Fprintf(&b, "servers), and the kernel charges that work to the sending process. The written entries give the\n")
		fmt.Fprintf(&b, "sync the full rate.\n\n")
	}
	b.WriteString(targets.Markdown())
	fmt.Fprintf(&b, "\nReproduce: `sudo make bench-sync` (about a minute).\n")
	return report.WriteSection(out, "sync", b.String())
}

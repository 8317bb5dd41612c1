// Command lvs is make bench-lvs: it reconciles a table of 10,000 virtual
// services with 10 real servers each from empty, then with no change, then
// after one weight change, then with no change, on the nftables data plane in a lab
// namespace (anchor: nft -f) and on IPVS in the qemu guest (anchor:
// ipvsadm -R); it times nftables's persistence upkeep and counts the
// flows sh and mh move when a server leaves; and it writes the times,
// kernel operation counts and flows to docs/benchmarks.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/directord/directord/internal/bench/report"
	"github.com/directord/directord/internal/testbed/guest"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/lvs"
	"github.com/directord/directord/lvs/lvstest"
)

func main() {
	services := flag.Int("services", lvstest.BenchServices, "virtual services (the guest's IPVS half always measures the default)")
	reals := flag.Int("reals", lvstest.BenchReals, "real servers per service (likewise)")
	runs := flag.Int("runs", 5, "runs on nftables (median reported)")
	out := flag.String("out", "docs/benchmarks.md", "report to update")
	nftOnly := flag.Bool("nft-only", false, "measure nftables only and print the runs; the report is left alone")
	flag.Parse()
	if *runs < report.MinRuns {
		fmt.Fprintf(os.Stderr, "bench-lvs: medians need at least %d runs\n", report.MinRuns)
		os.Exit(2)
	}
	var targets report.Targets
	if err := run(*services, *reals, *runs, *out, *nftOnly, &targets); err != nil {
		fmt.Fprintln(os.Stderr, "bench-lvs:", err)
		os.Exit(1)
	}
	if *nftOnly {
		return
	}
	os.Exit(targets.Summary(os.Stdout, "bench-lvs"))
}

func run(services, reals, runs int, out string, nftOnly bool, targets *report.Targets) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	table := lvstest.SyntheticTable(services, reals)
	var nft [][]lvstest.Step
	for i := range runs {
		steps, err := nftRun(table)
		if err != nil {
			return err
		}
		fmt.Printf("nftables run %d: %v\n", i+1, steps)
		nft = append(nft, steps)
	}
	var keep []time.Duration
	renewed := map[int]bool{}
	for i := range runs {
		d, n, err := keepRun()
		if err != nil {
			return fmt.Errorf("persistence upkeep: %w", err)
		}
		fmt.Printf("persistence upkeep run %d: %s, %d renewed\n", i+1, d, n)
		keep = append(keep, d)
		renewed[n] = true
	}
	moved, err := movedRun()
	if err != nil {
		return fmt.Errorf("flows moved: %w", err)
	}
	if nftOnly {
		return nil
	}
	root, err := guest.ModuleRoot()
	if err != nil {
		return err
	}
	res, err := guest.RunTests(context.Background(), root, "./lvs", "^TestGuestBenchIPVS$", 15*time.Minute)
	if err != nil {
		if res != nil {
			fmt.Fprintln(os.Stderr, res.Output)
		}
		return fmt.Errorf("ipvs in the guest: %w", err)
	}
	ipvs := parseGuest(res.Output)
	if res.Exit != 0 || len(ipvs) != len(nft[0]) {
		fmt.Fprintln(os.Stderr, res.Output)
		return fmt.Errorf("ipvs in the guest: exit %d, %d steps", res.Exit, len(ipvs))
	}
	fmt.Printf("ipvs (guest): %v\n", ipvs)
	if services != lvstest.BenchServices || reals != lvstest.BenchReals {
		return fmt.Errorf("the guest measured %d x %d: run without -services and -reals, or with -nft-only", lvstest.BenchServices, lvstest.BenchReals)
	}
	full, fullRuns := report.Median(column(nft, at(nft[0], lvstest.StepFull)))
	targets.Check("the full table under 5 s on nftables", full < 5*time.Second, "%s (%s)", round(full), fullRuns)
	change, changeRuns := report.Median(column(nft, at(nft[0], lvstest.StepChange)))
	targets.Check("one weight change under 50 ms on nftables", change < 50*time.Millisecond, "%s (%s)", round(change), changeRuns)
	upkeep, upkeepRuns := report.Median(keep)
	targets.Check(fmt.Sprintf("persistence upkeep of %d clients under 250 ms on nftables", keepClients), upkeep < 250*time.Millisecond, "%s (%s)", round(upkeep), upkeepRuns)
	targets.Check(fmt.Sprintf("it renews exactly the %d clients with a connection open", keepOpen), len(renewed) == 1 && renewed[keepOpen], "%v", slices.Sorted(maps.Keys(renewed)))
	for _, row := range moved {
		if row.bounded() {
			targets.Check(fmt.Sprintf("%s: when one of %d servers %s, at most 1/N + 1 %% of the flows move", row.Sched, movedServers, row.How),
				row.withinBound(), "%s of %d", row.movedText(), row.Flows)
		}
	}
	for _, w := range []struct {
		step string
		ops  int
	}{{lvstest.StepFull, services * (reals + 1)}, {lvstest.StepSettle, 0}, {lvstest.StepChange, 1}, {lvstest.StepNoChange, 0}} {
		i, want := at(nft[0], w.step), w.ops
		for _, plane := range []struct {
			name  string
			steps []lvstest.Step
		}{{"nftables", nft[0]}, {"IPVS", ipvs}} {
			got := plane.steps[i].Ops
			for _, run := range nft[1:] {
				if plane.name == "nftables" && run[i].Ops != got {
					got = -1 // the runs disagree
				}
			}
			targets.Check(fmt.Sprintf("%s: %s issues exactly %d kernel operation(s)", plane.name, ipvs[i].Name, want), got == want, "%d", got)
		}
	}
	return write(out, services, reals, runs, nft, ipvs, upkeep, moved, *targets)
}

// inLab runs fn with an nftables data plane and its reconciler in a
// namespace of a lab of its own (ns: the namespace's file), and removes
// them after.
func inLab(fn func(l *lab.Lab, ns *os.File, dp *lvs.NFT, r *lvs.Reconciler) error) (err error) {
	defer lab.Recover(&err)
	l := lab.Open(func(string, ...any) {})
	defer l.Close()
	return onHost(l.AddHost("dir"), func(ns *os.File, dp *lvs.NFT, r *lvs.Reconciler) error { return fn(l, ns, dp, r) })
}

// onHost runs fn with an nftables data plane and its reconciler in h's
// namespace, and closes them after.
func onHost(h *lab.Host, fn func(ns *os.File, dp *lvs.NFT, r *lvs.Reconciler) error) error {
	ns, err := scene.NetNS(h)
	if err != nil {
		return err
	}
	defer ns.Close()
	dp, err := lvs.NewNFT(lvs.NFTOptions{NetNS: int(ns.Fd())})
	if err != nil {
		return err
	}
	defer dp.Close()
	r, err := lvs.NewReconciler(dp, lvs.Options{})
	if err != nil {
		return err
	}
	return fn(ns, dp, r)
}

// apply sets the table and reconciles it.
func apply(r *lvs.Reconciler, vss []lvs.VirtualServer) error {
	if err := r.Set(vss); err != nil {
		return err
	}
	_, err := r.Reconcile()
	return err
}

func nftRun(table []lvs.VirtualServer) (steps []lvstest.Step, err error) {
	err = inLab(func(l *lab.Lab, _ *os.File, _ *lvs.NFT, r *lvs.Reconciler) error {
		if steps, err = lvstest.MeasureReconcile(r, table); err != nil {
			return err
		}
		// The anchor: the same table written by hand as an nft ruleset,
		// one DNAT rule per service choosing its real server by a
		// weighted numgen map, as the nft tool loads it in one
		// transaction into a namespace of its own, empty like the one
		// directord started from.
		f := filepath.Join(os.TempDir(), "bench-lvs-"+l.ID()+".nft")
		defer os.Remove(f)
		if err := os.WriteFile(f, []byte(handWritten(table)), 0o600); err != nil {
			return err
		}
		empty := l.AddHost("anchor")
		start := time.Now()
		if out, err := empty.Run("nft", "-f", f); err != nil {
			return fmt.Errorf("nft -f: %v: %s", err, out)
		}
		steps = append(steps, lvstest.Step{Name: "anchor: nft -f", Ops: 1, Duration: time.Since(start)})
		return nil
	})
	return steps, err
}

// handWritten is table as an operator would write it for nft -f.
func handWritten(table []lvs.VirtualServer) string {
	var b strings.Builder
	b.WriteString("table ip anchor {\n\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n")
	for _, vs := range table {
		var elems []string
		for _, r := range vs.Reals {
			for range r.Weight {
				elems = append(elems, fmt.Sprintf("%d : %s . %d", len(elems), r.Addr.Addr(), r.Addr.Port()))
			}
		}
		fmt.Fprintf(&b, "\t\tip daddr %s tcp dport %d counter dnat ip addr . port to numgen inc mod %d map { %s }\n",
			vs.Key.Addr.Addr(), vs.Key.Addr.Port(), len(elems), strings.Join(elems, ", "))
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

var benchLine = regexp.MustCompile(`(?m)^BENCH ipvs "([^"]+)" ops=(\d+) duration=(\S+)`)

func parseGuest(out string) []lvstest.Step {
	var steps []lvstest.Step
	for _, m := range benchLine.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[2])
		d, _ := time.ParseDuration(m[3])
		steps = append(steps, lvstest.Step{Name: m[1], Ops: n, Duration: d})
	}
	return steps
}

func write(path string, services, reals, runs int, nft [][]lvstest.Step, ipvs []lvstest.Step, upkeep time.Duration, moved []movedRow, targets report.Targets) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## Load-balancer reconcile (`make bench-lvs`)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. %d TCP wrr virtual services with %d NAT real servers each\n", time.Now().UTC().Format("2006-01-02"), report.Machine(), services, reals)
	fmt.Fprintf(&b, "(%d kernel objects in directord's terms) reconciled from an empty kernel, then with nothing\n", services*(reals+1))
	fmt.Fprintf(&b, "changed (as the daemon's next reconcile, within its 1 s interval, does), then after one real\n")
	fmt.Fprintf(&b, "server's weight changed, then with nothing changed again. Operations are the reconciler's kernel\n")
	fmt.Fprintf(&b, "operations (one IPVS netlink request each; nftables applies all of one reconcile in one\n")
	fmt.Fprintf(&b, "transaction). nftables: median of %d runs in a lab namespace on this kernel. IPVS: Debian's\n", runs)
	fmt.Fprintf(&b, "kernel in qemu under software emulation, so its times are only indicative. Every time includes\n")
	fmt.Fprintf(&b, "reading the kernel's table back to diff against (for IPVS one netlink dump per service).\n\n")
	medianOf := func(i int) (med, top time.Duration) {
		ds := column(nft, i)
		med, _ = report.Median(ds)
		return med, slices.Max(ds)
	}
	anchor, _ := medianOf(len(nft[0]) - 1)
	fmt.Fprintf(&b, "The anchor is the nft tool loading the same table written by hand (one DNAT rule per service\n")
	fmt.Fprintf(&b, "choosing its real server from a weighted numgen map, no per-server counters) with `nft -f` into\n")
	fmt.Fprintf(&b, "an empty namespace of its own in one transaction; its time includes starting nft and parsing the\n")
	fmt.Fprintf(&b, "file. Median of the same %d runs: %s. On IPVS the anchor is ipvsadm -R (Debian's binary,\n", runs, round(anchor))
	fmt.Fprintf(&b, "carried into the guest with its libraries) restoring the same table into an emptied IPVS, on\n")
	ianchor := ipvs[len(ipvs)-1].Duration
	fmt.Fprintf(&b, "the same emulated clock: %s.\n\n", round(ianchor))
	fmt.Fprintf(&b, "| step | nftables ops | nftables time (median) | nftables time (max) | ratio to nft -f | IPVS ops | IPVS time (emulated) | ratio to ipvsadm -R |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|\n")
	for i, s := range ipvs[:len(ipvs)-1] {
		med, top := medianOf(i)
		ratio, iratio := "—", "—"
		if i == 0 {
			ratio = fmt.Sprintf("%.2f", float64(med)/float64(anchor))
			iratio = fmt.Sprintf("%.2f", float64(s.Duration)/float64(ianchor))
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %d | %s | %s |\n", s.Name, nft[0][i].Ops, round(med), round(top), ratio, s.Ops, round(s.Duration), iratio)
	}
	fmt.Fprintf(&b, "\nPersistence upkeep (nftables renews a persistent client's entry while it has a connection open,\n")
	fmt.Fprintf(&b, "as IPVS keeps its template, once a reconcile interval): %d IPv6 clients of %d persistent services\n", keepClients, keepServices)
	fmt.Fprintf(&b, "due to expire (%s left), %d of them with a connection open in conntrack, one KeepPersistence call in a\n", keepExpires, keepOpen)
	fmt.Fprintf(&b, "namespace of its own: median %s over %d runs (it reads the persistence sets and conntrack and\n", round(upkeep), runs)
	fmt.Fprintf(&b, "renews in one transaction).\n")
	writeMoved(&b, moved)
	b.WriteString("\n" + targets.Markdown())
	fmt.Fprintf(&b, "\nWhere the time goes (CPU profiles and kernel experiments on this table, 2026-12-05): the kernel\n")
	fmt.Fprintf(&b, "finds a table's sets by walking a list of them, so a slot map per service made the full table\n")
	fmt.Fprintf(&b, "grow with the square of the services (5.8 s); services now share slot maps 64 at a time, and most\n")
	fmt.Fprintf(&b, "of the rest is directord marshalling half a million slot elements and the garbage collector.\n")
	fmt.Fprintf(&b, "A weight change that changes a service's slot count rewrites its DNAT rule, and any new rule that\n")
	fmt.Fprintf(&b, "DNATs or looks a map up makes the kernel validate every chain of the table at commit (about 20 ms\n")
	fmt.Fprintf(&b, "with 10,000 services; a change that keeps the count commits in about 4 ms). The first reconcile\n")
	fmt.Fprintf(&b, "after the full table rebuilds the listing the reconciler diffs against, which later ones keep.\n")
	fmt.Fprintf(&b, "\nReproduce: `sudo make bench-lvs` (needs qemu-system-x86, busybox-static and ipvsadm; about ten minutes).\n")
	return report.WriteSection(path, "lvs", b.String())
}

// at is the place of the step named name among steps (the bench fails
// loudly rather than report another step's time).
func at(steps []lvstest.Step, name string) int {
	i := slices.IndexFunc(steps, func(s lvstest.Step) bool { return s.Name == name })
	if i < 0 {
		panic("bench-lvs: no step " + name)
	}
	return i
}

// column is step i's time in every run.
func column(runs [][]lvstest.Step, i int) []time.Duration {
	var ds []time.Duration
	for _, run := range runs {
		ds = append(ds, run[i].Duration)
	}
	return ds
}

func round(d time.Duration) string {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Microsecond).String()
}

// Command cluster is make bench-cluster: two directors replicate their
// table with Raft; the bench times directorctl apply, from the follower,
// until both directors' kernels have the change: one real server's weight,
// then 1,000 virtual services with 10 real servers each. It writes the
// results to docs/benchmarks.md.
package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/directord/directord/cluster/pki"
	"github.com/directord/directord/internal/api"

	"github.com/directord/directord/internal/bench/report"
	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	runs := flag.Int("runs", 20, "one-change runs")
	fullRuns := flag.Int("full-runs", report.MinRuns, "full-table runs (each from the one-service table)")
	big := flag.Int("services", 1000, "services of the full table (10 real servers each)")
	out := flag.String("out", "docs/benchmarks.md", "report to update")
	flag.Parse()
	if *runs < report.MinRuns || *fullRuns < report.MinRuns {
		fmt.Fprintf(os.Stderr, "bench-cluster: medians need at least %d runs\n", report.MinRuns)
		os.Exit(2)
	}
	var targets report.Targets
	if err := run(*bin, *runs, *fullRuns, *big, *out, &targets); err != nil {
		fmt.Fprintln(os.Stderr, "bench-cluster:", err)
		os.Exit(1)
	}
	os.Exit(targets.Summary(os.Stdout, "bench-cluster"))
}

type node struct {
	h          *lab.Host
	ip         string
	conf, sock string
	proc       *lab.Process
	tls        conf.TLS
}

var key = base64.StdEncoding.EncodeToString([]byte("directord bench key, 32 bytes!!!"))

// file is a director's file with [cluster] (peer the other director) and
// the virtual servers vss.
func file(n, peer *node, dir string, vss []conf.VirtualServer) string {
	f := plainFile(n, dir, vss)
	f.Cluster = &conf.Cluster{Bind: n.ip + ":7946", RaftBind: n.ip + ":7000", Peers: []string{peer.ip + ":7946"},
		Members: []string{n.h.Name, peer.h.Name}, EncryptKey: key, TLS: n.tls}
	return f.String()
}

// plainFile is a director's file without [cluster]: the keepalived way,
// one file per director, each edited and reloaded.
func plainFile(n *node, dir string, vss []conf.VirtualServer) conf.File {
	return conf.File{Node: conf.Node{Name: n.h.Name, DataDir: filepath.Join(dir, "data"), StatusSocket: n.sock}, VirtualServers: vss}
}

// table is services × reals with the first real server of the first
// service at weight.
func table(services, reals int, weight int) []conf.VirtualServer {
	vss := conf.Table(services, reals)
	vss[0].Reals[0].Extra = []string{fmt.Sprintf("weight = %d", weight)}
	return vss
}

var reconciled = regexp.MustCompile(`(?m)^time=(\S+) level=INFO msg="lvs reconciled".* ops=(\d+)`)

// reconcileAfter waits until n's log has a reconcile after t and returns
// its time and operation count.
func reconcileAfter(n *node, t time.Time, timeout time.Duration) (time.Time, int, error) {
	var at time.Time
	var ops int
	err := lab.Eventually(timeout, func() error {
		for _, m := range reconciled.FindAllStringSubmatch(n.proc.Output(), -1) {
			ts, err := time.Parse(time.RFC3339Nano, m[1])
			if err != nil || !ts.After(t) {
				continue
			}
			at, ops = ts, atoi(m[2])
			return nil
		}
		return fmt.Errorf("%s: no reconcile after %s", n.h.Name, t.Format(time.StampMilli))
	})
	return at, ops, err
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func run(bin string, runs, fullRuns, big int, out string, targets *report.Targets) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	bins, err := scene.BinariesIn(bin)
	if err != nil {
		return err
	}
	defer lab.Recover(&err)
	l := lab.Open(func(string, ...any) {})
	defer l.Close()
	sw := l.AddSwitch("sw")
	dir, err := os.MkdirTemp("", "bench-cluster")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var ns, plain []*node
	for i, name := range []string{"lb1", "lb2", "lb3", "lb4"} {
		h := l.AddHost(name)
		ip := fmt.Sprintf("192.0.2.%d", 11+i)
		sw.Plug(h, "eth0", ip+"/24")
		d := filepath.Join(dir, name)
		os.MkdirAll(d, 0o755)
		n := &node{h: h, ip: ip, conf: filepath.Join(d, "directord.toml"), sock: filepath.Join(d, "directord.sock")}
		if i < 2 {
			ns = append(ns, n)
		} else {
			plain = append(plain, n)
		}
	}
	for _, n := range plain {
		if err := os.WriteFile(n.conf, []byte(plainFile(n, filepath.Dir(n.conf), table(1, 2, 1)).String()), 0o644); err != nil {
			return err
		}
		n.proc = n.h.Start(bins.Directord, "-c", n.conf)
	}
	certs, err := conf.Certs(filepath.Join(dir, "certs"), pki.Member{Name: "lb1", IPs: []netip.Addr{netip.MustParseAddr(ns[0].ip)}},
		pki.Member{Name: "lb2", IPs: []netip.Addr{netip.MustParseAddr(ns[1].ip)}})
	if err != nil {
		return err
	}
	for i, n := range ns {
		n.tls = certs[n.h.Name]
		if err := os.WriteFile(n.conf, []byte(file(n, ns[1-i], filepath.Dir(n.conf), table(1, 2, 1))), 0o644); err != nil {
			return err
		}
		n.proc = n.h.Start(bins.Directord, "-c", n.conf)
	}
	// The follower, once the table is seeded.
	var follower *node
	if err := lab.Eventually(20*time.Second, func() error {
		for _, n := range ns {
			o, err := exec.Command(bins.Directorctl, "--socket", n.sock, "cluster", "--json").Output()
			if err != nil {
				return err
			}
			var st api.ClusterStatus
			if err := json.Unmarshal(o, &st); err != nil {
				return err
			}
			if !st.Seeded || st.Leader == "" {
				return errors.New("not formed")
			}
			if st.RaftState == "Follower" {
				follower = n
			}
		}
		if follower == nil {
			return errors.New("no follower")
		}
		return nil
	}); err != nil {
		return err
	}
	apply := func(services []conf.VirtualServer) (time.Duration, time.Duration, int, error) {
		f := filepath.Join(dir, "apply.toml")
		other := ns[0]
		if other == follower {
			other = ns[1]
		}
		if err := os.WriteFile(f, []byte(file(follower, other, dir, services)), 0o644); err != nil {
			return 0, 0, 0, err
		}
		start := time.Now()
		if o, err := exec.Command(bins.Directorctl, "--socket", follower.sock, "apply", "-f", f).CombinedOutput(); err != nil {
			return 0, 0, 0, fmt.Errorf("apply: %v: %s", err, o)
		}
		committed := time.Since(start)
		var last time.Time
		ops := 0
		for _, n := range ns {
			at, o, err := reconcileAfter(n, start, 30*time.Second)
			if err != nil {
				return 0, 0, 0, err
			}
			if at.After(last) {
				last = at
			}
			ops = o
		}
		return committed, last.Sub(start), ops, nil
	}
	// The anchor: the same change made the keepalived way, the file
	// edited on both directors and both reloaded with SIGHUP, timed from
	// the first file written until both kernels have it.
	reload := func(services []conf.VirtualServer) (time.Duration, error) {
		start := time.Now()
		for _, n := range plain {
			if err := os.WriteFile(n.conf, []byte(plainFile(n, filepath.Dir(n.conf), services).String()), 0o644); err != nil {
				return 0, err
			}
			if err := n.proc.Signal(syscall.SIGHUP); err != nil {
				return 0, err
			}
		}
		var last time.Time
		for _, n := range plain {
			at, _, err := reconcileAfter(n, start, 30*time.Second)
			if err != nil {
				return 0, err
			}
			if at.After(last) {
				last = at
			}
		}
		return last.Sub(start), nil
	}
	if err := lab.Eventually(10*time.Second, func() error {
		for _, n := range plain {
			if !reconciled.MatchString(n.proc.Output()) {
				return fmt.Errorf("%s has not reconciled", n.h.Name)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	var oneFile []time.Duration
	for k := range runs {
		d, err := reload(table(1, 2, 2+k%2))
		if err != nil {
			return fmt.Errorf("anchor: %w", err)
		}
		oneFile = append(oneFile, d)
	}
	// The full table, each time from the one-service table.
	var fullFiles []time.Duration
	for range fullRuns {
		if _, err := reload(table(1, 2, 1)); err != nil {
			return fmt.Errorf("anchor: %w", err)
		}
		d, err := reload(table(big, 10, 1))
		if err != nil {
			return fmt.Errorf("anchor: %w", err)
		}
		fullFiles = append(fullFiles, d)
	}
	oneFileMed, _ := report.Median(oneFile)
	fullFile, _ := report.Median(fullFiles)

	var one, oneCommit []time.Duration
	var notOne []int // operation counts of weight changes that were not one
	for k := range runs {
		c, d, ops, err := apply(table(1, 2, 2+k%2))
		if err != nil {
			return err
		}
		if ops != 1 {
			notOne = append(notOne, ops)
		}
		one, oneCommit = append(one, d), append(oneCommit, c)
	}
	var fulls, fullCommits []time.Duration
	fullOps := 0
	for range fullRuns {
		if _, _, _, err := apply(table(1, 2, 1)); err != nil {
			return err
		}
		c, d, ops, err := apply(table(big, 10, 1))
		if err != nil {
			return err
		}
		fulls, fullCommits, fullOps = append(fulls, d), append(fullCommits, c), ops
	}
	oneMed, oneRuns := report.Median(one)
	oneCommitMed, _ := report.Median(oneCommit)
	full, fullMedRuns := report.Median(fulls)
	fullCommit, _ := report.Median(fullCommits)
	fmt.Printf("one change: %s %s, max %s (directorctl returned after median %s); full table: %s %s, max %s (%d ops; committed after median %s)\n",
		oneRuns, oneMed, slices.Max(one), oneCommitMed, fullMedRuns, full, slices.Max(fulls), fullOps, fullCommit)
	targets.Check("one change in both kernels under 50 ms", oneMed < 50*time.Millisecond, "%s (%s)", ms(oneMed), oneRuns)
	targets.Check("one change is one kernel operation", len(notOne) == 0, "1 in %d of %d runs (others: %v)", runs-len(notOne), runs, notOne)
	targets.Check("the full table in both kernels under 1 s", full < time.Second, "%s (%s)", ms(full), fullMedRuns)

	var b strings.Builder
	fmt.Fprintf(&b, "## Cluster replication (`make bench-cluster`)\n\n")
	fmt.Fprintf(&b, "Measured %s on %s. Two directors (nftables data plane) replicate their table with Raft\n", time.Now().UTC().Format("2006-01-02"), report.Machine())
	fmt.Fprintf(&b, "over mutual TLS (each with a key pair from the bench's own CA, as `directorctl cluster certs` makes them);\n")
	fmt.Fprintf(&b, "`directorctl apply -f FILE` runs on the follower (which forwards to the leader). The time runs from\n")
	fmt.Fprintf(&b, "starting directorctl until both directors have reconciled their kernel table (the daemons' log,\n")
	fmt.Fprintf(&b, "millisecond timestamps); \"committed\" is when directorctl returned. The anchor is the same change\n")
	fmt.Fprintf(&b, "made the keepalived way on two more directors of the same lab without `[cluster]`: the file\n")
	fmt.Fprintf(&b, "written on each and each reloaded with SIGHUP, from the first write until both kernels have it\n")
	fmt.Fprintf(&b, "(directord's own reload: keepalived cannot program a load balancer on this kernel).\n\n")
	fmt.Fprintf(&b, "| change | until both kernels (median) | max | committed (median) | kernel operations | anchor: edit + SIGHUP both (median) | ratio |\n|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&b, "| one real server's weight (%s) | %s | %s | %s | 1 | %s | %.2f |\n", oneRuns, ms(oneMed), ms(slices.Max(one)),
		ms(oneCommitMed), ms(oneFileMed), float64(oneMed)/float64(oneFileMed))
	fmt.Fprintf(&b, "| %d services x 10 real servers, from one service (%s) | %s | %s | %s | %d | %s | %.2f |\n\n", big, fullMedRuns, ms(full),
		ms(slices.Max(fulls)), ms(fullCommit), fullOps, ms(fullFile), float64(full)/float64(fullFile))
	b.WriteString(targets.Markdown())
	fmt.Fprintf(&b, "\nReproduce: `sudo make bench-cluster` (about two minutes).\n")
	return report.WriteSection(out, "cluster", b.String())
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

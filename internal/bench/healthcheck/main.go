// Command healthcheck is make bench-healthcheck: directord checks 5,000 TCP
// targets (listeners in a lab namespace) every second for a minute; the
// bench measures its CPU, memory, check latency and missed intervals and
// writes them to docs/benchmarks.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/directord/directord/internal/api"

	"golang.org/x/sys/unix"

	"github.com/directord/directord/internal/bench/report"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	addrs := flag.Int("addrs", 50, "target addresses")
	ports := flag.Int("ports", 100, "ports per address (targets = addrs x ports)")
	dur := flag.Duration("duration", time.Minute, "measured run")
	out := flag.String("out", "docs/benchmarks.md", "report to update")
	floor := flag.Bool("floor", false, "internal: run the bare connect loop and print its CPU use")
	napi := flag.Bool("napi", true, "receive on the targets' interface in a NAPI kernel thread")
	flag.Parse()
	if *floor {
		bareConnects(*addrs, *ports, *dur)
		return
	}
	var targets report.Targets
	if err := run(*bin, *addrs, *ports, *dur, *out, *napi, &targets); err != nil {
		fmt.Fprintln(os.Stderr, "bench-healthcheck:", err)
		os.Exit(1)
	}
	os.Exit(targets.Summary(os.Stdout, "bench-healthcheck"))
}

type sample struct {
	at        time.Time
	cpu       time.Duration // directord's user+system time
	user      time.Duration
	napi      time.Duration // the targets' receive threads
	checks    uint64
	missed    uint64
	failures  uint64
	latencies []float64
	up        int
	targets   int
}

func run(bin string, addrs, ports int, dur time.Duration, out string, napi bool, ts *report.Targets) (err error) {
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
	s := scene.NewLVS(l, 0)
	tgt := l.AddHost("tgt")
	var cidrs []string
	for i := range addrs {
		cidrs = append(cidrs, fmt.Sprintf("203.0.113.%d/24", 11+i))
	}
	port := s.Back.Plug(tgt, "eth0", cidrs...)
	var napiThreads []int
	if napi {
		if napiThreads, err = threadedNAPI(s.Back, port, tgt, "eth0"); err != nil {
			return err
		}
	}

	// The targets: accept and close.
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	if err := tgt.Do(func() error {
		for i := range addrs {
			for p := range ports {
				ln, err := net.Listen("tcp4", fmt.Sprintf("203.0.113.%d:%d", 11+i, 10000+p))
				if err != nil {
					return err
				}
				lns = append(lns, ln)
				lab.AcceptAndClose(ln)
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("listeners: %w", err)
	}

	dir, err := os.MkdirTemp("", "bench-healthcheck")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "directord.sock")
	file := filepath.Join(dir, "directord.toml")
	f := conf.File{Node: conf.Node{Name: "dir", DataDir: filepath.Join(dir, "data"), StatusSocket: sock, Extra: []string{`log_level = "warn"`}}}
	for i := range addrs {
		vs := conf.VirtualServer{Name: fmt.Sprintf("vs%d", i), Address: fmt.Sprintf("192.0.2.100:%d", 1000+i), Scheduler: "rr",
			Check: &conf.Check{Type: "tcp", Interval: "1s", Timeout: "500ms", Extra: []string{`warmup = "1s"`, "log_all_failures = true"}}}
		for p := range ports {
			vs.Reals = append(vs.Reals, conf.Real{Address: fmt.Sprintf("203.0.113.%d:%d", 11+i, 10000+p)})
		}
		f.VirtualServers = append(f.VirtualServers, vs)
	}
	if err := f.Write(file); err != nil {
		return err
	}
	d := s.Director.Start(bins.Directord, "-c", file)
	defer d.Kill()
	targets := addrs * ports
	// The health section alone, as a monitoring agent would poll it: the
	// whole document would add a dump of the nftables counters each time.
	client := status.NewClient(sock)
	read := func() (*sample, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var health api.HealthStatus
		if err := client.Get(ctx, "/v1/status/health", &health); err != nil {
			return nil, fmt.Errorf("status: %w", err)
		}
		sm := &sample{at: time.Now()}
		sm.user, sm.cpu = cpuTime(d.Pid())
		for _, t := range napiThreads {
			_, c := cpuTime(t)
			sm.napi += c
		}
		for _, c := range health.Checks {
			sm.checks += c.Checks
			sm.missed += c.Missed
			sm.failures += c.Failures
			if c.Up {
				sm.up++
			}
			if c.Checks > 0 {
				sm.latencies = append(sm.latencies, c.LatencySecs)
			}
		}
		sm.targets = len(health.Checks)
		return sm, nil
	}
	// Warm up: every check has run twice.
	if err := lab.Eventually(60*time.Second, func() error {
		if d.Exited() {
			return fmt.Errorf("directord exited: %s", d.Output())
		}
		sm, err := read()
		if err != nil {
			return err
		}
		if sm.targets != targets || sm.checks < uint64(2*targets) {
			return fmt.Errorf("%d checks of %d targets so far", sm.checks, sm.targets)
		}
		return nil
	}); err != nil {
		return err
	}
	first, err := read()
	if err != nil {
		return err
	}
	var lat []float64
	last := first
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for time.Since(first.at) < dur {
		<-tick.C
		if last, err = read(); err != nil {
			return err
		}
		lat = append(lat, last.latencies...)
	}
	elapsed := last.at.Sub(first.at)
	cpu := share(last.cpu-first.cpu, elapsed)
	user := share(last.user-first.user, elapsed)
	napiCPU := share(last.napi-first.napi, elapsed)
	rss, hwm := memory(d.Pid())
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		return time.Duration(lat[int(p*float64(len(lat)-1))] * float64(time.Second))
	}
	checks := last.checks - first.checks
	missed := last.missed - first.missed
	expected := float64(targets) * elapsed.Seconds()
	// Every failure is logged (log_all_failures): their reasons.
	reasons := map[string]int{}
	for _, line := range strings.Split(d.Output(), "\n") {
		if i := strings.Index(line, "health check failed"); i >= 0 {
			if j := strings.Index(line, "err="); j >= 0 {
				v := line[j+len("err="):]
				if q, err := strconv.QuotedPrefix(v); err == nil {
					v, _ = strconv.Unquote(q)
				} else if f := strings.Fields(v); len(f) > 0 {
					v = f[0]
				}
				reasons[v]++
			}
		}
	}
	for e, n := range reasons {
		fmt.Printf("failed checks logged: %d x %s\n", n, e)
	}
	fmt.Printf("targets' receive thread: cpu %.1f%% of a core\n", napiCPU)
	fmt.Printf("%d targets, %s: cpu %.1f%% of a core (user %.1f%%), rss %d MiB (peak %d MiB), latency p50 %s p99 %s, %d checks (%.0f expected), %d missed, %d failures, %d up\n",
		targets, elapsed.Round(time.Second), cpu, user, rss>>20, hwm>>20, pct(0.5), pct(0.99), checks, expected, missed, last.failures-first.failures, last.up)

	// The floor: the same connects and resets from the same namespace by a
	// plain loop of system calls, with directord paused (SIGSTOP) so that
	// its nftables table, and with it conntrack and NAT on every packet,
	// stays as it was during the run.
	if err := d.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fo, err := s.Director.Command(self, "-floor", "-addrs", strconv.Itoa(addrs), "-ports", strconv.Itoa(ports), "-duration", "20s").CombinedOutput()
	d.Signal(syscall.SIGCONT)
	if err != nil {
		return fmt.Errorf("floor: %v: %s", err, fo)
	}
	var floorCPU, floorUser float64
	if _, err := fmt.Sscanf(strings.TrimSpace(string(fo)), "floor %f %f", &floorCPU, &floorUser); err != nil {
		return fmt.Errorf("floor output %q: %w", fo, err)
	}
	fmt.Printf("floor: bare connect+reset loop at the same rate: cpu %.1f%% of a core (user %.1f%%)\n", floorCPU, floorUser)

	// For comparison, directord again with the targets' receive work back
	// in the softirq of whoever sent the packet: mostly directord.
	inline := -1.0
	if napi {
		if err := setThreaded(tgt, "eth0", false); err != nil {
			return err
		}
		a, err := read()
		if err != nil {
			return err
		}
		window := time.NewTimer(20 * time.Second)
		<-window.C
		b, err := read()
		if err != nil {
			return err
		}
		inline = share(b.cpu-a.cpu, b.at.Sub(a.at))
		fmt.Printf("directord with the targets' receive in the sender's softirq: cpu %.1f%% of a core\n", inline)
	}
	d.Signal(syscall.SIGTERM) // a clean exit writes DIRECTORD_CPUPROFILE
	if _, err := d.Wait(10 * time.Second); err != nil {
		d.Kill()
	}

	var r strings.Builder
	fmt.Fprintf(&r, "## Health checks (`make bench-healthcheck`)\n\n")
	fmt.Fprintf(&r, "Measured %s on %s. directord checks %d TCP targets (%d addresses x %d ports, listeners\n", time.Now().UTC().Format("2006-01-02"), report.Machine(), targets, addrs, ports)
	fmt.Fprintf(&r, "that accept and close, in a lab namespace) every second (timeout 500ms, warmup 1s) on the\n")
	fmt.Fprintf(&r, "nftables data plane, for %s after every check has run twice. CPU is directord's user+system\n", elapsed.Round(time.Second))
	fmt.Fprintf(&r, "time over the run; latency is each check's duration, sampled every 5 s over all targets\n")
	fmt.Fprintf(&r, "(by reading the status socket's health section, as a monitor would); a missed interval is a\n")
	fmt.Fprintf(&r, "check that started more than one interval late.\n\n")
	fmt.Fprintf(&r, "| targets | CPU (%% of one core) | anchor: bare loop | ratio | RSS (peak) | latency p50 | latency p99 | checks run / due | missed intervals | failed checks |\n")
	fmt.Fprintf(&r, "|---|---|---|---|---|---|---|---|---|---|\n")
	fmt.Fprintf(&r, "| %d | %.1f %% | %.1f %% | %.2f | %d MiB (%d MiB) | %s | %s | %d / %.0f | %d | %d |\n\n", targets, cpu, floorCPU, cpu/floorCPU, rss>>20, hwm>>20,
		pct(0.5).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), checks, expected, missed, last.failures-first.failures)
	fmt.Fprintf(&r, "directord's CPU splits into %.1f %% user and %.1f %% system time. The anchor is a bare loop\n", user, cpu-user)
	fmt.Fprintf(&r, "making the same connections at the same rate from the same namespace, each ended with a\n")
	fmt.Fprintf(&r, "reset, on one socket reused as directord reuses its checks' sockets (directord paused, its\n")
	fmt.Fprintf(&r, "nftables table and so conntrack and NAT still in the path), with no Go runtime, timers or\n")
	fmt.Fprintf(&r, "bookkeeping: %.1f %% of a core (%.1f %% user). keepalived's checker cannot run here (it\n", floorCPU, floorUser)
	fmt.Fprintf(&r, "needs IPVS in the kernel). On a shared virtual machine both figures move together with the\n")
	fmt.Fprintf(&r, "host's load from run to run; the ratio is the steadier of the two.\n\n")
	if napi {
		fmt.Fprintf(&r, "The targets' interface receives in a threaded NAPI kernel thread (GRO on, so a veth uses\n")
		fmt.Fprintf(&r, "NAPI), so the targets' side of each handshake (their SYN handling, SYN-ACK and accept\n")
		fmt.Fprintf(&r, "queue) runs there, as it would on the real servers' own hosts. The same thread carries the\n")
		fmt.Fprintf(&r, "replies on through the bridge into directord's sockets: on a real director that is the\n")
		fmt.Fprintf(&r, "NIC's receive softirq, which is not counted as the daemon's either. The thread used %.1f %%\n", napiCPU)
		fmt.Fprintf(&r, "of a core. Without it a veth runs the receiver's whole path, and the reply's, in the softirq\n")
		fmt.Fprintf(&r, "of the process that sent the packet, so directord was charged for the targets' kernel work\n")
		fmt.Fprintf(&r, "too. Measured that way as well, in the same run (20 s, directord unchanged): **%.1f %%** of\n", inline)
		fmt.Fprintf(&r, "a core.\n\n")
	}
	ts.Check(fmt.Sprintf("%d tcp targets a second in under 25 %% of one core", targets), cpu < 25, "%.1f %% (one %s run; the targets' receive in a NAPI thread: %v)", cpu, elapsed.Round(time.Second), napi)
	ts.Check("no missed interval", missed == 0, "%d", missed)
	ts.Check("no failed check (every target is up)", last.failures == first.failures, "%d", last.failures-first.failures)
	r.WriteString(ts.Markdown())
	fmt.Fprintf(&r, "\nReproduce: `sudo make bench-healthcheck` (about two and a half minutes).\n")
	return report.WriteSection(out, "healthcheck", r.String())
}

// share is CPU time used over a wall-clock time, in % of one core.
func share(cpu, over time.Duration) float64 { return float64(cpu) / float64(over) * 100 }

// cpuTime is a process's user and user+system CPU time from /proc.
func cpuTime(pid int) (user, total time.Duration) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	// Fields after the command (which may hold spaces) from ")".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime) * time.Second / 100, time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// memory is a process's resident and peak resident memory in bytes.
func memory(pid int) (rss, hwm int64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			hwm = kb << 10
		}
	}
	return rss, hwm
}

// bareConnects connects to every target once a second, ending each
// connection with a reset, from one thread with plain system calls, and
// prints its CPU use.
func bareConnects(addrs, ports int, dur time.Duration) {
	var targets []unix.SockaddrInet4
	for i := range addrs {
		for p := range ports {
			targets = append(targets, unix.SockaddrInet4{Port: 10000 + p, Addr: [4]byte{203, 0, 113, byte(11 + i)}})
		}
	}
	runtime.LockOSThread()
	var before, after unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &before)
	start := time.Now()
	gap := time.Second / time.Duration(len(targets))
	next := start
	// One socket, connected and disconnected (connect with AF_UNSPEC,
	// which resets an established connection) over and over, as directord
	// reuses the sockets of checks that passed; a new one after a failure.
	unspec := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	fd := -1
	for i := 0; time.Since(start) < dur; i++ {
		t := &targets[i%len(targets)]
		if fd < 0 {
			fd, _ = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		}
		if fd >= 0 {
			if unix.Connect(fd, t) == nil {
				unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&unspec)), unsafe.Sizeof(unspec.Family))
			} else {
				unix.Close(fd)
				fd = -1
			}
		}
		next = next.Add(gap)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
	}
	unix.Getrusage(unix.RUSAGE_SELF, &after)
	el := time.Since(start)
	u := time.Duration(after.Utime.Nano() - before.Utime.Nano())
	s := time.Duration(after.Stime.Nano() - before.Stime.Nano())
	fmt.Printf("floor %.1f %.1f\n", share(u+s, el), share(u, el))
}

// threadedNAPI makes ifname in h receive in a NAPI kernel thread of its
// own (GRO turns NAPI on for a veth), instead of in the softirq of the
// process whose packet crossed the cable, and returns the threads' pids.
// The targets' side of every handshake then runs there, as it would on
// the real servers' own hosts, rather than being charged to the checker.
func threadedNAPI(sw *lab.Switch, port string, h *lab.Host, ifname string) ([]int, error) {
	before := napiThreads()
	// A veth hands a packet to its peer's NAPI only if it could be
	// merged: with TSO on the sending end, only a local socket's are.
	if out, err := exec.Command("ip", "netns", "exec", sw.NS, "ethtool", "-K", port, "tso", "off").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tso off on %s: %v: %s", port, err, out)
	}
	if err := setThreaded(h, ifname, true); err != nil {
		return nil, err
	}
	var pids []int
	for pid := range napiThreads() {
		if !before[pid] {
			pids = append(pids, pid)
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("threaded napi on %s: no kernel thread appeared", ifname)
	}
	return pids, nil
}

// setThreaded turns GRO and threaded NAPI on or off for ifname in h:
// off is a veth's default, where the sender's softirq receives.
func setThreaded(h *lab.Host, ifname string, on bool) error {
	gro := func() error {
		v := map[bool]string{true: "on", false: "off"}[on]
		if out, err := h.Run("ethtool", "-K", ifname, "gro", v); err != nil {
			return fmt.Errorf("gro %s on %s: %v: %s", v, ifname, err, out)
		}
		return nil
	}
	// NAPI exists only while GRO is on: threaded can be set only then.
	if on {
		if err := gro(); err != nil {
			return err
		}
	}
	c := h.Command("tee", "/sys/class/net/"+ifname+"/threaded")
	c.Stdin = strings.NewReader(map[bool]string{true: "1", false: "0"}[on])
	if out, err := c.CombinedOutput(); err != nil {
		return fmt.Errorf("threaded napi %v on %s: %v: %s", on, ifname, err, out)
	}
	if !on {
		return gro()
	}
	return nil
}

// napiThreads is the set of NAPI kernel threads running.
func napiThreads() map[int]bool {
	m := map[int]bool{}
	es, _ := os.ReadDir("/proc")
	for _, e := range es {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err == nil && strings.HasPrefix(string(b), "napi/") {
			m[pid] = true
		}
	}
	return m
}

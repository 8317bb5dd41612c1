// Package lab builds test networks out of network namespaces: hosts, a
// bridge "switch" in a namespace of its own, veth cables, addresses and
// routes, and runs programs inside the hosts. Nothing touches the root
// namespace, names are unique per lab so labs run in parallel, and Close
// removes every namespace and process, also when a test fails.
//
// Tests use New(t); programs such as the demo use Open and Close.
package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Prefix starts every namespace name a lab creates, so that leftovers of a
// killed test run can be found (make clean-lab).
const Prefix = "dl"

// Lab is one test network.
type Lab struct {
	id     string
	logf   func(format string, args ...any)
	fail   func(format string, args ...any)
	failed func() bool

	mu       sync.Mutex
	closed   bool
	cleanups []func()
	procs    []*Process
}

// Failure is the panic value of a lab opened with Open when a step fails.
type Failure struct{ Err error }

func (f Failure) Error() string { return f.Err.Error() }

// Open creates an empty lab for a program. A failing step panics with a
// Failure; defer Close first so the lab is removed whatever happens.
func Open(logf func(format string, args ...any)) *Lab {
	return &Lab{
		id:     randomID(),
		logf:   logf,
		fail:   func(format string, args ...any) { panic(Failure{fmt.Errorf(format, args...)}) },
		failed: func() bool { return false },
	}
}

// Recover turns the Failure panic of a lab opened with Open into *err;
// defer it in the function that uses the lab. Other panics go on.
func Recover(err *error) {
	if r := recover(); r != nil {
		f, ok := r.(Failure)
		if !ok {
			panic(r)
		}
		*err = f
	}
}

// New creates a lab for a test: it skips or fails the test when it cannot
// run (see Require), fails the test on any error, and is removed when the
// test ends. Process output is logged when the test failed.
func New(t testing.TB) *Lab {
	t.Helper()
	Require(t)
	l := &Lab{id: randomID(), logf: t.Logf, fail: t.Fatalf, failed: t.Failed}
	// The test's temporary directories go after the lab's processes: a
	// daemon still writing into one would make its removal fail. Cleanups
	// run last-registered first, and the removal of them all is
	// registered by the first TempDir call.
	t.TempDir()
	t.Cleanup(l.Close)
	return l
}

// Require skips a test that needs root and the named programs (besides ip)
// when they are missing, except under CI=true, where it fails it: CI runs
// as root and must never skip these tests silently.
func Require(t testing.TB, programs ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, p := range append([]string{"ip"}, programs...) {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("this test needs %s, and under CI=true it must run", strings.Join(missing, ", "))
	}
	t.Skipf("needs %s (run as root: sudo make test)", strings.Join(missing, ", "))
}

func randomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ID is the lab's unique part of every name.
func (l *Lab) ID() string { return l.id }

// OnClose runs fn when the lab closes, before earlier-registered cleanups.
func (l *Lab) OnClose(fn func()) { l.onClose(fn) }

func (l *Lab) onClose(fn func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cleanups = append(l.cleanups, fn)
}

// Close stops every process and removes every namespace, in reverse order
// of creation. It is safe to call more than once.
func (l *Lab) Close() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	cleanups, procs := l.cleanups, l.procs
	l.mu.Unlock()
	if l.failed() {
		for _, p := range procs {
			l.logf("output of %s:\n%s", p.Name, p.Output())
		}
	}
	for _, fn := range slices.Backward(cleanups) {
		fn()
	}
}

// Fatalf fails the lab: the test fails, or a program's lab panics with a
// Failure (see Open).
func (l *Lab) Fatalf(format string, args ...any) { l.fail(format, args...) }

// ip runs iproute2's ip with args and fails the lab on error.
func (l *Lab) ip(args ...string) {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.fail("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}

// Host is a network namespace standing for one machine.
type Host struct {
	lab  *Lab
	Name string
	// NS is the namespace's name, for ip -n and ip netns exec.
	NS string
}

// AddHost creates a namespace with lo up.
func (l *Lab) AddHost(name string) *Host {
	h := &Host{lab: l, Name: name, NS: fmt.Sprintf("%s%s-%s", Prefix, l.id, name)}
	l.ip("netns", "add", h.NS)
	l.onClose(func() {
		h.KillAll() // daemons that left their process group (keepalived's children)
		if out, err := exec.Command("ip", "netns", "del", h.NS).CombinedOutput(); err != nil {
			l.logf("remove namespace %s: %v: %s", h.NS, err, out)
		}
	})
	l.ip("-n", h.NS, "link", "set", "lo", "up")
	return h
}

// KillAll kills every process in the host's namespace with SIGKILL, as
// if the machine died, and waits until none is left.
func (h *Host) KillAll() {
	for range 100 {
		out, err := exec.Command("ip", "netns", "pids", h.NS).Output()
		if err != nil || len(strings.TrimSpace(string(out))) == 0 {
			return
		}
		killed := false
		for _, f := range strings.Fields(string(out)) {
			// Never this test process: a goroutine of it may be inside
			// the namespace (Host.Do) on the thread ip netns pids reads.
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				killed = true
			}
		}
		if !killed {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Switch is a bridge in a namespace of its own; hosts plug into it.
type Switch struct {
	*Host
	mu    sync.Mutex
	ports int
}

// AddSwitch creates a switch. Multicast snooping is off so that VRRP's
// multicast reaches every port, as on a plain switch.
func (l *Lab) AddSwitch(name string) *Switch {
	sw := &Switch{Host: l.AddHost(name)}
	l.ip("-n", sw.NS, "link", "add", "br0", "type", "bridge",
		"stp_state", "0", "forward_delay", "0", "mcast_snooping", "0")
	l.ip("-n", sw.NS, "link", "set", "br0", "up")
	// A switch forwards frames. With br_netfilter in the kernel a new
	// namespace's bridge would also run the IP hooks on every frame, paid
	// by whichever host sent it.
	for _, k := range []string{"iptables", "ip6tables", "arptables"} {
		if err := sw.Sysctl("net/bridge/bridge-nf-call-"+k, "0"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.Fatalf("%s: bridge netfilter off: %v", name, err)
		}
	}
	return sw
}

// Sysctl writes /proc/sys/<key> inside h.
func (h *Host) Sysctl(key, value string) error {
	return h.Do(func() error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) })
}

// Plug connects h to sw with a veth cable whose host end is ifname, brings
// it up and adds the addresses (CIDR notation). It returns the name of the
// switch's port, which a test can take down to cut the cable.
func (sw *Switch) Plug(h *Host, ifname string, cidrs ...string) string {
	sw.mu.Lock()
	sw.ports++
	port := fmt.Sprintf("p%d", sw.ports)
	sw.mu.Unlock()
	l := sw.lab
	l.ip("-n", sw.NS, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", h.NS)
	l.ip("-n", sw.NS, "link", "set", port, "master", "br0", "up")
	l.ip("-n", h.NS, "link", "set", ifname, "up")
	for _, c := range cidrs {
		h.AddAddr(ifname, c)
	}
	return port
}

// Connect joins two hosts with a veth cable, without a switch.
func (l *Lab) Connect(a *Host, aIf string, b *Host, bIf string) {
	l.ip("-n", a.NS, "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.NS)
	l.ip("-n", a.NS, "link", "set", aIf, "up")
	l.ip("-n", b.NS, "link", "set", bIf, "up")
}

// AddAddr adds an address in CIDR notation to ifname. IPv6 addresses skip
// duplicate address detection so they are usable at once.
func (h *Host) AddAddr(ifname, cidr string) {
	args := []string{"-n", h.NS, "addr", "add", cidr, "dev", ifname}
	if strings.Contains(cidr, ":") {
		args = append(args, "nodad")
	}
	h.lab.ip(args...)
}

// AddRoute adds a route, such as AddRoute("default", "via", "192.0.2.1").
func (h *Host) AddRoute(args ...string) {
	h.lab.ip(append([]string{"-n", h.NS, "route", "add"}, args...)...)
}

// IP runs "ip ARGS" inside the host and fails the lab on error.
func (h *Host) IP(args ...string) {
	h.lab.ip(append([]string{"-n", h.NS}, args...)...)
}

// Run runs a command inside the host and returns its combined output.
func (h *Host) Run(name string, args ...string) (string, error) {
	out, err := h.Command(name, args...).CombinedOutput()
	return string(out), err
}

// MustRun is Run that fails the lab on error.
func (h *Host) MustRun(name string, args ...string) string {
	out, err := h.Run(name, args...)
	if err != nil {
		h.lab.fail("%s: %s %s: %v: %s", h.Name, name, strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return out
}

// Command prepares a command that runs inside the host.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Do runs fn on an OS thread switched into the host's namespace, so that
// sockets fn opens belong to the host. They stay there after Do returns.
func (h *Host) Do(fn func() error) error {
	target, err := netns.GetFromName(h.NS)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", h.NS, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	// A fresh goroutine whose thread is thrown away if it cannot be
	// switched back, so no other goroutine ever runs in the wrong namespace.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", h.NS, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave namespace %s: %w", h.NS, err)
			return // thread stays locked and exits with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

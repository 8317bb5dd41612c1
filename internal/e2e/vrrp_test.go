package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/directord/directord/internal/daemon"
	"github.com/directord/directord/internal/lab"
	"github.com/directord/directord/vrrp"
)

const vip = "192.0.2.100"

// pair is a client and two directors on one switch.
type pair struct {
	t              *testing.T
	lab            *lab.Lab
	sw             *lab.Switch
	client         *lab.Host
	lb1, lb2       *lab.Host
	port1, port2   string // the directors' switch ports
	dir            string
	procs          map[*lab.Host]*lab.Process
	sockets, files map[*lab.Host]string
}

func newPair(t *testing.T) *pair {
	l := lab.New(t)
	p := &pair{t: t, lab: l, sw: l.AddSwitch("sw"), dir: t.TempDir(),
		procs: map[*lab.Host]*lab.Process{}, sockets: map[*lab.Host]string{}, files: map[*lab.Host]string{}}
	p.client, p.lb1, p.lb2 = l.AddHost("client"), l.AddHost("lb1"), l.AddHost("lb2")
	p.sw.Plug(p.client, "eth0", "192.0.2.50/24", "2001:db8::50/64")
	p.port1 = p.sw.Plug(p.lb1, "eth0", "192.0.2.11/24", "2001:db8::11/64")
	p.port2 = p.sw.Plug(p.lb2, "eth0", "192.0.2.12/24", "2001:db8::12/64")
	return p
}

// vrrpFile is a configuration with one instance; extra lines go into it.
func (p *pair) vrrpFile(h *lab.Host, prio int, extra string) {
	dir := filepath.Join(p.dir, h.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		p.t.Fatal(err)
	}
	p.sockets[h] = filepath.Join(dir, "directord.sock")
	p.files[h] = filepath.Join(dir, "directord.toml")
	if !strings.Contains(extra, "virtual_ipaddress") {
		extra += "\nvirtual_ipaddress = [\"" + vip + "/24\"]"
	}
	if !strings.Contains(extra, "advert_int") {
		extra += "\nadvert_int = \"100ms\""
	}
	writeFile(p.t, p.files[h], fmt.Sprintf(`[node]
name = %q
data_dir = %q
status_socket = %q

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = %d
%s
`, h.Name, filepath.Join(dir, "data"), p.sockets[h], prio, extra))
}

func (p *pair) start(h *lab.Host) {
	p.procs[h] = h.Start(directord, "-c", p.files[h])
}

func (p *pair) instance(h *lab.Host) (vrrp.InstanceStatus, error) {
	out, err := exec.Command(directorctl, "--socket", p.sockets[h], "status", "--json").Output()
	if err != nil {
		return vrrp.InstanceStatus{}, fmt.Errorf("%s: directorctl: %v", h.Name, err)
	}
	var doc struct {
		VRRP daemon.VRRPStatus `json:"vrrp"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return vrrp.InstanceStatus{}, err
	}
	if len(doc.VRRP.Instances) != 1 {
		return vrrp.InstanceStatus{}, fmt.Errorf("%s: %d instances", h.Name, len(doc.VRRP.Instances))
	}
	return doc.VRRP.Instances[0], nil
}

// waitStates polls until each director is in its wanted state.
func (p *pair) waitStates(timeout time.Duration, want map[*lab.Host]vrrp.State) {
	p.t.Helper()
	if err := lab.Eventually(timeout, func() error {
		for h, st := range want {
			in, err := p.instance(h)
			if err != nil {
				return err
			}
			if in.State != st {
				return fmt.Errorf("%s is %s, want %s", h.Name, in.State, st)
			}
			// A backup that has not heard a master yet may still time out.
			if st == vrrp.Backup && in.Master == "" {
				return fmt.Errorf("%s is a backup that has heard no master yet", h.Name)
			}
		}
		return nil
	}); err != nil {
		p.t.Fatal(err)
	}
}

func hasAddr(h *lab.Host, addr string) bool {
	out, _ := h.Run("ip", "-o", "addr", "show", "dev", "eth0")
	return strings.Contains(out, " "+addr+"/")
}

// owner checks that exactly h holds the VIP (addr) among the directors.
func (p *pair) owner(h *lab.Host, addr string) {
	p.t.Helper()
	if err := lab.Eventually(2*time.Second, func() error {
		for _, d := range []*lab.Host{p.lb1, p.lb2} {
			if has := hasAddr(d, addr); has != (d == h) {
				return fmt.Errorf("%s holds %s: %v", d.Name, addr, has)
			}
		}
		return nil
	}); err != nil {
		p.t.Fatal(err)
	}
}

func mac(h *lab.Host) string {
	out, _ := h.Run("cat", "/sys/class/net/eth0/address")
	return strings.TrimSpace(out)
}

// neighbour returns the client's link-layer address for the VIP, or "".
func (p *pair) neighbour() string {
	out, _ := p.client.Run("ip", "neigh", "show", vip, "dev", "eth0")
	if f := strings.Fields(out); len(f) >= 3 && f[1] == "lladdr" {
		return f[2]
	}
	return ""
}

// clientSees checks that the client learnt the VIP at h from a gratuitous
// ARP (its neighbour entry changes without it asking), then that the VIP
// answers ping.
func (p *pair) clientSees(h *lab.Host) {
	p.t.Helper()
	want := mac(h)
	if err := lab.Eventually(3*time.Second, func() error {
		if got := p.neighbour(); got != want {
			return fmt.Errorf("client's neighbour entry for %s is %q, want %s's %s", vip, got, h.Name, want)
		}
		return nil
	}); err != nil {
		p.t.Fatal(err)
	}
	p.client.MustRun("ping", "-c", "1", "-W", "2", vip)
}

// arpAnswers checks that, asked afresh, only h answers ARP for the VIP.
func (p *pair) arpAnswers(h *lab.Host) {
	p.t.Helper()
	p.client.MustRun("ip", "neigh", "flush", "dev", "eth0")
	p.client.MustRun("ping", "-c", "1", "-W", "2", vip)
	if got, want := p.neighbour(), mac(h); got != want {
		p.t.Fatalf("ARP for %s answered by %q, want %s's %s", vip, got, h.Name, want)
	}
}

func TestVRRPFailover(t *testing.T) {
	lab.Require(t, "ping")
	p := newPair(t)
	p.vrrpFile(p.lb1, 150, "")
	p.vrrpFile(p.lb2, 100, "")
	p.start(p.lb1)
	p.start(p.lb2)

	t.Log("election by priority")
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
	p.owner(p.lb1, vip)
	p.arpAnswers(p.lb1)
	in, err := p.instance(p.lb2)
	if err != nil || in.Master != "192.0.2.11" || in.AdvertsReceived == 0 {
		t.Fatalf("backup's view: %+v %v", in, err)
	}

	t.Log("the master's host dies (kill -9, cable cut): the backup takes over and answers ARP")
	p.procs[p.lb1].Kill()
	p.sw.IP("link", "set", p.port1, "down")
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb2: vrrp.Master})
	if !hasAddr(p.lb2, vip) {
		t.Fatal("new master lacks the VIP")
	}
	p.clientSees(p.lb2)
	p.arpAnswers(p.lb2)

	t.Log("the old master comes back: it drops its stale VIP and preempts")
	p.sw.IP("link", "set", p.port1, "up")
	p.start(p.lb1)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
	p.owner(p.lb1, vip)
	p.clientSees(p.lb1)

	t.Log("graceful stop: the master resigns with priority 0")
	if err := p.procs[p.lb1].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := p.procs[p.lb1].Wait(5 * time.Second); err != nil || code != 0 {
		t.Fatalf("SIGTERM: %d %v", code, err)
	}
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb2: vrrp.Master})
	p.owner(p.lb2, vip)
	in, _ = p.instance(p.lb2)
	if in.LastTransition == nil || in.LastTransition.Reason != "the master resigned (priority 0)" {
		t.Fatalf("takeover was not caused by the resignation: %+v", in.LastTransition)
	}
	p.clientSees(p.lb2)
}

func TestVRRPNoPreempt(t *testing.T) {
	p := newPair(t)
	p.vrrpFile(p.lb1, 150, "preempt = false")
	p.vrrpFile(p.lb2, 100, "")
	p.start(p.lb2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb2: vrrp.Master})
	p.start(p.lb1)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Backup})
	// Ten master down intervals of the higher-priority node: it must stay
	// backup throughout.
	deadline := time.Now().Add(10 * 400 * time.Millisecond)
	for time.Now().Before(deadline) {
		in, err := p.instance(p.lb1)
		if err != nil || in.State != vrrp.Backup {
			t.Fatalf("nopreempt node: %v %v", in.State, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.owner(p.lb2, vip)
}

func TestVRRPLinkDownIsFault(t *testing.T) {
	p := newPair(t)
	p.vrrpFile(p.lb1, 150, "")
	p.vrrpFile(p.lb2, 100, "")
	p.start(p.lb1)
	p.start(p.lb2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})

	// The switch port goes down: lb1's eth0 loses carrier.
	p.sw.IP("link", "set", p.port1, "down")
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Fault, p.lb2: vrrp.Master})
	p.owner(p.lb2, vip)

	p.sw.IP("link", "set", p.port1, "up")
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
	p.owner(p.lb1, vip)
}

// partition drops VRRP on the switch; heal removes the rule.
func (p *pair) partition() {
	p.sw.MustRun("nft", "add table bridge partition; add chain bridge partition filter { type filter hook forward priority 0; }; add rule bridge partition filter ip protocol 112 drop")
}

func (p *pair) heal() { p.sw.MustRun("nft", "delete table bridge partition") }

func TestVRRPPartitionHeals(t *testing.T) {
	lab.Require(t, "nft")
	p := newPair(t)
	p.vrrpFile(p.lb1, 150, "")
	p.vrrpFile(p.lb2, 100, "")
	p.start(p.lb1)
	p.start(p.lb2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})

	p.partition()
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Master})
	if !hasAddr(p.lb1, vip) || !hasAddr(p.lb2, vip) {
		t.Fatal("during the partition both masters should hold the VIP")
	}

	// Point the client at the loser, as after a partition where it was
	// the last to answer ARP; the winner's GARP must correct it.
	p.client.MustRun("ip", "neigh", "replace", vip, "lladdr", mac(p.lb2), "dev", "eth0", "nud", "stale")
	p.heal()
	p.waitStates(2*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
	p.owner(p.lb1, vip)
	in, _ := p.instance(p.lb2)
	if in.LastTransition == nil || !strings.Contains(in.LastTransition.Reason, "has priority 150") {
		t.Fatalf("lb2 did not step down for the higher master: %+v", in.LastTransition)
	}
	p.clientSees(p.lb1) // the winner re-sent GARP when it heard the loser
}

func TestVRRPUnicast(t *testing.T) {
	lab.Require(t, "nft")
	p := newPair(t)
	// Multicast VRRP is dropped on the switch: only unicast gets through.
	p.sw.MustRun("nft", "add table bridge nomcast; add chain bridge nomcast filter { type filter hook forward priority 0; }; add rule bridge nomcast filter ip daddr 224.0.0.18 drop")
	p.vrrpFile(p.lb1, 150, `unicast_peer = ["192.0.2.12"]`)
	p.vrrpFile(p.lb2, 100, `unicast_peer = ["192.0.2.11"]`)
	p.start(p.lb1)
	p.start(p.lb2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
	p.owner(p.lb1, vip)
	p.procs[p.lb1].Kill()
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb2: vrrp.Master})
}

func TestVRRPIPv6(t *testing.T) {
	p := newPair(t)
	six := `virtual_ipaddress = ["2001:db8::100/64"]`
	p.vrrpFile(p.lb1, 150, six)
	p.vrrpFile(p.lb2, 100, six)
	p.start(p.lb1)
	p.start(p.lb2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
	p.owner(p.lb1, "2001:db8::100")
	in, _ := p.instance(p.lb2)
	if !strings.HasPrefix(in.Master, "fe80::") || in.AdvertsReceived == 0 {
		t.Fatalf("backup should follow the master's link-local address: %+v", in)
	}
	p.procs[p.lb1].Kill()
	p.sw.IP("link", "set", p.port1, "down")
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb2: vrrp.Master})
	// The dead host's namespace keeps its stale copy; the cable is cut.
	if !hasAddr(p.lb2, "2001:db8::100") {
		t.Fatal("new master lacks the VIP")
	}
	p.client.MustRun("ping", "-c", "1", "-W", "2", "2001:db8::100")
}

func TestVRRPNotify(t *testing.T) {
	p := newPair(t)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "notify.log")
	script := filepath.Join(dir, "notify.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$*\" >> "+logFile+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p.vrrpFile(p.lb1, 150, fmt.Sprintf(`notify_master = [%q, "master"]
notify_stop = [%q, "stop"]
notify = [%q]
notify_backup = ["/bin/sleep", "60"]
notify_timeout = "300ms"`, script, script, script))
	p.start(p.lb1)
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master})
	d := p.procs[p.lb1]
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := d.Wait(5 * time.Second); err != nil || code != 0 {
		t.Fatalf("SIGTERM: %d %v\n%s", code, err, d.Output())
	}
	b, _ := os.ReadFile(logFile)
	want := "INSTANCE VI_1 BACKUP 150\nmaster\nINSTANCE VI_1 MASTER 150\nstop\nINSTANCE VI_1 STOP 150\n"
	if string(b) != want {
		t.Fatalf("notify log:\n%s\nwant:\n%s\ndaemon:\n%s", b, want, d.Output())
	}
	// The slow notify_backup was killed and did not hold up the takeover.
	if !strings.Contains(d.Output(), "notify program timed out and was killed") {
		t.Fatalf("no timeout logged:\n%s", d.Output())
	}
}

func TestVRRPTrackInterface(t *testing.T) {
	for _, tc := range []struct {
		name    string
		track   string
		lb1When vrrp.State // lb1's state while eth1 is down
		lb1Prio uint8
	}{
		{"down means FAULT", `track_interface = ["eth1"]`, vrrp.Fault, 150},
		{"down lowers the priority", `track_interface = [{ interface = "eth1", weight = -60 }]`, vrrp.Backup, 90},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t)
			sw2 := p.lab.AddSwitch("sw2")
			port := sw2.Plug(p.lb1, "eth1", "198.51.100.11/24")
			p.vrrpFile(p.lb1, 150, tc.track)
			p.vrrpFile(p.lb2, 100, "")
			p.start(p.lb1)
			p.start(p.lb2)
			p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})

			sw2.IP("link", "set", port, "down")
			p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb1: tc.lb1When, p.lb2: vrrp.Master})
			p.owner(p.lb2, vip)
			if in, _ := p.instance(p.lb1); in.Priority != tc.lb1Prio {
				t.Fatalf("lb1 priority %d with eth1 down, want %d", in.Priority, tc.lb1Prio)
			}

			sw2.IP("link", "set", port, "up")
			p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
			p.owner(p.lb1, vip)
		})
	}
}

func TestVRRPv2Authentication(t *testing.T) {
	p := newPair(t)
	v2 := "version = 2\nadvert_int = \"1s\"\nauth_pass = "
	p.vrrpFile(p.lb1, 150, v2+`"secret"`)
	p.vrrpFile(p.lb2, 100, v2+`"guess"`)
	p.start(p.lb1)
	p.start(p.lb2)
	// Different passwords: neither accepts the other, both become master.
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Master})
	if in, _ := p.instance(p.lb2); in.Drops[vrrp.DropAuth] == 0 {
		t.Fatalf("lb2 should drop lb1's adverts for auth: %+v", in.Drops)
	}
	// The same password: lb2 follows lb1 after a reload.
	p.vrrpFile(p.lb2, 100, v2+`"secret"`)
	if out, err := exec.Command(directorctl, "--socket", p.sockets[p.lb2], "reload").CombinedOutput(); err != nil {
		t.Fatalf("reload: %v %s", err, out)
	}
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
	p.owner(p.lb1, vip)
	// The password is a secret: not in the running configuration's JSON.
	out, _ := exec.Command(directorctl, "--socket", p.sockets[p.lb2], "config").CombinedOutput()
	if strings.Contains(string(out), "secret") {
		t.Fatalf("auth_pass shown by directorctl config:\n%s", out)
	}
}

// TestVRRPReloadKeepsState: a reload that adds and then removes an
// instance leaves the unchanged one in its state, without a transition.
func TestVRRPReloadKeepsState(t *testing.T) {
	p := newPair(t)
	p.vrrpFile(p.lb1, 150, "")
	p.start(p.lb1)
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master})
	before, _ := p.instance(p.lb1)

	base, err := os.ReadFile(p.files[p.lb1])
	if err != nil {
		t.Fatal(err)
	}
	second := string(base) + `
[[vrrp_instance]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 52
priority = 150
advert_int = "100ms"
virtual_ipaddress = ["192.0.2.101/24"]
`
	reload := func(content string) {
		t.Helper()
		writeFile(t, p.files[p.lb1], content)
		if err := p.procs[p.lb1].Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	reload(second)
	if err := lab.Eventually(5*time.Second, func() error {
		if !hasAddr(p.lb1, "192.0.2.101") {
			return fmt.Errorf("VI_2's address not added")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	reload(string(base))
	if err := lab.Eventually(5*time.Second, func() error {
		if hasAddr(p.lb1, "192.0.2.101") {
			return fmt.Errorf("VI_2's address still there")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	after, err := p.instance(p.lb1)
	if err != nil {
		t.Fatal(err)
	}
	if after.State != vrrp.Master || after.Transitions != before.Transitions || *after.LastTransition != *before.LastTransition {
		t.Fatalf("VI_1 changed across reloads: before %+v after %+v", before.Info, after.Info)
	}
	if !hasAddr(p.lb1, vip) {
		t.Fatal("VI_1's address was touched")
	}
}

func TestVRRPPlannedFailover(t *testing.T) {
	p := newPair(t)
	p.vrrpFile(p.lb1, 150, "")
	p.vrrpFile(p.lb2, 100, "")
	p.start(p.lb1)
	p.start(p.lb2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})

	p.arpAnswers(p.lb1) // the client knows the VIP at lb1

	ctl := func(h *lab.Host, args ...string) (string, int) {
		out, errOut, code := run(t, directorctl, append([]string{"--socket", p.sockets[h]}, args...)...)
		return out + errOut, code
	}
	if out, code := ctl(p.lb2, "failover", "VI_1"); code != 1 || !strings.Contains(out, "VI_1 is BACKUP here, not MASTER") {
		t.Fatalf("failover on the backup: exit %d: %s", code, out)
	}
	if out, code := ctl(p.lb1, "failover", "VI_9"); code != 1 || !strings.Contains(out, `no VRRP instance "VI_9"`) {
		t.Fatalf("failover of an unknown instance: exit %d: %s", code, out)
	}
	out, code := ctl(p.lb1, "failover", "VI_1", "--hold", "2s")
	if code != 0 || !strings.Contains(out, "VI_1: sent priority 0 and is now BACKUP here; staying backup for 2s") {
		t.Fatalf("failover: exit %d: %s", code, out)
	}
	p.waitStates(2*time.Second, map[*lab.Host]vrrp.State{p.lb2: vrrp.Master, p.lb1: vrrp.Backup})
	p.owner(p.lb2, vip)
	in, _ := p.instance(p.lb2)
	if in.LastTransition.Reason != "the master resigned (priority 0)" {
		t.Fatalf("lb2 took over for another reason: %+v", in.LastTransition)
	}
	p.clientSees(p.lb2)
	// preempt is on: after the hold the higher priority takes it back.
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.lb1: vrrp.Master, p.lb2: vrrp.Backup})
	p.owner(p.lb1, vip)
}

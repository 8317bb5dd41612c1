package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/vrrp"
)

const vip = scene.VIP

// pair is pairlab's scene with test-failing helpers.
type pair struct {
	*scene.Pair
	t *testing.T
}

func newPair(t *testing.T) *pair {
	return &pair{Pair: scene.NewPair(lab.New(t), t.TempDir(), scene.Binaries{Directord: directord, Directorctl: directorctl}), t: t}
}

func (p *pair) waitStates(timeout time.Duration, want map[*lab.Host]vrrp.State) {
	p.t.Helper()
	if err := p.WaitStates(timeout, want); err != nil {
		p.t.Fatal(err)
	}
}

// elect starts lb1 at priority 150 and lb2 at 100, with extra instance
// lines each, and waits for lb1 to be master and lb2 its backup.
func (p *pair) elect(extra1, extra2 string) {
	p.t.Helper()
	p.WriteConfig(p.LB1, 150, extra1)
	p.WriteConfig(p.LB2, 100, extra2)
	p.Start(p.LB1)
	p.Start(p.LB2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
}

// owner checks that exactly h holds addr among the directors.
func (p *pair) owner(h *lab.Host, addr string) {
	p.t.Helper()
	if err := p.WaitOwner(h, addr, 2*time.Second); err != nil {
		p.t.Fatal(err)
	}
}

// clientSees checks that the client learnt the VIP at h from a gratuitous
// ARP (its neighbour entry changes without it asking), then that the VIP
// answers ping.
func (p *pair) clientSees(h *lab.Host) {
	p.t.Helper()
	want := scene.MAC(h)
	if err := lab.Eventually(3*time.Second, func() error {
		if got := p.Neighbour(vip); got != want {
			return fmt.Errorf("client's neighbour entry for %s is %q, want %s's %s", vip, got, h.Name, want)
		}
		return nil
	}); err != nil {
		p.t.Fatal(err)
	}
	p.Client.MustRun("ping", "-c", "1", "-W", "2", vip)
}

// arpAnswers checks that, asked afresh, only h answers ARP for the VIP.
func (p *pair) arpAnswers(h *lab.Host) {
	p.t.Helper()
	p.Client.MustRun("ip", "neigh", "flush", "dev", "eth0")
	p.Client.MustRun("ping", "-c", "1", "-W", "2", vip)
	if got, want := p.Neighbour(vip), scene.MAC(h); got != want {
		p.t.Fatalf("ARP for %s answered by %q, want %s's %s", vip, got, h.Name, want)
	}
}

func TestVRRPFailover(t *testing.T) {
	lab.Require(t, "ping")
	p := newPair(t)
	t.Log("election by priority")
	p.elect("", "")
	p.owner(p.LB1, vip)
	p.arpAnswers(p.LB1)
	in, err := p.Instance(p.LB2)
	if err != nil || in.Master != "192.0.2.11" || in.AdvertsReceived == 0 {
		t.Fatalf("backup's view: %+v %v", in, err)
	}

	t.Log("the master's host dies (kill -9, cable cut): the backup takes over and answers ARP")
	p.Crash(p.LB1)
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
	if !scene.HasAddr(p.LB2, vip) {
		t.Fatal("new master lacks the VIP")
	}
	p.clientSees(p.LB2)
	p.arpAnswers(p.LB2)

	t.Log("the old master comes back: it drops its stale VIP and preempts")
	p.Revive(p.LB1)
	p.Start(p.LB1)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	p.owner(p.LB1, vip)
	p.clientSees(p.LB1)

	t.Log("graceful stop: the master resigns with priority 0")
	if err := p.Procs[p.LB1].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Procs[p.LB1].Wait(5 * time.Second); err != nil || code != 0 {
		t.Fatalf("SIGTERM: %d %v", code, err)
	}
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
	p.owner(p.LB2, vip)
	in, _ = p.Instance(p.LB2)
	if in.LastTransition == nil || in.LastTransition.Reason != "the master resigned (priority 0)" {
		t.Fatalf("takeover was not caused by the resignation: %+v", in.LastTransition)
	}
	p.clientSees(p.LB2)
}

func TestVRRPNoPreempt(t *testing.T) {
	p := newPair(t)
	p.WriteConfig(p.LB1, 150, "preempt = false")
	p.WriteConfig(p.LB2, 100, "")
	p.Start(p.LB2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
	p.Start(p.LB1)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Backup})
	// Ten master down intervals of the higher-priority node: it must stay
	// backup throughout.
	deadline := time.Now().Add(10 * 400 * time.Millisecond)
	for time.Now().Before(deadline) {
		in, err := p.Instance(p.LB1)
		if err != nil || in.State != api.StateBackup {
			t.Fatalf("nopreempt node: %v %v", in.State, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.owner(p.LB2, vip)
}

func TestVRRPLinkDownIsFault(t *testing.T) {
	p := newPair(t)
	p.elect("", "")

	// The switch port goes down: lb1's eth0 loses carrier.
	p.Switch.IP("link", "set", p.Port1, "down")
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Fault, p.LB2: vrrp.Master})
	p.owner(p.LB2, vip)

	p.Switch.IP("link", "set", p.Port1, "up")
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	p.owner(p.LB1, vip)
}

// partition drops VRRP on the switch; heal removes the rule.
func (p *pair) partition() {
	p.Switch.MustRun("nft", "add table bridge partition; add chain bridge partition filter { type filter hook forward priority 0; }; add rule bridge partition filter ip protocol 112 drop")
}

func (p *pair) heal() { p.Switch.MustRun("nft", "delete table bridge partition") }

func TestVRRPPartitionHeals(t *testing.T) {
	lab.Require(t, "nft")
	p := newPair(t)
	p.elect("", "")

	p.partition()
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Master})
	if !scene.HasAddr(p.LB1, vip) || !scene.HasAddr(p.LB2, vip) {
		t.Fatal("during the partition both masters should hold the VIP")
	}

	// Point the client at the loser, as after a partition where it was
	// the last to answer ARP; the winner's GARP must correct it.
	p.Client.MustRun("ip", "neigh", "replace", vip, "lladdr", scene.MAC(p.LB2), "dev", "eth0", "nud", "stale")
	p.heal()
	p.waitStates(2*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	p.owner(p.LB1, vip)
	in, _ := p.Instance(p.LB2)
	if in.LastTransition == nil || !strings.Contains(in.LastTransition.Reason, "has priority 150") {
		t.Fatalf("lb2 did not step down for the higher master: %+v", in.LastTransition)
	}
	p.clientSees(p.LB1) // the winner re-sent GARP when it heard the loser
}

func TestVRRPUnicast(t *testing.T) {
	lab.Require(t, "nft")
	p := newPair(t)
	// Multicast VRRP is dropped on the switch: only unicast gets through.
	p.Switch.MustRun("nft", "add table bridge nomcast; add chain bridge nomcast filter { type filter hook forward priority 0; }; add rule bridge nomcast filter ip daddr 224.0.0.18 drop")
	p.elect(`unicast_peer = ["192.0.2.12"]`, `unicast_peer = ["192.0.2.11"]`)
	p.owner(p.LB1, vip)
	p.Procs[p.LB1].Kill()
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
}

func TestVRRPIPv6(t *testing.T) {
	p := newPair(t)
	six := `virtual_ipaddress = ["fe80::100/64", "2001:db8::100/64"]` // link-local first (RFC 9568 §5.2.9)
	p.elect(six, six)
	p.owner(p.LB1, "2001:db8::100")
	in, _ := p.Instance(p.LB2)
	if !strings.HasPrefix(in.Master, "fe80::") || in.AdvertsReceived == 0 {
		t.Fatalf("backup should follow the master's link-local address: %+v", in)
	}
	// The client knows the VIP at lb1.
	p.Client.MustRun("ping", "-c", "1", "-W", "2", "2001:db8::100")
	if got := p.Neighbour("2001:db8::100"); got != scene.MAC(p.LB1) {
		t.Fatalf("client's neighbour entry %q, want lb1's %s", got, scene.MAC(p.LB1))
	}
	// lb2 routes IPv6, as a director does: its advertisements say so
	// (RFC 9568 §6.4), and the client marks the neighbour a router.
	if err := p.LB2.Sysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	p.Crash(p.LB1)
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
	// The dead host's namespace keeps its stale copy; the cable is cut.
	if !scene.HasAddr(p.LB2, "2001:db8::100") {
		t.Fatal("new master lacks the VIP")
	}
	// The new master's unsolicited neighbour advertisement re-points the
	// client without it asking.
	if err := lab.Eventually(3*time.Second, func() error {
		if got, want := p.Neighbour("2001:db8::100"), scene.MAC(p.LB2); got != want {
			return fmt.Errorf("client's neighbour entry %q, want lb2's %s", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out := p.Client.MustRun("ip", "-6", "neigh", "show", "2001:db8::100"); !strings.Contains(out, " router") {
		t.Fatalf("the client does not take lb2 for a router: %s", out)
	}
	p.Client.MustRun("ping", "-c", "1", "-W", "2", "2001:db8::100")
}

func TestVRRPNotify(t *testing.T) {
	p := newPair(t)
	dir := t.TempDir()
	logFile := filepath.Join(dir, "notify.log")
	script := filepath.Join(dir, "notify.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$*\" >> "+logFile+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	p.WriteConfig(p.LB1, 150, fmt.Sprintf(`notify_master = [%q, "master"]
notify_stop = [%q, "stop"]
notify = [%q]
notify_backup = ["/bin/sleep", "60"]
notify_timeout = "300ms"`, script, script, script))
	p.Start(p.LB1)
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
	d := p.Procs[p.LB1]
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
			sw2 := p.Lab.AddSwitch("sw2")
			port := sw2.Plug(p.LB1, "eth1", "198.51.100.11/24")
			p.elect(tc.track, "")

			sw2.IP("link", "set", port, "down")
			p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: tc.lb1When, p.LB2: vrrp.Master})
			p.owner(p.LB2, vip)
			if in, _ := p.Instance(p.LB1); in.Priority != tc.lb1Prio {
				t.Fatalf("lb1 priority %d with eth1 down, want %d", in.Priority, tc.lb1Prio)
			}

			sw2.IP("link", "set", port, "up")
			p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
			p.owner(p.LB1, vip)
		})
	}
}

func TestVRRPv2Authentication(t *testing.T) {
	p := newPair(t)
	v2 := "version = 2\nadvert_int = \"1s\"\nauth_pass = "
	p.WriteConfig(p.LB1, 150, v2+`"secret"`)
	p.WriteConfig(p.LB2, 100, v2+`"guess"`)
	p.Start(p.LB1)
	p.Start(p.LB2)
	// Different passwords: neither accepts the other, both become master.
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Master})
	if in, _ := p.Instance(p.LB2); in.Drops[string(vrrp.DropAuth)] == 0 {
		t.Fatalf("lb2 should drop lb1's adverts for auth: %+v", in.Drops)
	}
	// The same password: lb2 follows lb1 after a reload.
	p.WriteConfig(p.LB2, 100, v2+`"secret"`)
	if out, err := exec.Command(directorctl, "--socket", p.Sockets[p.LB2], "reload").CombinedOutput(); err != nil {
		t.Fatalf("reload: %v %s", err, out)
	}
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	p.owner(p.LB1, vip)
	// The password is a secret: not in the running configuration's JSON.
	out, _ := exec.Command(directorctl, "--socket", p.Sockets[p.LB2], "config").CombinedOutput()
	if strings.Contains(string(out), "secret") {
		t.Fatalf("auth_pass shown by directorctl config:\n%s", out)
	}
}

// TestVRRPReloadKeepsState: a reload that adds and then removes an
// instance leaves the unchanged one in its state, without a transition.
func TestVRRPReloadKeepsState(t *testing.T) {
	p := newPair(t)
	p.WriteConfig(p.LB1, 150, "")
	p.Start(p.LB1)
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
	before, _ := p.Instance(p.LB1)

	base, err := os.ReadFile(p.Files[p.LB1])
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
		writeFile(t, p.Files[p.LB1], content)
		if err := p.Procs[p.LB1].Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	reload(second)
	if err := lab.Eventually(5*time.Second, func() error {
		if !scene.HasAddr(p.LB1, "192.0.2.101") {
			return fmt.Errorf("VI_2's address not added")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	reload(string(base))
	if err := lab.Eventually(5*time.Second, func() error {
		if scene.HasAddr(p.LB1, "192.0.2.101") {
			return fmt.Errorf("VI_2's address still there")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// A new priority and tracking are taken in place: still MASTER, with
	// no transition.
	reload(strings.Replace(string(base), "priority = 150", "priority = 200\ntrack_interface = [\"lo\"]", 1))
	var after api.VRRPInstance
	if err := lab.Eventually(5*time.Second, func() (err error) {
		after, err = p.Instance(p.LB1)
		if err == nil && after.Priority != 200 {
			err = fmt.Errorf("priority %d, want 200", after.Priority)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if after.State != api.StateMaster || after.Transitions != before.Transitions || *after.LastTransition != *before.LastTransition {
		t.Fatalf("VI_1 changed across reloads: before %+v after %+v", before, after)
	}
	if !strings.Contains(p.Procs[p.LB1].Output(), "reconfigured_in_place=[VI_1]") {
		t.Fatalf("the priority change was not applied in place:\n%s", p.Procs[p.LB1].Output())
	}
	if !scene.HasAddr(p.LB1, vip) {
		t.Fatal("VI_1's address was touched")
	}
}

func TestVRRPPlannedFailover(t *testing.T) {
	p := newPair(t)
	p.elect("", "")

	p.arpAnswers(p.LB1) // the client knows the VIP at lb1

	ctl := func(h *lab.Host, args ...string) (string, int) {
		out, errOut, code := run(t, directorctl, append([]string{"--socket", p.Sockets[h]}, args...)...)
		return out + errOut, code
	}
	if out, code := ctl(p.LB2, "failover", "VI_1"); code != 1 || !strings.Contains(out, "VI_1 is BACKUP here, not MASTER") {
		t.Fatalf("failover on the backup: exit %d: %s", code, out)
	}
	if out, code := ctl(p.LB1, "failover", "VI_9"); code != 1 || !strings.Contains(out, `no VRRP instance "VI_9"`) {
		t.Fatalf("failover of an unknown instance: exit %d: %s", code, out)
	}
	out, code := ctl(p.LB1, "failover", "VI_1", "--hold", "2s")
	if code != 0 || !strings.Contains(out, "VI_1: sent priority 0 and is now BACKUP here; staying backup for 2s") {
		t.Fatalf("failover: exit %d: %s", code, out)
	}
	p.waitStates(2*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master, p.LB1: vrrp.Backup})
	p.owner(p.LB2, vip)
	in, _ := p.Instance(p.LB2)
	if in.LastTransition.Reason != "the master resigned (priority 0)" {
		t.Fatalf("lb2 took over for another reason: %+v", in.LastTransition)
	}
	p.clientSees(p.LB2)
	// preempt is on: after the hold the higher priority takes it back.
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	p.owner(p.LB1, vip)
}

// TestVRRPInterfaceAppearsLater: an instance on a link that does not exist
// yet waits in FAULT and starts when the link appears.
func TestVRRPInterfaceAppearsLater(t *testing.T) {
	p := newPair(t)
	p.WriteConfig(p.LB1, 150, `interface = "eth1"`)
	// The file names eth1 twice now; keep the extra one.
	b, err := os.ReadFile(p.Files[p.LB1])
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.Files[p.LB1], strings.Replace(string(b), "interface = \"eth0\"\n", "", 1))
	p.Start(p.LB1)
	if err := lab.Eventually(5*time.Second, func() error {
		in, err := p.Instance(p.LB1)
		if err == nil && (in.State != api.StateFault || !strings.Contains(in.Error, "eth1")) {
			err = fmt.Errorf("state %s error %q, want FAULT naming eth1", in.State, in.Error)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	sw2 := p.Lab.AddSwitch("sw2")
	sw2.Plug(p.LB1, "eth1", "198.51.100.11/24")
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
	if in, _ := p.Instance(p.LB1); in.Error != "" {
		t.Fatalf("error kept after recovery: %q", in.Error)
	}
}

// TestVRRPTrackScript: a vrrp_script that starts failing moves the master
// to FAULT (weight 0) or lowers its priority (weight), after fall failures;
// it comes back after rise successes.
func TestVRRPTrackScript(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weight  string
		lb1When vrrp.State
		lb1Prio uint8
	}{
		{"failure means FAULT", "", vrrp.Fault, 150},
		{"failure lowers the priority", "weight = -60", vrrp.Backup, 90},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t)
			flag := filepath.Join(t.TempDir(), "healthy")
			writeFile(t, flag, "")
			// The check passes while the flag file exists.
			// The instance's own lines come first: [[vrrp_script]] opens a table.
			p.elect(`advert_int = "100ms"
virtual_ipaddress = ["`+vip+`/24"]
track_script = ["chk"]
[[vrrp_script]]
name = "chk"
script = ["/usr/bin/test", "-e", "`+flag+`"]
interval = "50ms"
rise = 2
fall = 2
`+tc.weight, "")
			if err := os.Remove(flag); err != nil {
				t.Fatal(err)
			}
			p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: tc.lb1When, p.LB2: vrrp.Master})
			p.owner(p.LB2, vip)
			if in, _ := p.Instance(p.LB1); in.Priority != tc.lb1Prio {
				t.Fatalf("lb1 priority %d while the script fails, want %d", in.Priority, tc.lb1Prio)
			}
			out, _, _ := run(t, directorctl, "--socket", p.Sockets[p.LB1], "status")
			if !strings.Contains(out, "chk          FAILED") {
				t.Errorf("status does not show the failed script:\n%s", out)
			}
			writeFile(t, flag, "")
			p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
			p.owner(p.LB1, vip)
		})
	}
}

// TestVRRPSyncGroup: an outside VIP (eth0) and an inside VIP (eth1) in one
// sync group move together: the inside link failing on the master moves
// both to the backup, and both come back with it.
func TestVRRPSyncGroup(t *testing.T) {
	p := newPair(t)
	inside := p.Lab.AddSwitch("inside")
	port := inside.Plug(p.LB1, "eth1", "198.51.100.11/24")
	inside.Plug(p.LB2, "eth1", "198.51.100.12/24")
	const insideVIP = "198.51.100.1"
	second := func(prio int) string {
		return fmt.Sprintf(`advert_int = "100ms"
virtual_ipaddress = ["%s/24"]

[[vrrp_instance]]
name = "VI_2"
interface = "eth1"
virtual_router_id = 52
priority = %d
advert_int = "100ms"
virtual_ipaddress = ["%s/24"]

[[vrrp_sync_group]]
name = "G"
group = ["VI_1", "VI_2"]`, vip, prio, insideVIP)
	}
	p.WriteConfig(p.LB1, 150, second(150))
	p.WriteConfig(p.LB2, 100, second(100))
	p.Start(p.LB1)
	p.Start(p.LB2)
	both := func(h *lab.Host) error {
		return lab.Eventually(5*time.Second, func() error {
			for _, d := range p.Directors() {
				for _, addr := range []string{vip, insideVIP} {
					iface := "eth0"
					if addr == insideVIP {
						iface = "eth1"
					}
					out, _ := d.Run("ip", "-o", "addr", "show", "dev", iface)
					if has := strings.Contains(out, " "+addr+"/"); has != (d == h) {
						return fmt.Errorf("%s holds %s: %v", d.Name, addr, has)
					}
				}
			}
			return nil
		})
	}
	if err := both(p.LB1); err != nil {
		t.Fatal(err)
	}

	// Only the inside link fails, yet the outside VIP moves too.
	inside.IP("link", "set", port, "down")
	if err := both(p.LB2); err != nil {
		t.Fatal(err)
	}
	out, _, _ := run(t, directorctl, "--socket", p.Sockets[p.LB1], "status", "--json")
	if !strings.Contains(out, "sync group G: VI_2 is FAULT (eth1 is down)") {
		t.Fatalf("VI_1 on lb1 is not in FAULT for its sync group:\n%s", out)
	}

	inside.IP("link", "set", port, "up")
	if err := both(p.LB1); err != nil {
		t.Fatal(err)
	}
}

// TestVRRPReloadAddsVIP: a reload that adds a virtual address on both
// directors moves nothing: the master takes the new address in place and
// announces it, and neither side makes a transition (on the code before
// it, the master restarted the instance: it resigned, the backup took
// over, the master preempted back).
func TestVRRPReloadAddsVIP(t *testing.T) {
	p := newPair(t)
	p.elect("", "")
	before := map[*lab.Host]uint64{}
	for _, h := range p.Directors() {
		in, err := p.Instance(h)
		if err != nil {
			t.Fatal(err)
		}
		before[h] = in.Transitions
	}
	two := `virtual_ipaddress = ["192.0.2.100/24", "192.0.2.101/24"]`
	p.WriteConfig(p.LB1, 150, two)
	p.WriteConfig(p.LB2, 100, two)
	for _, h := range p.Directors() {
		if err := p.Procs[h].Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	p.owner(p.LB1, "192.0.2.101")
	p.Client.MustRun("ping", "-c", "1", "-W", "2", "192.0.2.101")
	// Ten adverts later, still nobody moved.
	if err := lab.Throughout(time.Second, func() error {
		for _, h := range p.Directors() {
			in, err := p.Instance(h)
			if err != nil {
				return err
			}
			if in.Transitions != before[h] || len(in.VIPs) != 2 {
				return fmt.Errorf("%s: %d transitions (was %d), VIPs %v", h.Name, in.Transitions, before[h], in.VIPs)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p.owner(p.LB1, "192.0.2.100")
}

// TestVRRPAddressOwner: lb1 owns 192.0.2.100, the only address of its
// interface, at priority 255. It becomes MASTER sending from that address
// (on main it waited in FAULT for a source that was not a VIP), and when
// it stops the address stays: it is the host's, not directord's.
func TestVRRPAddressOwner(t *testing.T) {
	p := newPair(t)
	p.LB1.IP("addr", "del", "192.0.2.11/24", "dev", "eth0")
	p.LB1.AddAddr("eth0", "192.0.2.100/24")
	p.WriteConfig(p.LB1, 255, "")
	p.WriteConfig(p.LB2, 100, "")
	p.Start(p.LB1)
	p.Start(p.LB2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	if in, err := p.Instance(p.LB2); err != nil || in.Master != "192.0.2.100" {
		t.Fatalf("the backup follows %+v, %v", in, err)
	}
	if err := p.Procs[p.LB1].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Procs[p.LB1].Wait(10 * time.Second); err != nil || code != 0 {
		t.Fatalf("lb1: exit %d, %v", code, err)
	}
	if !scene.HasAddr(p.LB1, "192.0.2.100") {
		t.Fatal("stopping the owner took the host's own address away")
	}
}

// neverTwoMasters checks, for d, that lb1 and lb2 are never both MASTER.
func (p *pair) neverTwoMasters(d time.Duration) {
	p.t.Helper()
	if err := lab.Throughout(d, func() error {
		a, err := p.Instance(p.LB1)
		if err != nil {
			return err
		}
		b, err := p.Instance(p.LB2)
		if err != nil {
			return err
		}
		if a.State == "MASTER" && b.State == "MASTER" {
			return errors.New("lb1 and lb2 are both MASTER")
		}
		return nil
	}); err != nil {
		p.t.Fatal(err)
	}
}

// TestVRRPRecreatedInterface: the backup's interface is deleted and made
// again (a new index). Its socket is opened again: within 3 × advert_int
// it is BACKUP and it stays so. On main its socket stayed bound to the
// old interface: FAULT, BACKUP, then MASTER beside lb1.
func TestVRRPRecreatedInterface(t *testing.T) {
	p := newPair(t)
	p.elect("", "")
	p.LB2.IP("link", "del", "eth0")
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Fault})
	p.Switch.Plug(p.LB2, "eth0", "192.0.2.12/24")
	p.waitStates(300*time.Millisecond+2*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Backup}) // link up, then 3 adverts
	p.neverTwoMasters(3 * time.Second)
	p.waitStates(time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	if in, err := p.Instance(p.LB2); err != nil || in.Master != "192.0.2.11" {
		t.Fatalf("lb2 follows %+v, %v", in, err)
	}
}

// TestVRRPRenumberedMaster: the master's address changes. It follows its
// new address (FAULT for the moment it has none, its VIP leaving with it)
// and is the only master again, advertising from the new address. On main
// it stayed MASTER with the VIP while its adverts failed ("network is
// unreachable"), and the backup took over: two masters.
func TestVRRPRenumberedMaster(t *testing.T) {
	p := newPair(t)
	p.elect("", "")
	p.LB1.IP("addr", "del", "192.0.2.11/24", "dev", "eth0")
	p.LB1.AddAddr("eth0", "192.0.2.21/24")
	if err := lab.Eventually(5*time.Second, func() error {
		in, err := p.Instance(p.LB2)
		if err != nil || in.State != "BACKUP" || in.Master != "192.0.2.21" {
			return fmt.Errorf("lb2 %+v, %v", in, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p.neverTwoMasters(3 * time.Second)
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	p.owner(p.LB1, vip)
	if in, err := p.Instance(p.LB1); err != nil || in.Source != "192.0.2.21" {
		t.Fatalf("lb1 sends from %+v, %v", in, err)
	}
}

// TestVRRPManyIPv6VIPs: 100 IPv6 virtual addresses elect one master: the
// adverts carry the 90 that fit a 1500-byte link and the master holds all
// 100. On main the advert of 1,608 bytes was truncated by the peer, which
// dropped it and became a second master.
func TestVRRPManyIPv6VIPs(t *testing.T) {
	p := newPair(t)
	vips := []string{`"fe80::100/64"`} // link-local first (RFC 9568 §5.2.9)
	for i := range 99 {
		vips = append(vips, fmt.Sprintf("%q", fmt.Sprintf("2001:db8::%x/64", 0x100+i)))
	}
	line := "virtual_ipaddress = [" + strings.Join(vips, ", ") + "]"
	p.elect(line, line)
	p.neverTwoMasters(2 * time.Second)
	for _, a := range []string{"fe80::100", "2001:db8::162"} {
		p.owner(p.LB1, a)
	}
	if in, err := p.Instance(p.LB2); err != nil || len(in.Drops) != 0 || in.AdvertsReceived == 0 {
		t.Fatalf("the backup: %+v, %v", in, err)
	}
}

// TestVRRPNoAccept: a master with no_accept does not answer for its VIP
// (a ping to it gets no reply), as keepalived's no_accept; with accept
// (the default) the new master answers. When the instance stops, the
// refusal goes with it.
func TestVRRPNoAccept(t *testing.T) {
	lab.Require(t, "nft")
	p := newPair(t)
	p.elect("no_accept = true", "")
	if out, err := p.Client.Run("ping", "-c", "1", "-W", "1", vip); err == nil {
		t.Fatalf("the no_accept master answered a ping to its VIP:\n%s", out)
	}
	if out := p.LB1.MustRun("nft", "list", "table", "inet", "directord_vrrp"); !strings.Contains(out, "192.0.2.100") {
		t.Fatalf("lb1's refusal table:\n%s", out)
	}
	if err := p.Procs[p.LB1].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := p.Procs[p.LB1].Wait(10 * time.Second); err != nil || code != 0 {
		t.Fatalf("lb1: exit %d, %v", code, err)
	}
	if out, err := p.LB1.Run("nft", "list", "table", "inet", "directord_vrrp"); err == nil {
		t.Fatalf("the refusal outlived the instance:\n%s", out)
	}
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
	p.Client.MustRun("ping", "-c", "1", "-W", "2", vip)
}

// TestVRRPRealtime: with [node] realtime_priority every thread of the
// process runs under SCHED_RR at that priority (keepalived's
// vrrp_rt_priority, which covers its whole VRRP process), and the
// election goes on as usual.
func TestVRRPRealtime(t *testing.T) {
	p := newPair(t)
	p.Realtime = 10
	p.WriteConfig(p.LB1, 150, "")
	p.Start(p.LB1)
	p.WriteConfig(p.LB2, 100, "")
	p.Start(p.LB2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	// /proc/PID/task/TID/stat: field 40 is rt_priority, 41 the policy
	// (2 is SCHED_RR).
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", p.Procs[p.LB1].Pid()))
	if err != nil {
		t.Fatal(err)
	}
	rr := 0
	for _, task := range tasks {
		b, err := os.ReadFile(task)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		if len(f) > 38 && f[37] == "10" && f[38] == "2" { // fields 40 and 41, counted after the name
			rr++
		}
	}
	// Every thread: the one that takes an advert from the poller may be
	// any of them.
	if len(tasks) < 2 || rr != len(tasks) {
		t.Fatalf("%d SCHED_RR threads at priority 10 among %d", rr, len(tasks))
	}
}

// TestVRRPReadPending: the raw socket hands over an advert already in it
// without waiting, and says so when it holds none (what a backup reads
// before it declares its master dead).
func TestVRRPReadPending(t *testing.T) {
	p := newPair(t)
	var rx, tx vrrp.Conn
	if err := p.LB2.Do(func() (err error) { rx, err = vrrp.ListenIPv4("eth0"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rx.Close() })
	if err := p.LB1.Do(func() (err error) { tx, err = vrrp.ListenIPv4("eth0"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Close() })
	pr, ok := rx.(vrrp.PendingReader)
	if !ok {
		t.Fatalf("%T reads no pending adverts", rx)
	}
	buf := make([]byte, 1500)
	if _, _, _, _, ok, err := pr.ReadPending(buf); ok || err != nil {
		t.Fatalf("an empty socket: ok %v, err %v", ok, err)
	}
	src := netip.MustParseAddr("192.0.2.11")
	adv := (&vrrp.Advert{Version: 3, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{netip.MustParseAddr(scene.VIP)}}).Marshal(src, vrrp.GroupIPv4, true)
	if err := tx.WriteTo(adv, src, vrrp.GroupIPv4); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		n, from, dst, ttl, ok, err := pr.ReadPending(buf)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if from != src || dst != vrrp.GroupIPv4 || ttl != 255 || !bytes.Equal(buf[:n], adv) {
				t.Fatalf("read %d bytes from %s to %s TTL %d", n, from, dst, ttl)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the advert sent never showed as pending")
		}
	}
	if _, _, _, _, ok, _ := pr.ReadPending(buf); ok {
		t.Fatal("the one advert was read twice")
	}
	// Beside a reader waiting in ReadFrom (the group's read loop), it
	// still answers at once.
	go rx.ReadFrom(make([]byte, 1500))
	time.Sleep(50 * time.Millisecond) // let the reader wait first: what this checks
	answered := make(chan struct{})
	go func() {
		pr.ReadPending(make([]byte, 1500))
		close(answered)
	}()
	select {
	case <-answered:
	case <-time.After(5 * time.Second):
		t.Fatal("ReadPending waits behind a reader in ReadFrom")
	}
}

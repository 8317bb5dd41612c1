package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/vrrp"
)

// frr is FRR's zebra and vrrpd on one director of a pair: a second VRRP
// implementation besides keepalived, which always uses a VMAC.
type frr struct {
	t     *testing.T
	h     *lab.Host
	dir   string
	vrrpd *lab.Process
}

// startFRR sets the host up as FRR's documentation asks (a bridge-mode
// macvlan with the virtual MAC holding the VIP, the parent leaving ARP for
// it alone) and runs zebra and vrrpd with one virtual router, VRID 51.
func startFRR(t *testing.T, h *lab.Host, prio, version int, interval time.Duration) *frr {
	t.Helper()
	// vrrpd runs as the frr user: its directory must be reachable.
	dir, err := os.MkdirTemp("", "directord-frr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Run("ip", "link", "show", "vrrp4-51"); err != nil {
		h.MustRun("ip", "link", "add", "vrrp4-51", "link", "eth0", "type", "macvlan", "mode", "bridge")
		h.MustRun("ip", "link", "set", "dev", "vrrp4-51", "address", vmacOf51)
		h.MustRun("ip", "addr", "add", vip+"/24", "dev", "vrrp4-51")
		h.MustRun("ip", "link", "set", "vrrp4-51", "up")
		for _, s := range []string{"net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2"} {
			h.MustRun("sysctl", "-q", "-w", s)
		}
	}
	conf := fmt.Sprintf("hostname %s\ninterface eth0\n vrrp 51 version %d\n vrrp 51 priority %d\n vrrp 51 advertisement-interval %d\n vrrp 51 ip %s\n",
		h.Name, version, prio, interval.Milliseconds(), vip)
	for name, body := range map[string]string{"zebra.conf": "hostname " + h.Name + "\n", "vrrpd.conf": conf} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := &frr{t: t, h: h, dir: dir}
	daemon := func(name string) *lab.Process {
		return h.Start("/usr/lib/frr/"+name, "-f", filepath.Join(dir, name+".conf"), "-i", filepath.Join(dir, name+".pid"),
			"-z", filepath.Join(dir, "zserv.api"), "--vty_socket", dir, "-u", "frr", "-g", "frr", "--log", "stdout")
	}
	zebra := daemon("zebra")
	if err := lab.Eventually(10*time.Second, func() error {
		_, err := os.Stat(filepath.Join(dir, "zserv.api"))
		return err
	}); err != nil {
		t.Fatalf("zebra: %v\n%s", err, zebra.Output())
	}
	f.vrrpd = daemon("vrrpd")
	return f
}

// waitState waits for vrrpd to log its n-th entry into state ("Master",
// "Backup").
func (f *frr) waitState(state string, n int, timeout time.Duration) {
	f.t.Helper()
	if err := lab.Eventually(timeout, func() error {
		if c := strings.Count(f.vrrpd.Output(), "[IPv4] "); c == 0 || f.entered(state) < n {
			return fmt.Errorf("vrrpd on %s has entered %s %d times, want %d", f.h.Name, state, f.entered(state), n)
		}
		return nil
	}); err != nil {
		f.t.Fatalf("%v\n%s", err, f.vrrpd.Output())
	}
}

func (f *frr) entered(state string) int { return strings.Count(f.vrrpd.Output(), "-> "+state) }

// TestFRRInterop runs directord (use_vmac) against FRR's vrrpd, VRRP v3
// and v2, each as master and as backup, failing over both ways.
func TestFRRInterop(t *testing.T) {
	lab.Require(t, "vtysh", "sysctl")
	for _, tc := range []struct {
		version  int
		interval time.Duration
	}{{3, 100 * time.Millisecond}, {2, time.Second}} {
		wait := 5*tc.interval + 10*time.Second
		extra := fmt.Sprintf("use_vmac = true\nversion = %d\nadvert_int = %q", tc.version, tc.interval)

		t.Run(fmt.Sprintf("v%d FRR master, directord backup", tc.version), func(t *testing.T) {
			p := newPair(t)
			f := startFRR(t, p.LB1, 150, tc.version, tc.interval)
			f.waitState("Master", 1, wait)
			p.WriteConfig(p.LB2, 100, extra)
			p.Start(p.LB2)
			p.waitStates(wait, map[*lab.Host]vrrp.State{p.LB2: vrrp.Backup})
			in, _ := p.Instance(p.LB2)
			if in.Master != "192.0.2.11" || in.MasterPriority != 150 || len(in.Drops) != 0 {
				t.Fatalf("directord's view of the FRR master: %+v", in)
			}
			p.arpAnswersMAC(vmacOf51)

			// FRR's host dies: directord takes over, at the same MAC.
			p.Crash(p.LB1)
			p.waitStates(wait, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
			if got := p.Neighbour(vip); got != vmacOf51 {
				t.Fatalf("client's entry for the VIP is %q after failover", got)
			}
			pingOK(t, p)

			// FRR comes back and preempts.
			p.Revive(p.LB1)
			f = startFRR(t, p.LB1, 150, tc.version, tc.interval)
			f.waitState("Master", 1, 2*wait)
			p.waitStates(wait, map[*lab.Host]vrrp.State{p.LB2: vrrp.Backup})
			if scene.HasAddr(p.LB2, vip) {
				t.Fatal("directord still holds the VIP as backup")
			}
			pingOK(t, p)
		})

		t.Run(fmt.Sprintf("v%d directord master, FRR backup", tc.version), func(t *testing.T) {
			p := newPair(t)
			p.WriteConfig(p.LB1, 150, extra)
			p.Start(p.LB1)
			p.waitStates(wait, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
			f := startFRR(t, p.LB2, 100, tc.version, tc.interval)
			f.waitState("Backup", 1, wait)
			// FRR hears us: it stays backup over more than its master
			// down interval.
			if err := lab.Throughout(5*tc.interval+time.Second, func() error {
				if f.entered("Master") > 0 {
					return fmt.Errorf("vrrpd took over from a live directord master")
				}
				return nil
			}); err != nil {
				t.Fatalf("%v\n%s", err, f.vrrpd.Output())
			}
			pingOK(t, p)

			p.Crash(p.LB1)
			f.waitState("Master", 1, wait)
			pingOK(t, p)

			p.Revive(p.LB1)
			p.Start(p.LB1)
			p.waitStates(wait, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
			f.waitState("Backup", 2, wait)
			pingOK(t, p)
		})
	}
}

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/vrrp"
)

const vmacOf51 = "00:00:5e:00:01:33"

// use_vmac: the master's adverts and gratuitous ARPs leave from the
// virtual router's MAC (tshark on the client's link says so), the client
// reaches the VIP at that MAC, and it keeps reaching it there after a
// failover. Then with keepalived (use_vmac) as the other director, both
// ways.
func TestVRRPVMAC(t *testing.T) {
	lab.Require(t, "tshark")
	for _, xmitBase := range []bool{false, true} {
		t.Run(fmt.Sprintf("directord pair, vmac_xmit_base %v", xmitBase), func(t *testing.T) {
			p := newPair(t)
			extra := fmt.Sprintf("use_vmac = true\nvmac_xmit_base = %v\ngarp_master_delay = \"1s\"", xmitBase)
			p.WriteConfig(p.LB1, 150, extra)
			p.WriteConfig(p.LB2, 100, extra)
			capture := p.Client.Command("tshark", "-i", "eth0", "-f", "ip proto 112 or arp", "-a", "duration:8", "-l",
				"-T", "fields", "-e", "eth.src", "-e", "arp.src.hw_mac", "-e", "arp.src.proto_ipv4", "-e", "vrrp.prio")
			var out strings.Builder
			capture.Stdout, capture.Stderr = &out, &out
			if err := capture.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second) // tshark opens the interface; the GARP burst repeats after 1s anyway
			p.Start(p.LB1)
			p.Start(p.LB2)
			p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
			if err := capture.Wait(); err != nil {
				t.Fatalf("tshark: %v\n%s", err, out.String())
			}
			adverts, garps := 0, 0
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				f := strings.Split(l, "\t")
				if len(f) < 4 || strings.HasPrefix(l, "Capturing") || strings.Contains(l, "packets captured") || l == "" {
					continue
				}
				switch {
				case f[3] == "150": // lb1's advert: from the VMAC, or the base's own MAC
					// (lb2 may be master for a moment if it starts first.)
					if want := map[bool]string{false: vmacOf51, true: scene.MAC(p.LB1)}[xmitBase]; f[0] != want {
						t.Errorf("advert from %s, want %s", f[0], want)
					}
					adverts++
				case f[2] == vip: // a gratuitous ARP for the VIP
					if f[0] != vmacOf51 || f[1] != vmacOf51 {
						t.Errorf("gratuitous ARP from %s (sender %s), want the VMAC %s", f[0], f[1], vmacOf51)
					}
					garps++
				}
			}
			if adverts < 3 || garps < 1 {
				t.Fatalf("%d adverts, %d gratuitous ARPs captured:\n%s", adverts, garps, out.String())
			}
			if !hasAddrOn(p.LB1, "vrrp.51", vip) || scene.HasAddr(p.LB2, vip) {
				t.Fatal("the master does not hold the VIP on its VMAC, or the backup holds it")
			}
			p.arpAnswersMAC(vmacOf51)

			p.Crash(p.LB1)
			p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
			if !hasAddrOn(p.LB2, "vrrp.51", vip) {
				t.Fatal("the new master does not hold the VIP on its VMAC")
			}
			// The client's entry still says the VMAC: nothing to relearn.
			if got := p.Neighbour(vip); got != vmacOf51 {
				t.Fatalf("client's entry for the VIP is %q after failover", got)
			}
			pingOK(t, p)

			// A clean stop takes the VMAC away.
			p.Revive(p.LB1)
			p.Stop(p.LB2)
			if out, _ := p.LB2.Command("ip", "link", "show", "vrrp.51").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
				t.Fatalf("the VMAC outlived its instance: %s", out)
			}
		})
	}

	lab.Require(t, "keepalived")
	for _, tc := range []struct {
		name           string
		directordFirst bool
	}{{"directord master, keepalived backup", true}, {"keepalived master, directord backup", false}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t)
			extra := "use_vmac = true\nadvert_int = \"100ms\""
			var k *lab.Process
			startK := func(prio int) { k = p.StartKeepalivedWith(p.LB2, prio, 3, 100*time.Millisecond, "  use_vmac", "") }
			if tc.directordFirst {
				p.WriteConfig(p.LB1, 150, extra)
				p.Start(p.LB1)
				p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
				startK(100)
				waitOutput(t, k, "(VI_1) Entering BACKUP STATE", 10*time.Second)
				// keepalived hears our adverts: it stays backup.
				if err := lab.Throughout(2*time.Second, func() error {
					if strings.Contains(k.Output(), "Entering MASTER STATE") {
						return fmt.Errorf("keepalived took over from a live directord master")
					}
					return nil
				}); err != nil {
					t.Fatalf("%v\n%s", err, k.Output())
				}
				p.arpAnswersMAC(vmacOf51)
				p.Crash(p.LB1)
				waitOutput(t, k, "(VI_1) Entering MASTER STATE", 10*time.Second)
				if !hasAddrOn(p.LB2, "vrrp.51", vip) {
					t.Fatal("keepalived does not hold the VIP on its VMAC")
				}
				pingOK(t, p)
				p.Revive(p.LB1)
				p.Start(p.LB1)
				p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
				if err := lab.Eventually(5*time.Second, func() error {
					if strings.Count(k.Output(), "Entering BACKUP STATE") < 2 {
						return fmt.Errorf("keepalived did not step back")
					}
					return nil
				}); err != nil {
					t.Fatalf("%v\n%s", err, k.Output())
				}
				pingOK(t, p)
				return
			}
			startK(150)
			waitOutput(t, k, "(VI_1) Entering MASTER STATE", 10*time.Second)
			p.WriteConfig(p.LB1, 100, extra)
			p.Start(p.LB1)
			p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Backup})
			in, _ := p.Instance(p.LB1)
			if in.Master != "192.0.2.12" || len(in.Drops) != 0 {
				t.Fatalf("directord's view of the keepalived master: %+v", in)
			}
			p.Crash(p.LB2)
			p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
			if !hasAddrOn(p.LB1, "vrrp.51", vip) {
				t.Fatal("directord does not hold the VIP on its VMAC")
			}
			pingOK(t, p)
			p.Revive(p.LB2)
			startK(150)
			waitOutput(t, k, "(VI_1) Entering MASTER STATE", 10*time.Second)
			p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Backup})
			pingOK(t, p)
		})
	}
}

// hasAddrOn: h holds addr on the interface ifname.
func hasAddrOn(h *lab.Host, ifname, addr string) bool {
	out, err := h.Command("ip", "-o", "addr", "show", "dev", ifname).CombinedOutput()
	return err == nil && strings.Contains(string(out), " "+addr+"/")
}

// arpAnswersMAC: asked afresh, the VIP is answered with mac.
func (p *pair) arpAnswersMAC(mac string) {
	p.t.Helper()
	p.Client.MustRun("ip", "neigh", "flush", "dev", "eth0")
	pingOK(p.t, p)
	if got := p.Neighbour(vip); got != mac {
		p.t.Fatalf("ARP for %s answered by %q, want %s", vip, got, mac)
	}
}

// pingOK: the VIP answers ping within a few seconds.
func pingOK(t *testing.T, p *pair) {
	t.Helper()
	if err := lab.Eventually(5*time.Second, func() error {
		return p.Client.Command("ping", "-c", "1", "-W", "1", vip).Run()
	}); err != nil {
		t.Fatalf("the VIP does not answer ping: %v", err)
	}
}

// virtual_routes and virtual_rules: on the master only, and they follow
// a failover.
func TestVRRPVirtualRoutes(t *testing.T) {
	p := newPair(t)
	extra := "virtual_routes = [\"198.51.100.0/24 via 192.0.2.1\", \"blackhole 203.0.113.0/24 table 100\"]\nvirtual_rules = [\"from 192.0.2.100 table 100 priority 1000\"]"
	p.elect(extra, extra)
	holds := func(h *lab.Host) string {
		r, _ := h.Command("ip", "route", "show", "198.51.100.0/24").CombinedOutput()
		b, _ := h.Command("ip", "route", "show", "table", "100").CombinedOutput()
		if strings.Contains(string(b), "does not exist") {
			b = nil // no route in it ever
		}
		u, _ := h.Command("ip", "rule", "show", "priority", "1000").CombinedOutput()
		return strings.TrimSpace(string(r)) + "|" + strings.TrimSpace(string(b)) + "|" + strings.TrimSpace(string(u))
	}
	want := func(h *lab.Host, on bool) {
		t.Helper()
		if err := lab.Eventually(3*time.Second, func() error {
			got := holds(h)
			full := strings.Contains(got, "198.51.100.0/24 via 192.0.2.1 dev eth0") && strings.Contains(got, "blackhole 203.0.113.0/24") &&
				strings.Contains(got, "1000:\tfrom 192.0.2.100 lookup 100")
			if full != on || !on && got != "||" {
				return fmt.Errorf("%s holds %q (want routes: %v)", h.Name, got, on)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	want(p.LB1, true)
	want(p.LB2, false)
	p.Stop(p.LB1) // a clean stop resigns: lb2 takes over
	want(p.LB1, false)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
	want(p.LB2, true)
}

// vrrp_track_process: a master whose tracked process dies loses its
// weight and the backup preempts it; the process back, it preempts back.
func TestVRRPTrackProcess(t *testing.T) {
	// A program of a name no other process has: processes are seen from
	// every network namespace.
	name := fmt.Sprintf("trk%d", os.Getpid()%100000)
	bin := filepath.Join(t.TempDir(), name)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	p := newPair(t)
	start := func() *lab.Process { return p.LB1.Start(bin, "3600") }
	proc := start()
	block := fmt.Sprintf("\n[[vrrp_track_process]]\nname = \"svc\"\nprocess = %q\nweight = -60\ninterval = \"50ms\"\n", name)
	p.WriteConfig(p.LB1, 150, "track_process = [\"svc\"]")
	p.WriteConfig(p.LB2, 100, "")
	appendFile(t, p.Files[p.LB1], block)
	p.Start(p.LB1)
	p.Start(p.LB2)
	p.waitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
	proc.Kill()
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Backup, p.LB2: vrrp.Master})
	if in, _ := p.Instance(p.LB1); in.Priority != 90 {
		t.Fatalf("lb1's priority with its process gone: %d, want 150-60", in.Priority)
	}
	start()
	p.waitStates(5*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup})
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

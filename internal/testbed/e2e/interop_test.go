package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/vrrp"
)

// waitOutput polls until the process has printed s.
func waitOutput(t *testing.T, proc *lab.Process, s string, timeout time.Duration) {
	t.Helper()
	if err := lab.Eventually(timeout, func() error {
		if !strings.Contains(proc.Output(), s) {
			return fmt.Errorf("%s has not printed %q", proc.Name, s)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, proc.Output())
	}
}

// TestKeepalivedInterop replaces one keepalived of a pair with directord,
// for VRRP v2 and v3, with directord as master and as backup, and fails
// over both ways.
func TestKeepalivedInterop(t *testing.T) {
	lab.Require(t, "keepalived")
	for _, tc := range []struct {
		version  int
		interval time.Duration
	}{{3, 100 * time.Millisecond}, {2, time.Second}} {
		crash := 3*tc.interval + tc.interval + 5*time.Second // generous: 3 adverts + skew + start-up

		t.Run(fmt.Sprintf("v%d directord master, keepalived backup", tc.version), func(t *testing.T) {
			p := newPair(t)
			extra := fmt.Sprintf("version = %d\nadvert_int = %q", tc.version, tc.interval)
			p.WriteConfig(p.LB1, 150, extra)
			p.Start(p.LB1)
			p.waitStates(crash, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
			k := p.StartKeepalived(p.LB2, 100, tc.version, tc.interval)
			waitOutput(t, k, "(VI_1) Entering BACKUP STATE", crash)
			p.owner(p.LB1, vip)
			// keepalived accepts our adverts: it stays backup while we send
			// five more, more than its master down interval (3 + skew).
			before, err := p.Instance(p.LB1)
			if err != nil {
				t.Fatal(err)
			}
			if err := lab.Eventually(10*tc.interval+5*time.Second, func() error {
				in, err := p.Instance(p.LB1)
				if err == nil && in.AdvertsSent < before.AdvertsSent+5 {
					err = fmt.Errorf("%d adverts sent since keepalived started", in.AdvertsSent-before.AdvertsSent)
				}
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if strings.Contains(k.Output(), "Entering MASTER STATE") {
				t.Fatalf("keepalived took over from a live directord master:\n%s", k.Output())
			}

			// directord's host dies: keepalived takes over.
			p.Crash(p.LB1)
			waitOutput(t, k, "(VI_1) Entering MASTER STATE", crash)
			if !scene.HasAddr(p.LB2, vip) {
				t.Fatal("keepalived master lacks the VIP")
			}

			// directord comes back and preempts keepalived.
			p.Revive(p.LB1)
			p.Start(p.LB1)
			p.waitStates(2*crash, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master})
			p.owner(p.LB1, vip)
			if n := strings.Count(k.Output(), "Entering BACKUP STATE"); n < 2 {
				t.Fatalf("keepalived did not step back to backup:\n%s", k.Output())
			}
		})

		t.Run(fmt.Sprintf("v%d keepalived master, directord backup", tc.version), func(t *testing.T) {
			p := newPair(t)
			k := p.StartKeepalived(p.LB1, 150, tc.version, tc.interval)
			waitOutput(t, k, "(VI_1) Entering MASTER STATE", crash)
			extra := fmt.Sprintf("version = %d\nadvert_int = %q", tc.version, tc.interval)
			p.WriteConfig(p.LB2, 100, extra)
			p.Start(p.LB2)
			p.waitStates(crash, map[*lab.Host]vrrp.State{p.LB2: vrrp.Backup})
			in, _ := p.Instance(p.LB2)
			if in.Master != "192.0.2.11" || in.MasterPriority != 150 || len(in.Drops) != 0 {
				t.Fatalf("directord's view of the keepalived master: %+v", in)
			}
			p.owner(p.LB1, vip)

			// keepalived's host dies: directord takes over.
			p.Crash(p.LB1)
			p.waitStates(crash, map[*lab.Host]vrrp.State{p.LB2: vrrp.Master})
			if !scene.HasAddr(p.LB2, vip) {
				t.Fatal("directord master lacks the VIP")
			}

			// keepalived comes back (it removes its stale VIP) and preempts.
			p.Revive(p.LB1)
			k = p.StartKeepalived(p.LB1, 150, tc.version, tc.interval)
			waitOutput(t, k, "(VI_1) Entering MASTER STATE", 2*crash)
			p.waitStates(crash, map[*lab.Host]vrrp.State{p.LB2: vrrp.Backup})
			p.owner(p.LB1, vip)
		})
	}
}

// TestWiresharkAgrees captures our adverts with tshark: Wireshark's VRRP
// dissector must find them well formed with a good checksum.
func TestWiresharkAgrees(t *testing.T) {
	lab.Require(t, "tshark")
	for _, tc := range []struct {
		name, extra, filter string
	}{
		{"v3 IPv4", `version = 3`, "ip proto 112"},
		{"v2 IPv4", "version = 2\nadvert_int = \"1s\"", "ip proto 112"},
		{"v3 IPv6", `virtual_ipaddress = ["fe80::100/64", "2001:db8::100/64"]`, "ip6 proto 112"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t)
			p.WriteConfig(p.LB1, 150, tc.extra)
			capture := p.Client.Command("tshark", "-i", "eth0", "-f", tc.filter, "-c", "3", "-a", "duration:20", "-V", "-l")
			var out strings.Builder
			capture.Stdout, capture.Stderr = &out, &out
			if err := capture.Start(); err != nil {
				t.Fatal(err)
			}
			// tshark needs a moment to open the interface; adverts repeat.
			p.Start(p.LB1)
			if err := capture.Wait(); err != nil {
				t.Fatalf("tshark: %v\n%s", err, out.String())
			}
			text := out.String()
			if n := strings.Count(text, "[Checksum Status: Good]"); n != 3 || strings.Contains(text, "Malformed") ||
				!strings.Contains(text, "Virtual Rtr ID: 51") || !strings.Contains(text, "Priority: 150") {
				t.Fatalf("Wireshark does not agree (%d good checksums):\n%s", n, text)
			}
		})
	}
}

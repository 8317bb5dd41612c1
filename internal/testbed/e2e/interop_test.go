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

// TestKeepalivedTrackWeights runs one keepalived configuration's tracking
// (scripts and interfaces that pass and fail, positive and negative
// weights, reverse) in keepalived and its translation in directord, each
// on its own lab, and compares directord's effective priority with the
// one keepalived logs.
func TestKeepalivedTrackWeights(t *testing.T) {
	lab.Require(t, "keepalived")
	type track struct {
		name    string
		up      bool
		weight  int
		reverse bool
	}
	scripts := []track{{"up_pos", true, 20, false}, {"down_neg", false, -30, false}, {"up_neg", true, -7, false},
		{"down_pos", false, 11, false}, {"rev_down_pos", false, 5, true}, {"rev_up_neg", true, -3, true},
		{"rev_up_pos", true, 6, true}, {"rev_down_neg", false, -8, true}}
	links := []track{{"trk_up", true, 9, false}, {"trk_down", false, -13, false}, {"trk_rev", false, 4, true},
		{"trk_rev_up", true, 2, true}, {"trk_rev_dn", false, -5, true}}
	prog := map[bool]string{true: "/bin/true", false: "/bin/false"}
	// kLine is a track in keepalived's syntax; tomlList the tracks as
	// directord's list under key, each named by field.
	kLine := func(tr track) string {
		rev := ""
		if tr.reverse {
			rev = " reverse"
		}
		return fmt.Sprintf("    %s weight %d%s\n", tr.name, tr.weight, rev)
	}
	tomlList := func(key, field string, ts []track) string {
		var items []string
		for _, tr := range ts {
			items = append(items, fmt.Sprintf("{ %s = %q, weight = %d, reverse = %v }", field, tr.name, tr.weight, tr.reverse))
		}
		return key + " = [" + strings.Join(items, ", ") + "]"
	}

	// links makes the tracked interfaces: veth pairs, up or down.
	mkLinks := func(h *lab.Host) {
		for _, l := range links {
			h.MustRun("ip", "link", "add", l.name, "type", "veth", "peer", "name", l.name+"p")
			if l.up {
				h.MustRun("ip", "link", "set", l.name+"p", "up")
				h.MustRun("ip", "link", "set", l.name, "up")
			}
		}
	}

	// keepalived
	var kInst, kBlocks strings.Builder
	kInst.WriteString("  track_script {\n")
	for _, s := range scripts {
		kInst.WriteString(kLine(s))
		fmt.Fprintf(&kBlocks, "vrrp_script %s {\n  script %q\n  interval 1\n}\n", s.name, prog[s.up])
	}
	kInst.WriteString("  }\n  track_interface {\n")
	for _, l := range links {
		kInst.WriteString(kLine(l))
	}
	kInst.WriteString("  }\n")
	kp := newPair(t)
	mkLinks(kp.LB1)
	k := kp.StartKeepalivedWith(kp.LB1, 100, 3, 100*time.Millisecond, kInst.String(), kBlocks.String())
	waitOutput(t, k, "(VI_1) Entering MASTER STATE", 10*time.Second)
	// keepalived logs each change of its effective priority.
	kPrio := func() int {
		prio := 0
		for _, l := range strings.Split(k.Output(), "\n") {
			var from, to int
			if i := strings.Index(l, "Changing effective priority from "); i >= 0 {
				if _, err := fmt.Sscanf(l[i:], "Changing effective priority from %d to %d", &from, &to); err == nil {
					prio = to
				}
			}
		}
		return prio
	}

	// directord, the same tracking in its file
	var dBlocks strings.Builder
	for _, s := range scripts {
		fmt.Fprintf(&dBlocks, "\n[[vrrp_script]]\nname = %q\nscript = [%q]\ninterval = \"1s\"\n", s.name, prog[s.up])
	}
	dp := newPair(t)
	mkLinks(dp.LB1)
	dp.WriteConfig(dp.LB1, 100, tomlList("track_script", "name", scripts)+"\n"+tomlList("track_interface", "interface", links))
	appendFile(t, dp.Files[dp.LB1], dBlocks.String())
	dp.Start(dp.LB1)
	// Both settle once every script has run; then they agree, and go on
	// agreeing.
	same := func() error {
		in, err := dp.Instance(dp.LB1)
		if err == nil && int(in.Priority) != kPrio() {
			err = fmt.Errorf("directord's effective priority %d, keepalived's %d", in.Priority, kPrio())
		}
		return err
	}
	if err := lab.Eventually(15*time.Second, same); err != nil {
		t.Fatalf("%v\nkeepalived:\n%s", err, k.Output())
	}
	if err := lab.Throughout(3*time.Second, same); err != nil {
		t.Fatalf("%v\nkeepalived:\n%s", err, k.Output())
	}
	t.Logf("effective priority %d in both (base 100)", kPrio())
}

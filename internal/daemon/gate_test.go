package daemon

import (
	"errors"
	"strings"
	"testing"

	dsync "github.com/directord/directord/sync"
)

// TestDrillGate runs every refusal branch of the drill's safety gate, and
// its passes, on facts made by hand.
func TestDrillGate(t *testing.T) {
	ready := func() gateFacts {
		return gateFacts{
			Instance: "VI_1", Moving: []string{"VI_1"}, Preempt: true, Priority: 150,
			Clustered: true, Self: "lb1", Leader: "lb1",
			Members: []gateMember{
				{Name: "lb1", State: "alive", Role: "director", Told: true},
				{Name: "w", State: "alive", Role: "witness"},
				{Name: "lb2", State: "alive", Role: "director", Told: true,
					Info: peerInfo{VRRP: map[string]string{"VI_1": "BACKUP/100"}, Applied: 7, Table: "abc", Sync: "conntrack backup"}},
			},
			Ping: func(string) error { return nil },
			Here: peerInfo{VRRP: map[string]string{"VI_1": "MASTER/150"}, Applied: 7, Table: "abc", Sync: "conntrack master connected"},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(*gateFacts)
		peer   string // "" when refused for want of a peer
		refuse string // the refused check's name and detail; "" passes
	}{
		{"ready", func(*gateFacts) {}, "lb2", ""},
		{"no cluster", func(f *gateFacts) { f.Clustered = false }, "", "peer: no [cluster]: this director cannot see its peer's state"},
		{"alone", func(f *gateFacts) { f.Members = f.Members[:2] }, "", "peer: no director is ready to take VI_1: the cluster has no other director"},
		{"peer suspect", func(f *gateFacts) { f.Members[2].State = "suspect" }, "", "peer: no director is ready to take VI_1: lb2 is suspect"},
		{"peer silent", func(f *gateFacts) { f.Members[2].Told = false }, "", "peer: no director is ready to take VI_1: lb2 has not told its state yet"},
		{"peer master", func(f *gateFacts) { f.Members[2].Info.VRRP["VI_1"] = "MASTER/100" }, "",
			"peer: no director is ready to take VI_1: lb2 is not BACKUP: VI_1 MASTER/100"},
		{"sync group member unknown", func(f *gateFacts) { f.Moving = []string{"VI_1", "VI_2"} }, "",
			"peer: no director is ready to take VI_1: lb2 is not BACKUP: VI_2 unknown"},
		{"no ping answer", func(f *gateFacts) { f.Ping = func(string) error { return errors.New("timeout") } }, "",
			"peer: lb2 does not answer a gossip ping: timeout"},
		{"raft behind", func(f *gateFacts) { f.Members[2].Info.Applied = 6 }, "lb2",
			"raft: lb2 has applied Raft index 6, this director 7: it has not caught up"},
		{"table differs", func(f *gateFacts) { f.Members[2].Info.Table = "abd" }, "lb2",
			"table: lb2 programs another load-balancer table (digest abd, here abc)"},
		{"peer refused the table", func(f *gateFacts) { f.Members[2].Info.TableError = true }, "lb2",
			"table: lb2 does not hold the committed table"},
		{"table refused here", func(f *gateFacts) { f.Here.TableError = true }, "lb2",
			"table: this director does not hold the committed table"},
		{"conntrack sync backup here", func(f *gateFacts) { f.ConnSync = &dsync.Status{Role: "backup", Peer: "198.51.100.2:7001"} }, "lb2",
			"sync: conntrack sync is backup and not connected to 198.51.100.2:7001"},
		{"conntrack sync disconnected", func(f *gateFacts) { f.ConnSync = &dsync.Status{Role: "master", Peer: "198.51.100.2:7001"} }, "lb2",
			"sync: conntrack sync is master and not connected"},
		{"conntrack sync connected", func(f *gateFacts) {
			f.ConnSync = &dsync.Status{Role: "master", Peer: "198.51.100.2:7001", Connected: true}
		}, "lb2", ""},
		{"ipvs sync daemon missing on peer", func(f *gateFacts) {
			f.IPVSSync, f.Here.Sync, f.Members[2].Info.Sync = true, "ipvs master", ""
		}, "lb2", "sync: IPVS sync daemons: ipvs master here, unknown on lb2"},
		{"ipvs sync daemons right", func(f *gateFacts) {
			f.IPVSSync, f.Here.Sync, f.Members[2].Info.Sync = true, "ipvs master+backup", "ipvs backup"
		}, "lb2", ""},
		{"back without preempt", func(f *gateFacts) { f.Back, f.Preempt = true, false }, "lb2",
			"back: --back needs preempt: with nopreempt this director would not take VI_1 back"},
		{"back at lower priority", func(f *gateFacts) { f.Back, f.Priority = true, 100 }, "lb2",
			"back: --back: this director's priority 100 is not above lb2's 100"},
		{"back", func(f *gateFacts) { f.Back = true }, "lb2", ""},
	} {
		f := ready()
		tc.change(&f)
		checks, peer := drillGate(f)
		if peer != tc.peer {
			t.Errorf("%s: peer %q, want %q", tc.name, peer, tc.peer)
		}
		var failed []string
		for _, c := range checks {
			if !c.OK {
				failed = append(failed, c.Name+": "+c.Detail)
			}
		}
		switch {
		case tc.refuse == "" && len(failed) > 0:
			t.Errorf("%s: refused: %q", tc.name, failed)
		case tc.refuse != "" && (len(failed) != 1 || !strings.HasPrefix(failed[0], tc.refuse)):
			t.Errorf("%s: failed checks %q, want one starting %q", tc.name, failed, tc.refuse)
		}
		if tc.refuse == "" && refusal(checks) != "" {
			t.Errorf("%s: refusal %q of passing checks", tc.name, refusal(checks))
		}
	}
}

package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"

	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

// drill runs directorctl drill --json on d and decodes the result.
func drill(t *testing.T, s *scene.Sync, d *scene.Director, args ...string) (api.DrillResult, string) {
	t.Helper()
	out, err := s.Ctl(d, append([]string{"drill", "--json"}, args...)...)
	var res api.DrillResult
	// A refused drill's JSON is followed by directorctl's one-line error.
	if jerr := json.NewDecoder(strings.NewReader(out)).Decode(&res); jerr != nil {
		t.Fatalf("drill %v on %s: %v, %v\n%s", args, d.Host.Name, err, jerr, out)
	}
	if (err == nil) != res.OK {
		t.Fatalf("drill exit status %v but ok %v", err, res.OK)
	}
	return res, out
}

func checkNamed(res api.DrillResult, name string) api.DrillCheck {
	for _, c := range res.Checks {
		if c.Name == name {
			return c
		}
	}
	return api.DrillCheck{}
}

// TestDrill: on the LVS-NAT pair with conntrack sync and a witness, a
// drill from the master hands both VIPs over with a gap under three
// advert intervals, hands them back with --back, keeps its results in
// status; it refuses, moving nothing, when the peer programs another
// table (its health checks cannot reach a real server), when run on the
// backup, and when the peer is down.
func TestDrill(t *testing.T) {
	s := newSyncSceneWith(t, scene.SyncOptions{Sync: true, Cluster: true,
		Check: &conf.Check{Type: "tcp", Interval: "200ms", Timeout: "150ms", Extra: []string{"rise = 1", "fall = 1"}}})
	lb1, lb2 := s.LB[0], s.LB[1]
	if err := s.WaitCluster(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	const advert = 100 * time.Millisecond
	chat, err := s.Chat(10, "192.0.2.100:80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chat.Close() })
	if err := s.WaitSynced(10, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	chat.Start(100 * time.Millisecond)
	// With [cluster] the sync runs over the members' mutual TLS.
	for _, d := range s.LB {
		if st, err := s.SyncStatus(d); err != nil || !st.TLS {
			t.Fatalf("%s: sync %+v, %v", d.Host.Name, st, err)
		}
	}

	// There and back.
	res, out := drill(t, s, lb1, "--back")
	if !res.OK {
		t.Fatalf("drill --back failed:\n%s\n%s", out, lb1.Proc.Output())
	}
	for _, name := range []string{"peer", "raft", "table", "sync", "back"} {
		if c := checkNamed(res, name); !c.OK {
			t.Fatalf("check %s: %+v", name, c)
		}
	}
	if res.Peer != "lb2" || res.Handover.MasterNode != "lb2" || res.Handover.Master != "192.0.2.12" || res.Back.MasterNode != "lb1" {
		t.Fatalf("drill went elsewhere: %+v %+v %+v", res, res.Handover, res.Back)
	}
	if len(res.Moved) != 2 || !strings.Contains(strings.Join(res.Moved, " "), "203.0.113.1/24") {
		t.Fatalf("moved %v, want both instances of the sync group", res.Moved)
	}
	for what, leg := range map[string]*api.DrillLeg{"handover": res.Handover, "back": res.Back} {
		if leg.GapMS <= 0 || time.Duration(leg.GapMS*float64(time.Millisecond)) >= 3*advert {
			t.Fatalf("%s gap %s, want under 3 advert intervals (%s)", what, leg.Gap, 3*advert)
		}
	}
	t.Logf("drill: handover gap %s, back gap %s", res.Handover.Gap, res.Back.Gap)
	if err := lab.Eventually(5*time.Second, func() error { return s.Owns(lb1, true) }); err != nil {
		t.Fatal(err)
	}
	// The drill is kept in status, with its number.
	var doc struct{ Drills api.DrillsStatus }
	if out, err := s.Ctl(lb1, "status", "--json"); err != nil || json.Unmarshal([]byte(out), &doc) != nil ||
		len(doc.Drills.Drills) != 1 || doc.Drills.Drills[0].Number != 1 || !doc.Drills.Drills[0].OK {
		t.Fatalf("status drills: %+v (%v)", doc.Drills, err)
	}
	// The human output says what happened.
	if out, err := s.Ctl(lb1, "status"); err != nil || !strings.Contains(out, "#1 ") || !strings.Contains(out, "VI_1: to lb2, gap ") {
		t.Fatalf("status does not show the drill (%v):\n%s", err, out)
	}

	// lb2 cannot reach rs1's port: its checks take rs1 out, so the two
	// tables differ and the drill refuses.
	if _, err := lb2.Host.Run("nft", "add table inet cut; add chain inet cut out { type filter hook output priority 0; }; "+
		"add rule inet cut out ip daddr 203.0.113.11 tcp dport 8080 drop"); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(10*time.Second, func() error {
		w, err := lvsWeights(lb2)
		if err != nil {
			return err
		}
		if n, ok := w["web/203.0.113.11:8080"]; ok && n != 0 {
			return fmt.Errorf("lb2 still has rs1 at weight %d", n)
		}
		return nil
	}); err != nil {
		st, _ := s.Ctl(lb2, "status")
		nft, _ := lb2.Host.Run("nft", "list", "ruleset")
		t.Fatalf("%v\n%s\n%s", err, st, nft)
	}
	res, out = drill(t, s, lb1)
	if res.OK || res.Refused == "" || checkNamed(res, "table").OK {
		t.Fatalf("drill with different tables was not refused:\n%s", out)
	}
	if err := s.Owns(lb1, true); err != nil {
		t.Fatalf("a refused drill moved something: %v", err)
	}
	t.Logf("refused: %s", res.Refused)
	if _, err := lb2.Host.Run("nft", "delete table inet cut"); err != nil {
		t.Fatal(err)
	}

	// A drill without --back leaves the VIPs with the peer; the old
	// master, now backup, refuses a second one.
	res, out = drill(t, s, lb1)
	if !res.OK {
		t.Fatalf("drill failed:\n%s\n%s", out, lb1.Proc.Output())
	}
	if err := lab.Eventually(5*time.Second, func() error { return s.Owns(lb2, true) }); err != nil {
		t.Fatal(err)
	}
	res, out = drill(t, s, lb1, "--instance", "VI_1")
	if res.OK || !strings.Contains(res.Refused, "BACKUP here") {
		t.Fatalf("drill on the backup:\n%s", out)
	}
	// Established connections went through both handovers.
	if err := chat.WaitMore(chat.Counts(), 5, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if survived, failures := chat.Stop(); survived != len(chat.Conns) {
		t.Fatalf("%d of %d connections survived the drills: %v", survived, len(chat.Conns), failures)
	}

	// lb2, the master now, loses its peer: lb1 dies. The drill refuses.
	s.Crash(lb1)
	res, out = drill(t, s, lb2)
	if res.OK || checkNamed(res, "peer").OK || !strings.Contains(res.Refused, "lb1") {
		t.Fatalf("drill with the peer down:\n%s", out)
	}
	if err := s.Owns(lb2, true); err != nil {
		t.Fatalf("a refused drill moved something: %v", err)
	}
	t.Logf("refused: %s", res.Refused)
}

// lvsWeights is d's kernel table: "service/real" to weight.
func lvsWeights(d *scene.Director) (map[string]int, error) {
	out, err := exec.Command(directorctl, "--socket", d.Sock, "lvs", "--json").Output()
	if err != nil {
		return nil, fmt.Errorf("%s: directorctl lvs: %v", d.Host.Name, err)
	}
	return weights(out)
}

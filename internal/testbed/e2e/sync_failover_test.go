package e2e

import (
	"fmt"
	"os"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

func newSyncScene(t *testing.T, syncOn bool, vsExtra ...string) *scene.Sync {
	t.Helper()
	return newSyncSceneWith(t, scene.SyncOptions{Sync: syncOn, VSExtra: vsExtra})
}

func newSyncSceneWith(t *testing.T, o scene.SyncOptions) *scene.Sync {
	t.Helper()
	lab.Require(t, "nft")
	s, err := scene.NewSync(lab.New(t), t.TempDir(), directord, directorctl, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSyncSurvivesFailover: 50 long-lived connections go through the
// master; it dies (cables cut, processes killed) or hands over; after the
// takeover every connection carries on through the backup, answered by
// the same real server. Without [sync] the same test breaks connections,
// so it can fail.
func TestSyncSurvivesFailover(t *testing.T) {
	for _, tc := range []struct {
		name          string
		sync, planned bool
	}{{"crash with sync", true, false}, {"crash without sync", false, false}, {"planned failover with sync", true, true}} {
		t.Run(tc.name, func(t *testing.T) { syncFailover(t, tc.sync, tc.planned) })
	}
}

func syncFailover(t *testing.T, syncOn, planned bool) {
	s := newSyncScene(t, syncOn)
	lb1, lb2 := s.LB[0], s.LB[1]
	chat, err := s.Chat(50, "192.0.2.100:80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { chat.Close() })
	if syncOn {
		if err := s.WaitSynced(50, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// Every connection exchanges a message every 100 ms through the
	// failover and a second after it.
	chat.Start(100 * time.Millisecond)
	if planned {
		if out, err := s.Ctl(lb1, "failover", "VI_1", "--hold", "1m"); err != nil {
			t.Fatalf("failover: %v\n%s", err, out)
		}
	} else {
		s.Crash(lb1)
	}
	if err := lab.Eventually(10*time.Second, func() error { return s.Owns(lb2, true) }); err != nil {
		t.Fatal(err)
	}
	if planned {
		// Held for a minute: neither instance of the sync group comes back
		// after a Master_Down_Interval (0.34 s), though lb1's priority is
		// higher.
		if err := lab.Throughout(time.Second, func() error { return s.Owns(lb2, true) }); err != nil {
			t.Fatal(err)
		}
	}
	// Ten more messages through the backup on every connection that is
	// still going (each exchange waits up to 5 s, so one stalled by the
	// takeover still counts).
	if err := chat.WaitMore(chat.Counts(), 10, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	survived, failures := chat.Stop()
	n := len(chat.Conns)
	t.Logf("%d of %d connections kept exchanging messages through the failover; some failures: %v", survived, n, failures)
	t.Logf("the real servers saw %d connections end in an error", s.Resets())
	if syncOn && s.Resets() != 0 {
		t.Fatalf("the real servers saw %d connections reset", s.Resets())
	}
	switch {
	case syncOn && survived != n:
		t.Fatalf("with sync only %d of %d connections survived\n%s", survived, n, lb2.Proc.Output())
	case !syncOn && survived == n:
		t.Fatal("without sync every connection survived: the test cannot tell")
	}
}

// TestSyncBurst: 20,000 short connections while the master syncs: both
// daemons stay up with bounded memory, and the sync keeps working.
func TestSyncBurst(t *testing.T) {
	s := newSyncScene(t, true)
	const total, workers = 20000, 16
	var wg stdsync.WaitGroup
	var mu stdsync.Mutex
	failed := 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range total / workers {
				if _, err := s.Ask("", "192.0.2.100:80"); err != nil {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if failed > total/100 {
		t.Fatalf("%d of %d connections failed", failed, total)
	}
	for _, x := range s.LB {
		if x.Proc.Exited() {
			t.Fatalf("%s exited:\n%s", x.Host.Name, x.Proc.Output())
		}
		rss := rssOf(x.Proc.Pid())
		t.Logf("%s: resident memory %d MiB after the burst", x.Host.Name, rss>>20)
		if rss > 200<<20 {
			t.Fatalf("%s uses %d MiB after the burst", x.Host.Name, rss>>20)
		}
	}
	st, err := s.SyncStatus(s.LB[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backup's sync after the burst: %+v", st)
	if st.Received == 0 || st.Refused != 0 {
		t.Fatalf("backup's sync: %+v", st)
	}
}

// rssOf is a process's resident memory in bytes.
func rssOf(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
			return kb << 10
		}
	}
	return 0
}

// TestSyncPersistence: a persistent client stays on its real server
// across a failover: the persistence entries go to the backup too.
func TestSyncPersistence(t *testing.T) {
	s := newSyncScene(t, true, `persistence_timeout = "300s"`)
	var server string
	for range 3 {
		name, err := s.Ask("", "192.0.2.100:80")
		if err != nil {
			t.Fatal(err)
		}
		if server != "" && name != server {
			t.Fatalf("persistence broken before the failover: %s then %s", server, name)
		}
		server = name
	}
	if err := lab.Eventually(10*time.Second, func() error {
		out, err := s.LB[1].Host.Run("nft", "list", "table", "inet", "directord")
		if err != nil || !strings.Contains(out, scene.ClientIP+" ") {
			return fmt.Errorf("the backup has no persistence entry for the client: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Crash(s.LB[0])
	if err := lab.Eventually(10*time.Second, func() error { return s.Owns(s.LB[1], true) }); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		var name string
		if err := lab.Eventually(5*time.Second, func() (err error) {
			name, err = s.Ask("", "192.0.2.100:80")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if name != server {
			t.Fatalf("after the failover connection %d went to %s, not %s", i, name, server)
		}
	}
}

// TestSyncEventFilter: with [sync] a connection through the VIP makes two
// conntrack events on the master, assured (established) and, later,
// destroy; not one per TCP state. Without the filter conntrack -E shows
// the handshake's and the closing's events too, so this can fail.
func TestSyncEventFilter(t *testing.T) {
	lab.Require(t, "conntrack")
	s := newSyncScene(t, true)
	lb1 := s.LB[0].Host
	if out := lb1.MustRun("nft", "list", "table", "inet", "directord_sync"); !strings.Contains(out, "192.0.2.100") || !strings.Contains(out, "ct event set") {
		t.Fatalf("no event filter for the VIP:\n%s", out)
	}
	ev := lb1.Command("conntrack", "-E", "-p", "tcp", "--orig-dst", "192.0.2.100")
	var out lab.Buffer
	ev.Stdout, ev.Stderr = &out, &out
	if err := ev.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ev.Process.Kill(); ev.Wait() })
	// conntrack -E subscribes after it starts: retry until an event shows.
	assured := func(n int) error {
		return lab.Eventually(10*time.Second, func() error {
			if _, err := s.Ask("", "192.0.2.100:80"); err != nil {
				return err
			}
			if got := strings.Count(out.String(), "ASSURED"); got < n {
				return fmt.Errorf("%d assured events, want %d:\n%s", got, n, out.String())
			}
			return nil
		})
	}
	if err := assured(1); err != nil {
		t.Fatal(err)
	}
	// Once the flows are in TIME_WAIT their closing is over; a new
	// connection's assured event comes after any event of theirs.
	if err := lab.Eventually(10*time.Second, func() error {
		if l := lb1.MustRun("conntrack", "-L", "-p", "tcp", "--orig-dst", "192.0.2.100"); !strings.Contains(l, "TIME_WAIT") {
			return fmt.Errorf("no flow in TIME_WAIT yet:\n%s", l)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := assured(strings.Count(out.String(), "ASSURED") + 1); err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		if !strings.Contains(line, "ESTABLISHED") || !strings.Contains(line, "[UPDATE]") {
			t.Fatalf("an event the sync does not need:\n%s", out.String())
		}
	}
}

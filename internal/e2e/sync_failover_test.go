package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	stdsync "sync"
	"testing"
	"time"

	"github.com/directord/directord/internal/lab"
	"github.com/directord/directord/internal/lblab"
	dsync "github.com/directord/directord/sync"
)

var syncKey = base64.StdEncoding.EncodeToString([]byte("directord sync test key, 32 byte"))

// TestSyncSurvivesFailover: LVS-NAT as the seed draws it: the real
// servers' gateway is a second VIP on the inside, in one sync group with
// the outside VIP. 50 long-lived connections go through the master; it
// dies (cables cut, processes killed); after the takeover every
// connection carries on through the backup, answered by the same real
// server. Without [sync] the same test breaks connections, so it can
// fail.
func TestSyncSurvivesFailover(t *testing.T) {
	for _, tc := range []struct {
		name          string
		sync, planned bool
	}{{"crash with sync", true, false}, {"crash without sync", false, false}, {"planned failover with sync", true, true}} {
		t.Run(tc.name, func(t *testing.T) { syncFailover(t, tc.sync, tc.planned) })
	}
}

type syncLB struct {
	d                   *director
	frontPort, backPort string
	inside              string
}

// newSyncScene builds the LVS-NAT scene with two directors (lb1 master)
// and three real servers, and waits until lb1 holds both VIPs.
func newSyncScene(t *testing.T, syncOn bool, vsExtra ...string) (*lblab.Scene, *lab.Switch, *lab.Switch, []*syncLB, func(*lab.Host, bool) error) {
	lab.Require(t, "nft")
	l := lab.New(t)
	front, back := l.AddSwitch("front"), l.AddSwitch("back")
	sc := &lblab.Scene{Lab: l, Front: front, Back: back, Client: l.AddHost("client")}
	front.Plug(sc.Client, "eth0", lblab.ClientIP+"/24")
	var lbs []*syncLB
	for i, name := range []string{"lb1", "lb2"} {
		h := l.AddHost(name)
		dir := t.TempDir()
		x := &syncLB{d: &director{h: h, ip: fmt.Sprintf("192.0.2.%d", 11+i), dir: dir,
			conf: filepath.Join(dir, "directord.toml"), sock: filepath.Join(dir, "directord.sock")},
			inside: fmt.Sprintf("203.0.113.%d", 2+i)}
		x.frontPort = front.Plug(h, "eth0", x.d.ip+"/24")
		x.backPort = back.Plug(h, "eth1", x.inside+"/24")
		lbs = append(lbs, x)
	}
	for i := range 3 {
		h := l.AddHost(fmt.Sprintf("rs%d", i+1))
		back.Plug(h, "eth0", lblab.RealAddr(i)+"/24")
		h.AddRoute("default", "via", "203.0.113.1")
		sc.Reals = append(sc.Reals, h)
		sc.Serve(h)
	}
	for i, x := range lbs {
		prio, peer := 150, lbs[1].inside
		if i == 1 {
			prio, peer = 100, lbs[0].inside
		}
		syncSection := ""
		if syncOn {
			syncSection = fmt.Sprintf("\n[sync]\nlisten = \"%s:7100\"\npeer = \"%s:7100\"\nkey = %q\ninstance = \"VI_1\"\n", x.inside, peer, syncKey)
		}
		writeFile(t, x.d.conf, fmt.Sprintf(`[node]
name = %q
data_dir = %q
status_socket = %q
%s
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = %d
advert_int = "100ms"
virtual_ipaddress = ["192.0.2.100/24"]

[[vrrp_instance]]
name = "VI_2"
interface = "eth1"
virtual_router_id = 52
priority = %d
advert_int = "100ms"
virtual_ipaddress = ["203.0.113.1/24"]

[[vrrp_sync_group]]
name = "G"
group = ["VI_1", "VI_2"]

[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
scheduler = "rr"
%s
%s`, x.d.h.Name, filepath.Join(x.d.dir, "data"), x.d.sock, syncSection, prio, prio, strings.Join(vsExtra, "\n"), realServers(1, 1, 1)))
		x.d.start()
	}
	owns := func(h *lab.Host, want bool) error {
		for _, vip := range []string{"192.0.2.100", "203.0.113.1"} {
			out, _ := h.Run("ip", "-o", "addr")
			if strings.Contains(out, " "+vip+"/") != want {
				return fmt.Errorf("%s holds %s: %v", h.Name, vip, !want)
			}
		}
		return nil
	}
	if err := lab.Eventually(15*time.Second, func() error {
		if err := owns(lbs[0].d.h, true); err != nil {
			return err
		}
		return owns(lbs[1].d.h, false)
	}); err != nil {
		t.Fatal(err)
	}
	return sc, front, back, lbs, owns
}

func syncFailover(t *testing.T, syncOn, planned bool) {
	sc, front, back, lbs, owns := newSyncScene(t, syncOn)

	// 50 long-lived connections through lb1.
	var conns []*lblab.Conn
	if err := lab.Eventually(10*time.Second, func() error {
		for len(conns) < 50 {
			c, err := sc.Open("", "192.0.2.100:80")
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range conns {
		t.Cleanup(func() { c.Close() })
		if ans, err := c.Echo("before"); err != nil || ans != c.Server+" before" {
			t.Fatalf("before the failover: %q, %v", ans, err)
		}
	}
	if syncOn {
		// The backup has them all.
		if err := lab.Eventually(10*time.Second, func() error {
			out, err := exec.Command(directorctl, "--socket", lbs[1].d.sock, "status", "--json").Output()
			if err != nil {
				return err
			}
			var doc struct{ Sync dsync.Status }
			if err := json.Unmarshal(out, &doc); err != nil {
				return err
			}
			if doc.Sync.Applied < 50 {
				return fmt.Errorf("backup sync status %+v", doc.Sync)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	if planned {
		// directorctl failover: lb1 hands over and stays backup.
		if out, err := lbs[0].d.ctl("failover", "VI_1", "--hold", "1m"); err != nil {
			t.Fatalf("failover: %v\n%s", err, out)
		}
	} else {
		// lb1 dies.
		front.IP("link", "set", lbs[0].frontPort, "down")
		back.IP("link", "set", lbs[0].backPort, "down")
		lbs[0].d.h.KillAll()
	}
	if err := lab.Eventually(10*time.Second, func() error { return owns(lbs[1].d.h, true) }); err != nil {
		t.Fatal(err)
	}
	var mu stdsync.Mutex
	survived := 0
	var failures []string
	var wg stdsync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ans, err := c.Echo("after")
			mu.Lock()
			defer mu.Unlock()
			if err == nil && ans == c.Server+" after" {
				survived++
			} else if len(failures) < 5 {
				failures = append(failures, fmt.Sprintf("conn %d to %s: %q %v", i, c.Server, ans, err))
			}
		}()
	}
	wg.Wait()
	t.Logf("%d of %d connections survived the failover; some failures: %v", survived, len(conns), failures)
	switch {
	case syncOn && survived != len(conns):
		t.Fatalf("with sync only %d of %d connections survived\n%s", survived, len(conns), lbs[1].d.proc.Output())
	case !syncOn && survived == len(conns):
		t.Fatal("without sync every connection survived: the test cannot tell")
	}
}

// TestSyncBurst: 20,000 short connections while the master syncs: both
// daemons stay up with bounded memory, and the sync keeps working.
func TestSyncBurst(t *testing.T) {
	sc, _, _, lbs, _ := newSyncScene(t, true)
	const total, workers = 20000, 16
	var wg stdsync.WaitGroup
	var mu stdsync.Mutex
	failed := 0
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range total / workers {
				if _, err := sc.Ask("", "192.0.2.100:80"); err != nil {
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
	for _, x := range lbs {
		if x.d.proc.Exited() {
			t.Fatalf("%s exited:\n%s", x.d.h.Name, x.d.proc.Output())
		}
		rss := rssOf(x.d.proc.Pid())
		t.Logf("%s: resident memory %d MiB after the burst", x.d.h.Name, rss>>20)
		if rss > 200<<20 {
			t.Fatalf("%s uses %d MiB after the burst", x.d.h.Name, rss>>20)
		}
	}
	out, err := exec.Command(directorctl, "--socket", lbs[1].d.sock, "status", "--json").Output()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Sync dsync.Status }
	json.Unmarshal(out, &doc)
	t.Logf("backup's sync after the burst: %+v", doc.Sync)
	if doc.Sync.Received == 0 || doc.Sync.Refused != 0 {
		t.Fatalf("backup's sync: %+v", doc.Sync)
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
	sc, front, back, lbs, owns := newSyncScene(t, true, `persistence_timeout = "300s"`)
	var server string
	for range 3 {
		name, err := sc.Ask("", "192.0.2.100:80")
		if err != nil {
			t.Fatal(err)
		}
		if server != "" && name != server {
			t.Fatalf("persistence broken before the failover: %s then %s", server, name)
		}
		server = name
	}
	if err := lab.Eventually(10*time.Second, func() error {
		out, err := lbs[1].d.h.Run("nft", "list", "table", "inet", "directord")
		if err != nil || !strings.Contains(out, lblab.ClientIP+" ") {
			return fmt.Errorf("the backup has no persistence entry for the client: %v", err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	front.IP("link", "set", lbs[0].frontPort, "down")
	back.IP("link", "set", lbs[0].backPort, "down")
	lbs[0].d.h.KillAll()
	if err := lab.Eventually(10*time.Second, func() error { return owns(lbs[1].d.h, true) }); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		var name string
		if err := lab.Eventually(5*time.Second, func() (err error) {
			name, err = sc.Ask("", "192.0.2.100:80")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if name != server {
			t.Fatalf("after the failover connection %d went to %s, not %s", i, name, server)
		}
	}
}

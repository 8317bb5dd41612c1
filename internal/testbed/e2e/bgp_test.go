package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

// drPackets is how many packets director h sent to real servers by
// direct routing: the counter of the service's element in its netdev
// table's dispatch map.
func drPackets(t *testing.T, h *lab.Host) int {
	t.Helper()
	out, err := h.Run("nft", "-j", "list", "map", "netdev", "directord-dr", "svc4")
	if err != nil {
		t.Fatalf("%s: nft list map: %v\n%s", h.Name, err, out)
	}
	m := regexp.MustCompile(`"packets":\s*(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("%s: no counter in\n%s", h.Name, out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// Three directors announce the VIP to FRR, which installs one route with a
// next hop per director and spreads connections over them; the directors
// send them to the real servers by stateless direct routing with mh, and
// the real servers answer through the router. A real server that fails
// leaves the table; all withdraw when the service loses its quorum. A
// director stopped with SIGTERM is dropped by the router
// (GRACEFUL_SHUTDOWN) before it stops forwarding, and one killed with its
// cable cut is dropped after the hold time: in both cases every long-lived
// connection carries on, with the same real server, those that went
// through the lost director included.
func TestBGPScaleOutRouter(t *testing.T) {
	lab.Require(t, "vtysh", "nft")
	l := lab.New(t)
	s := scene.NewScaleOut(l, 3, 2)
	dir := t.TempDir()
	procs := make([]*lab.Process, 3)
	socks := make([]string, 3)
	for i, d := range s.Directors {
		var file string
		var err error
		if file, socks[i], err = s.DirectorConfig(dir, i, scene.DirectorOptions{ShutdownDelay: "5s"}); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(directord, "-t", "-c", file).CombinedOutput(); err != nil {
			t.Fatalf("directord -t: %v\n%s", err, out)
		}
		procs[i] = d.Start(directord, "-c", file)
	}
	vip := scene.ScaleOutVIP + "/32"
	addr := fmt.Sprintf("%s:%d", scene.ScaleOutVIP, scene.TCPPort)
	all := []string{scene.DirectorAddr(0), scene.DirectorAddr(1), scene.DirectorAddr(2)}
	hops := func(want []string, within time.Duration) {
		t.Helper()
		if err := lab.Eventually(within, func() error {
			got, err := s.NextHops(vip)
			if err != nil {
				return err
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("the router's next hops for %s: %v, want %v", vip, got, want)
			}
			return nil
		}); err != nil {
			sum, _ := s.Vtysh("show bgp ipv4 unicast " + vip)
			t.Fatalf("%v\n%s\n%s\nd1:\n%s", err, sum, s.RouterLog(), procs[0].Output())
		}
	}
	hops(all, 30*time.Second)
	if out, err := s.Vtysh("show bgp ipv4 unicast " + vip); err != nil || !strings.Contains(out, "65001:100") {
		t.Fatalf("the route lacks the configured community: %v\n%s", err, out)
	}
	out, err := exec.Command(directorctl, "--socket", socks[0], "bgp").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "established") || !regexp.MustCompile(`192\.0\.2\.200/32\s+yes\s+web`).Match(out) {
		t.Fatalf("directorctl bgp: %v\n%s", err, out)
	}
	t.Logf("directorctl bgp:\n%s", out)
	// The sessions are signed (TCP MD5): a keepalive on the wire carries
	// the option; the password is in no log.
	dump, err := s.Router.Run("timeout", "10", "tcpdump", "-c", "2", "-vni", "eth0", "tcp", "port", "179")
	if err != nil || !strings.Contains(dump, "md5") {
		t.Fatalf("BGP packets without a TCP MD5 option: %v\n%s", err, dump)
	}
	for _, p := range procs {
		if strings.Contains(p.Output(), scene.ScaleOutPassword) {
			t.Fatalf("a director logged the BGP password:\n%s", p.Output())
		}
	}

	// A real server failing on every director leaves the table: new
	// flows all go to the other; with both down the service has no
	// quorum and every director withdraws the VIP.
	s.Stop(s.Reals[0])
	if err := lab.Eventually(20*time.Second, func() error {
		got := map[string]int{}
		for range 20 {
			name, err := s.Ask("", addr)
			if err != nil {
				return err
			}
			got[name]++
		}
		if got["rs2"] != 20 {
			return fmt.Errorf("with rs1 down: %v", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Stop(s.Reals[1])
	hops(nil, 20*time.Second) // checks, a reconcile and the withdrawal; slow under -race
	for _, h := range s.Reals {
		s.Serve(h)
		s.ServeHTTP(h)
	}
	hops(all, 20*time.Second)
	// Every director announces once one server is back: wait for both
	// everywhere, or a connection opened meanwhile through a director
	// that has one would move when the other comes back there.
	if err := lab.Eventually(20*time.Second, func() error {
		for i, sock := range socks {
			out, err := exec.Command(directorctl, "--socket", sock, "lvs", "--json").Output()
			if err != nil {
				return err
			}
			var st struct {
				Services []struct {
					Reals []struct {
						Weight int `json:"weight"`
					} `json:"real_servers"`
				} `json:"services"`
			}
			if err := json.Unmarshal(out, &st); err != nil {
				return err
			}
			if len(st.Services) != 1 || len(st.Services[0].Reals) != 2 || st.Services[0].Reals[0].Weight == 0 || st.Services[0].Reals[1].Weight == 0 {
				return fmt.Errorf("d%d's table: %s", i+1, out)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// 300 long-lived connections from as many source ports: the router
	// spreads them over the directors (it hashes on ports), mh over the
	// real servers.
	before := make([]int, 3)
	for i, d := range s.Directors {
		before[i] = drPackets(t, d)
	}
	var conns []*scene.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	servers := map[string]int{}
	for range 300 {
		var c *scene.Conn
		if err := lab.Eventually(5*time.Second, func() (err error) { c, err = s.Open("", addr); return err }); err != nil {
			t.Fatalf("connection %d: %v", len(conns)+1, err)
		}
		conns = append(conns, c)
		servers[c.Server]++
	}
	for i, d := range s.Directors {
		if n := drPackets(t, d) - before[i]; n == 0 {
			t.Fatalf("d%d forwarded none of the 300 connections", i+1)
		} else {
			t.Logf("d%d forwarded %d packets of the 300 connections", i+1, n)
		}
	}
	if servers["rs1"] < 60 || servers["rs2"] < 60 {
		t.Fatalf("mh spread the 300 connections %v", servers)
	}
	t.Logf("real servers: %v", servers)
	// echo checks every connection still reaches the server it started
	// with: within d, or (d == 0) within a minute.
	echo := func(stage string, d time.Duration) (fast int) {
		t.Helper()
		type result struct {
			i    int
			took time.Duration
			err  error
		}
		res := make(chan result, len(conns))
		for i, c := range conns {
			go func() {
				start := time.Now()
				got, err := c.EchoWithin(stage, time.Minute)
				if err == nil && got != c.Server+" "+stage {
					err = fmt.Errorf("answered %q, want %q", got, c.Server+" "+stage)
				}
				res <- result{i, time.Since(start), err}
			}()
		}
		for range conns {
			r := <-res
			if r.err != nil {
				t.Fatalf("%s: connection %d (to %s): %v", stage, r.i, conns[r.i].Server, r.err)
			}
			if r.took < d {
				fast++
			}
		}
		return fast
	}
	resets := s.Resets() // of the connections asked and closed above
	echo("before", 0)

	// A BGP drill on d3 while every connection talks: the router moves
	// d3's share to the others while d3 still forwards it, then gives it
	// back; no connection notices. Without [cluster] d3 cannot see the
	// others announce, so the drill needs --force.
	talk := scene.Talk(conns, 50*time.Millisecond)
	out, err = exec.Command(directorctl, "--socket", socks[2], "drill", "--bgp", "web").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "without [cluster]") {
		talk.Stop()
		t.Fatalf("drill --bgp without a cluster or --force: %v\n%s", err, out)
	}
	out, err = exec.Command(directorctl, "--socket", socks[2], "drill", "--bgp", "web", "--force").CombinedOutput()
	longest, broken := talk.Stop()
	if err != nil || !regexp.MustCompile(`moved the traffic away after \S+`).Match(out) || !strings.Contains(string(out), "traffic back after") {
		t.Fatalf("drill --bgp: %v\n%s", err, out)
	}
	t.Logf("directorctl drill --bgp web --force on d3:\n%s(the connections' longest silence meanwhile: %s)", out, longest)
	if broken > 0 || longest > time.Second {
		t.Fatalf("during the drill %d connections broke; the longest silence was %s", broken, longest)
	}
	hops(all, 20*time.Second)

	// SIGTERM d1: the router moves its flows away while d1 still
	// forwards and keeps its session (shutdown_delay), then d1 withdraws
	// and stops. Its connections carry on through the others, to the same
	// servers.
	if err := procs[0].Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	hops(all[1:], 5*time.Second)
	if procs[0].Exited() {
		t.Fatal("d1 stopped before the router moved its flows away")
	}
	if _, err := procs[0].Wait(10 * time.Second); err != nil {
		t.Fatalf("d1 did not stop: %v\n%s", err, procs[0].Output())
	}
	if o := procs[0].Output(); !strings.Contains(o, "GRACEFUL_SHUTDOWN") || !strings.Contains(o, "withdrawn and stopped") {
		t.Fatalf("d1's log:\n%s", o)
	}
	if fast := echo("after-sigterm", time.Second); fast != len(conns) {
		t.Fatalf("after d1's graceful stop %d of %d connections answered within a second", fast, len(conns))
	}

	// kill -9 d2 and cut its cable: the router drops it after the hold
	// time. The connections through d3 never notice; those through d2
	// carry on once the router has moved them (TCP retransmits).
	// The cable first: a killed process's sockets are closed by the
	// kernel, whose FIN would end the session at once.
	cut := time.Now()
	s.RouterSwitch.IP("link", "set", s.Ports[1], "down")
	procs[1].Kill()
	dropped := make(chan time.Duration, 1)
	go func() {
		// When the router's route loses d2, while the echoes wait.
		err := lab.Eventually(time.Duration(scene.ScaleOutHoldSec+5)*time.Second, func() error {
			if got, err := s.NextHops(vip); err != nil || !slices.Equal(got, all[2:]) {
				return fmt.Errorf("next hops %v (%v)", got, err)
			}
			return nil
		})
		if err != nil {
			dropped <- -1
			return
		}
		dropped <- time.Since(cut)
	}()
	fast := echo("after-kill", time.Second)
	took := <-dropped
	if took < 0 {
		t.Fatalf("the router still has d2 as a next hop %ds after its cable was cut", scene.ScaleOutHoldSec+5)
	}
	t.Logf("the router dropped the dead director after %s (hold time %ds); %d of %d connections answered within a second, the others after",
		took.Round(100*time.Millisecond), scene.ScaleOutHoldSec, fast, len(conns))
	if fast == 0 || fast == len(conns) {
		t.Fatalf("%d of %d connections answered within a second of the crash: want those through d3 only", fast, len(conns))
	}
	echo("after-hold", time.Second)
	if n := s.Resets() - resets; n != 0 {
		t.Fatalf("the real servers saw %d connections end in a reset", n)
	}
}

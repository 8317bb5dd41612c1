package main

import (
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

// scaleOut is make demo-scaleout: three directors announce the VIP with
// BGP to FRR, balance by stateless direct routing with Maglev hashing, and
// lose one director gracefully and one by a crash while the client keeps
// long-lived connections open.
func scaleOut(l *lab.Lab, bins scene.Binaries, tmp string) error {
	step("building a lab of network namespaces (%s%s-*):\n"+
		"    client 198.51.100.50 ── router (FRR: bgpd, zebra) ── d1 192.0.2.11, d2 .12, d3 .13 ── rs1, rs2 (203.0.113.11-12)\n"+
		"                              └── 203.0.113.254: the real servers' gateway (their replies go straight to the client)\n"+
		"    Each director announces the VIP 192.0.2.200 with BGP; the router spreads flows over them (ECMP, hashing on ports).\n"+
		"    Each director sends a flow to the real server Maglev picks: the same table everywhere, no state per flow.",
		lab.Prefix, l.ID())
	s := scene.NewScaleOut(l, 3, 2)
	if err := s.StartDirectors(bins.Directord, tmp, scene.DirectorOptions{ShutdownDelay: "2s"}); err != nil {
		return err
	}
	show("d1's configuration", exec.Command("cat", s.Files[0]))
	show("the router's route to the VIP: one next hop per director", s.Router.Command("ip", "route", "show", scene.ScaleOutVIP))
	show("directorctl bgp on d1", exec.Command(bins.Directorctl, "--socket", s.Socks[0], "bgp"))

	step("the client opens 60 long-lived connections to %s:%d; each says hello every 100ms", scene.ScaleOutVIP, scene.TCPPort)
	addr := fmt.Sprintf("%s:%d", scene.ScaleOutVIP, scene.TCPPort)
	var conns []*scene.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	servers := map[string]int{}
	for len(conns) < 60 {
		var c *scene.Conn
		if err := lab.Eventually(5*time.Second, func() (err error) { c, err = s.Open("", addr); return err }); err != nil {
			return err
		}
		conns = append(conns, c)
		servers[c.Server]++
	}
	fmt.Printf("real servers: rs1 %d, rs2 %d\n", servers["rs1"], servers["rs2"])
	for i, d := range s.Directors {
		out, _ := d.Run("nft", "list", "map", "netdev", "directord-dr", "svc4")
		fmt.Printf("d%d forwarded: %s\n", i+1, strings.TrimSpace(counterOf(out)))
	}
	talk := scene.Talk(conns, 100*time.Millisecond)

	step("d1 stops with SIGTERM: it tells the router (GRACEFUL_SHUTDOWN), keeps forwarding for shutdown_delay, then withdraws")
	start := time.Now()
	if err := s.Procs[0].Signal(syscall.SIGTERM); err != nil {
		return err
	}
	if err := s.WaitHops(2, 5*time.Second); err != nil {
		return err
	}
	fmt.Printf("the router dropped d1 after %s\n", time.Since(start).Round(10*time.Millisecond))
	if _, err := s.Procs[0].Wait(10 * time.Second); err != nil {
		return err
	}
	fmt.Printf("d1's directord exited after %s\n", time.Since(start).Round(10*time.Millisecond))
	time.Sleep(time.Second)
	fmt.Printf("the connections: %s\n", talkReport(talk))

	step("d2 crashes: its cable is cut and directord killed; the router notices after the BGP hold time (%ds)", scene.ScaleOutHoldSec)
	start = time.Now()
	if err := s.Crash(1); err != nil {
		return err
	}
	fmt.Printf("the router dropped d2 after %s\n", time.Since(start).Round(10*time.Millisecond))
	show("the router's route to the VIP", s.Router.Command("ip", "route", "show", scene.ScaleOutVIP))
	// The stalled connections retransmit with TCP's back-off.
	if err := lab.Eventually(30*time.Second, func() error {
		if n := talk.Waiting(time.Second); n > 0 {
			return fmt.Errorf("%d connections waiting", n)
		}
		return nil
	}); err != nil {
		return err
	}
	fmt.Printf("the connections: %s\n", talkReport(talk))
	if _, broken := talk.Stop(); broken > 0 {
		return fmt.Errorf("%d of %d connections broke", broken, len(conns))
	}
	fmt.Printf("%d of %d long-lived connections survived both, each still on its real server; the real servers saw %d connections end in an error\n",
		len(conns), len(conns), s.Resets())
	fmt.Println("(to go below the hold time on a crash, run BFD on the router: docs/scale-out.md)")
	return nil
}

// counterOf is the "counter packets N bytes M" of an nft map listing.
func counterOf(listing string) string {
	if i := strings.Index(listing, "counter packets"); i >= 0 {
		rest := listing[i+len("counter "):]
		if j := strings.Index(rest, " :"); j >= 0 {
			return rest[:j]
		}
	}
	return "nothing"
}

func talkReport(t *scene.Talker) string {
	longest, broken := t.Longest()
	return fmt.Sprintf("%d broken; the longest silence any saw so far: %s", broken, longest.Round(10*time.Millisecond))
}

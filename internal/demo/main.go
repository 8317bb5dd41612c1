// Command demo shows directord working in a lab of network namespaces on
// this machine: two directors float a virtual IP, the master dies, the
// backup takes over, and a client measures the gap. Everything is removed
// afterwards, also on Ctrl-C. Run it with sudo make demo.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/directord/directord/internal/lab"
	"github.com/directord/directord/internal/pairlab"
	"github.com/directord/directord/internal/probe"
	"github.com/directord/directord/vrrp"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(bin string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo builds network namespaces: run it as root (sudo make demo)")
	}
	bins, err := pairlab.BinariesIn(bin)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "directord-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	l := lab.Open(func(f string, a ...any) { fmt.Printf(f+"\n", a...) })
	defer lab.Recover(&err) // runs last: after the lab is gone
	defer func() {
		step("removing the lab")
		l.Close()
	}()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigc
		fmt.Println("\ninterrupted: removing the lab")
		l.Close()
		os.RemoveAll(tmp)
		os.Exit(130)
	}()

	step("building a lab of network namespaces (%s%s-*): a client (192.0.2.50) and two directors, lb1 (192.0.2.11) and lb2 (192.0.2.12), on one switch", lab.Prefix, l.ID())
	p := pairlab.New(l, tmp, bins)
	p.WriteConfig(p.LB1, 150, "")
	p.WriteConfig(p.LB2, 100, "")
	fmt.Printf("lb1's configuration (lb2's differs only in name and priority 100):\n\n%s", indent(must(os.ReadFile(p.Files[p.LB1]))))
	show("directord -t checks it", exec.Command(bins.Directord, "-t", "-c", p.Files[p.LB1]))

	step("starting directord on both: VRRPv3, advertisements every 100ms, virtual IP %s", pairlab.VIP)
	p.Start(p.LB1)
	p.Start(p.LB2)
	if err := p.WaitStates(10*time.Second, map[*lab.Host]vrrp.State{p.LB1: vrrp.Master, p.LB2: vrrp.Backup}); err != nil {
		return err
	}
	if err := p.WaitOwner(p.LB1, pairlab.VIP, 5*time.Second); err != nil {
		return err
	}
	ctl := func(h *lab.Host, args ...string) *exec.Cmd {
		return exec.Command(bins.Directorctl, append([]string{"--socket", p.Sockets[h]}, args...)...)
	}
	show("directorctl status on lb1", ctl(p.LB1, "status"))
	show("directorctl status on lb2", ctl(p.LB2, "status"))

	step("the client pings the virtual IP every 5ms from now on")
	var conn net.PacketConn
	if err := p.Client.Do(func() (err error) { conn, err = probe.Listen(); return err }); err != nil {
		return err
	}
	defer conn.Close()
	pr := probe.Start(context.Background(), conn, netip.MustParseAddr(pairlab.VIP), 5*time.Millisecond)
	defer pr.Stop()
	if err := pr.WaitAnswered(time.Time{}, 5*time.Second); err != nil {
		return err
	}

	measure := func(what string, event func(), newMaster *lab.Host) error {
		at := time.Now()
		event()
		if err := p.WaitStates(10*time.Second, map[*lab.Host]vrrp.State{newMaster: vrrp.Master}); err != nil {
			return err
		}
		took := time.Since(at)
		if err := pr.WaitAnswered(time.Now(), 5*time.Second); err != nil {
			return err
		}
		fmt.Printf("%s is MASTER %s after the %s; the client saw no answer for %s\n",
			newMaster.Name, took.Round(time.Millisecond), what, pr.Gap(at).Round(time.Millisecond))
		return nil
	}

	step("lb1 dies: every process killed (kill -9) and its cable cut")
	if err := measure("crash", func() { p.Crash(p.LB1) }, p.LB2); err != nil {
		return err
	}
	show("directorctl status on lb2", ctl(p.LB2, "status"))

	step("lb1 comes back: it drops the stale address it still had and, with the higher priority, preempts")
	if err := measure("restart", func() { p.Revive(p.LB1); p.Start(p.LB1) }, p.LB1); err != nil {
		return err
	}

	step("a planned failover: directorctl failover VI_1 --hold 3s on lb1 (priority 0, so lb2 takes over at once)")
	if err := measure("planned failover", func() { show("", ctl(p.LB1, "failover", "VI_1", "--hold", "3s")) }, p.LB2); err != nil {
		return err
	}

	step("a broken configuration is refused and the running one kept: a misspelt key, then directorctl reload on lb2")
	good := must(os.ReadFile(p.Files[p.LB2]))
	if err := os.WriteFile(p.Files[p.LB2], []byte(strings.Replace(string(good), "priority = 100", "priorty = 100", 1)), 0o644); err != nil {
		return err
	}
	show("", ctl(p.LB2, "reload"))
	if err := os.WriteFile(p.Files[p.LB2], good, 0o644); err != nil {
		return err
	}

	step("stopping both directors with SIGTERM")
	for _, h := range p.Directors() {
		start := time.Now()
		if err := p.Procs[h].Signal(syscall.SIGTERM); err != nil {
			return err
		}
		code, err := p.Procs[h].Wait(5 * time.Second)
		if err != nil {
			return err
		}
		fmt.Printf("%s: directord exited with code %d after %s\n", h.Name, code, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(lab.Failure{Err: err})
	}
	return b
}

func indent(b []byte) string {
	var out strings.Builder
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		out.WriteString("    " + line + "\n")
	}
	return out.String()
}

// show runs cmd and prints what it printed, indented, under a title.
func show(title string, cmd *exec.Cmd) {
	if title != "" {
		fmt.Printf("\n%s:\n", title)
	}
	out, err := cmd.CombinedOutput()
	fmt.Print(indent(out))
	if err != nil {
		fmt.Printf("    (%v)\n", err)
	}
}

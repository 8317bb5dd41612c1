// Command demo shows directord working in a lab of network namespaces on
// this machine: a client, two directors in LVS-NAT with conntrack sync, a
// witness for the cluster's quorum and three real servers. It runs a
// failover drill, then kills the master outright, and shows what the
// client saw: the gap, the HTTP requests, and that long-lived connections
// survived. Everything is removed afterwards, also on Ctrl-C. Run it with
// sudo make demo. With -scaleout (sudo make demo-scaleout) it shows three
// directors behind a BGP router instead (scaleout.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/directord/directord/internal/daemon/probe"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	scale := flag.Bool("scaleout", false, "the scale-out part: three directors behind a BGP router (make demo-scaleout)")
	flag.Parse()
	if err := run(*bin, *scale); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(bin string, scale bool) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo builds network namespaces: run it as root (sudo make demo)")
	}
	bins, err := scene.BinariesIn(bin)
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
	started := time.Now()
	if scale {
		if err := scaleOut(l, bins, tmp); err != nil {
			return err
		}
		fmt.Printf("\nthe demo took %s\n", time.Since(started).Round(100*time.Millisecond))
		return nil
	}

	step("building a lab of network namespaces (%s%s-*):\n"+
		"    client 192.0.2.50 ── front ── lb1 192.0.2.11 / lb2 192.0.2.12 ── back 203.0.113.0/24 ── rs1, rs2, rs3 (.11-.13)\n"+
		"                           └── w 192.0.2.13, a witness: the third Raft voter, no VRRP, no data plane\n"+
		"    LVS-NAT: the VIP 192.0.2.100 faces the client; the real servers' gateway, 203.0.113.1, is a second VIP\n"+
		"    in the same vrrp_sync_group. Each real server runs a small HTTP server (port 8000) and an echo service (8080).",
		lab.Prefix, l.ID())
	s, err := scene.NewSync(l, tmp, bins.Directord, bins.Directorctl, scene.SyncOptions{Sync: true, Cluster: true, HTTP: true})
	if err != nil {
		return err
	}
	lb1, lb2 := s.LB[0], s.LB[1]
	fmt.Printf("\nThe cluster's CA, the key pairs (lb1, lb2, w) and the gossip key were made with\n" +
		"    directorctl cluster certs --out DIR lb1=192.0.2.11,203.0.113.2 lb2=192.0.2.12,203.0.113.3 w=192.0.2.13\n" +
		"Raft, the commands forwarded to its leader and the conntrack sync run over mutual TLS; gossip is encrypted.\n")
	fmt.Printf("\nlb1's configuration, generated (lb2's differs in name, addresses and priority 100; keys hidden here):\n\n%s",
		indent(hideKeys(must(os.ReadFile(lb1.Conf)))))
	show("directord -t checks it", exec.Command(bins.Directord, "-t", "-c", lb1.Conf))
	if err := s.WaitCluster(30 * time.Second); err != nil {
		return err
	}
	ctl := func(d *scene.Director, args ...string) *exec.Cmd {
		return exec.Command(bins.Directorctl, append([]string{"--socket", d.Sock}, args...)...)
	}
	step("directord runs on lb1, lb2 and the witness; lb1 (priority 150) is MASTER of both VIPs")
	show("directorctl status on lb1", ctl(lb1, "status"))
	show("directorctl status on lb2", ctl(lb2, "status"))
	show("directorctl lvs on lb2: the backup's kernel is programmed too, ready to take over", ctl(lb2, "lvs"))
	show("directorctl cluster on lb1: the table is replicated with Raft", ctl(lb1, "cluster"))

	step("the client: an HTTP request to %s every 20ms, 20 long-lived connections to 192.0.2.100:80\n"+
		"    exchanging a message every 100ms, and a ping to the VIP every 5ms", scene.HTTPService)
	web := startRequests(s, scene.HTTPService, 20*time.Millisecond)
	defer web.stop()
	chat, err := s.Chat(20, "192.0.2.100:80")
	if err != nil {
		return err
	}
	defer chat.Close()
	var conn net.PacketConn
	if err := s.Client.Do(func() (err error) { conn, err = probe.Listen(); return err }); err != nil {
		return err
	}
	defer conn.Close()
	pr := probe.Start(context.Background(), conn, netip.MustParseAddr(scene.VIP), 5*time.Millisecond)
	defer pr.Stop()
	if err := pr.WaitAnswered(time.Time{}, 5*time.Second); err != nil {
		return err
	}
	if err := s.WaitSynced(20, 10*time.Second); err != nil {
		return err
	}
	chat.Start(100 * time.Millisecond)
	if err := web.wait(20, 5*time.Second); err != nil {
		return err
	}
	fmt.Printf("HTTP answers so far: %s\n", web.report())

	step("a failover drill on lb1: directorctl drill --back\n" +
		"    it checks that lb2 is ready, hands both VIPs over (priority 0), measures the gap from lb1 and hands back")
	show("", ctl(lb1, "drill", "--back"))
	fmt.Printf("HTTP answers so far: %s\n", web.report())

	step("lb1 dies: its cables are cut and every process on it is killed, as in a power loss")
	base := chat.Counts()
	at := time.Now()
	s.Crash(lb1)
	if err := lab.Eventually(10*time.Second, func() error { return s.Owns(lb2, true) }); err != nil {
		return err
	}
	took := time.Since(at)
	if err := pr.WaitAnswered(time.Now(), 5*time.Second); err != nil {
		return err
	}
	fmt.Printf("lb2 is MASTER %s after the crash; the client saw no answer for %s\n", took.Round(time.Millisecond), pr.Gap(at).Round(time.Millisecond))
	if err := chat.WaitMore(base, 5, 20*time.Second); err != nil {
		return err
	}
	survived, failures := chat.Stop()
	fmt.Printf("%d of %d long-lived connections survived the crash: each goes on with the same real server through lb2\n",
		survived, len(chat.Conns))
	for _, f := range failures {
		fmt.Printf("    %s\n", f)
	}
	fmt.Printf("the real servers saw %d connections end in an error\n", s.Resets())
	if err := web.wait(web.total()+20, 5*time.Second); err != nil {
		return err
	}
	fmt.Printf("HTTP answers so far: %s\n", web.report())
	show("directorctl status on lb2", ctl(lb2, "status"))
	show("directorctl cluster on lb2: lb1 is gone, lb2 and the witness keep the quorum", ctl(lb2, "cluster"))

	step("a broken configuration is refused and the running one kept: a misspelt key, then directorctl reload on lb2")
	good := must(os.ReadFile(lb2.Conf))
	if err := os.WriteFile(lb2.Conf, []byte(strings.Replace(string(good), "priority = 100", "priorty = 100", 1)), 0o644); err != nil {
		return err
	}
	show("", ctl(lb2, "reload"))
	if err := os.WriteFile(lb2.Conf, good, 0o644); err != nil {
		return err
	}

	step("stopping lb2 and the witness with SIGTERM")
	web.stop()
	for _, d := range []*scene.Director{lb2, s.Witness} {
		start := time.Now()
		if err := d.Proc.Signal(syscall.SIGTERM); err != nil {
			return err
		}
		code, err := d.Proc.Wait(10 * time.Second)
		if err != nil {
			return err
		}
		fmt.Printf("%s: directord exited with code %d after %s\n", d.Host.Name, code, time.Since(start).Round(time.Millisecond))
	}
	fmt.Printf("\nthe demo took %s\n", time.Since(started).Round(100*time.Millisecond))
	if survived != len(chat.Conns) {
		return fmt.Errorf("%d of %d long-lived connections broke", len(chat.Conns)-survived, len(chat.Conns))
	}
	return nil
}

// requests sends HTTP requests from the client at a fixed rate and counts
// the answers by real server, and the failures.
type requests struct {
	mu     sync.Mutex
	by     map[string]int
	failed int
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

func startRequests(s *scene.Sync, addr string, every time.Duration) *requests {
	r := &requests{by: map[string]int{}, done: make(chan struct{})}
	client := s.HTTPClient(time.Second)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-r.done:
				return
			case <-t.C:
			}
			server, err := get(client, "http://"+addr+"/")
			r.mu.Lock()
			if err != nil {
				r.failed++
			} else {
				r.by[server]++
			}
			r.mu.Unlock()
		}
	}()
	return r
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return strings.TrimPrefix(strings.TrimSpace(string(b)), "hello from "), nil
}

func (r *requests) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, v := range r.by {
		n += v
	}
	return n
}

// wait waits until n requests have been answered in all.
func (r *requests) wait(n int, timeout time.Duration) error {
	return lab.Eventually(timeout, func() error {
		if got := r.total(); got < n {
			return fmt.Errorf("%d HTTP requests answered, waiting for %d", got, n)
		}
		return nil
	})
}

func (r *requests) report() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names []string
	for k := range r.by {
		names = append(names, k)
	}
	slices.Sort(names)
	var parts []string
	for _, k := range names {
		parts = append(parts, fmt.Sprintf("%s %d", k, r.by[k]))
	}
	return fmt.Sprintf("%s; failed %d", strings.Join(parts, ", "), r.failed)
}

func (r *requests) stop() {
	r.once.Do(func() { close(r.done) })
	r.wg.Wait()
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(lab.Failure{Err: err})
	}
	return b
}

// hideKeys blanks the secrets of a file shown on the terminal.
func hideKeys(b []byte) []byte {
	return regexp.MustCompile(`(?m)^((encrypt_key|key) = ).*$`).ReplaceAll(b, []byte(`$1"(secret)"`))
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

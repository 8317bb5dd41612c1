package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"

	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

// lvsConfig is the director's file: web (tcp, wrr) with webReals, and dns
// (udp, rr) on the three real servers.
func lvsConfig(dir string, webReals []conf.Real) string {
	dns := conf.VirtualServer{Name: "dns", Address: "192.0.2.100:53", Protocol: "udp", Scheduler: "rr"}
	for i := range 3 {
		dns.Reals = append(dns.Reals, conf.Real{Address: fmt.Sprintf("%s:%d", scene.RealAddr(i), scene.UDPPort)})
	}
	return conf.File{
		Node: conf.Node{Name: "dir", DataDir: filepath.Join(dir, "data"), StatusSocket: filepath.Join(dir, "directord.sock")},
		VirtualServers: []conf.VirtualServer{
			{Name: "web", Address: "192.0.2.100:80", Scheduler: "wrr", Reals: webReals},
			dns,
		},
	}.String()
}

// realServers are the scene's real servers on TCPPort with these weights.
func realServers(weights ...int) []conf.Real {
	var out []conf.Real
	for i, w := range weights {
		out = append(out, conf.Real{Address: fmt.Sprintf("%s:%d", scene.RealAddr(i), scene.TCPPort), Extra: []string{fmt.Sprintf("weight = %d", w)}})
	}
	return out
}

func lvsStatus(t *testing.T, sock string) *api.LVSStatus {
	t.Helper()
	out, err := exec.Command(directorctl, "--socket", sock, "lvs", "--json").Output()
	if err != nil {
		t.Fatalf("directorctl lvs --json: %v", err)
	}
	var st api.LVSStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("decode %s: %v", out, err)
	}
	return &st
}

var reconciledLine = regexp.MustCompile(`msg="lvs reconciled".* ops=(\d+)`)

// reconciles lists the operation counts of the reconciles that did
// something, from the daemon's log.
func reconciles(log string) []string {
	var ops []string
	for _, m := range reconciledLine.FindAllStringSubmatch(log, -1) {
		ops = append(ops, m[1])
	}
	return ops
}

func findService(st *api.LVSStatus, name string) *api.LVSService {
	for i := range st.Services {
		if st.Services[i].Name == name {
			return &st.Services[i]
		}
	}
	return nil
}

// TestDaemonLoadBalances runs directord on the director of the lab with
// two virtual services on the nftables data plane (this kernel has no
// IPVS), sends real traffic through, reloads a change, and stops.
func TestDaemonLoadBalances(t *testing.T) {
	lab.Require(t, "nft")
	l := lab.New(t)
	s := scene.NewLVS(l, 3)
	s.Sysctl(s.Director, "net/ipv4/ip_forward", "0") // directord must set it
	dir := t.TempDir()
	file, sock := filepath.Join(dir, "directord.toml"), filepath.Join(dir, "directord.sock")
	writeFile(t, file, lvsConfig(dir, realServers(1, 2)))
	d := s.Director.Start(directord, "-c", file)
	if err := lab.Eventually(10*time.Second, func() error {
		if d.Exited() {
			return errors.New("directord exited")
		}
		if ops := reconciles(d.Output()); len(ops) == 0 {
			return errors.New("no reconcile yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.Output())
	}
	st := lvsStatus(t, sock)
	if st.Dataplane != "nftables" || !strings.HasPrefix(st.Reason, "auto: no IPVS") {
		t.Fatalf("data plane %q (%s), want nftables chosen by auto", st.Dataplane, st.Reason)
	}
	if len(st.Sysctls) != 1 || st.Sysctls[0].Key != "net.ipv4.ip_forward" || st.Sysctls[0].Was != "0" || st.Sysctls[0].Err != "" {
		t.Fatalf("sysctls %+v", st.Sysctls)
	}

	// Traffic: wrr 1:2 for TCP, rr over three for UDP.
	got := tally(t, 30, func() (string, error) { return s.Ask("", "192.0.2.100:80") })
	if got["rs1"] != 10 || got["rs2"] != 20 {
		t.Fatalf("wrr 1:2: %v", got)
	}
	udp := tally(t, 30, func() (string, error) { return s.AskUDP("192.0.2.100:53") })
	if udp["rs1"] != 10 || udp["rs2"] != 10 || udp["rs3"] != 10 {
		t.Fatalf("udp rr: %v", udp)
	}
	held, err := s.Open("", "192.0.2.100:80")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	// Reload: rs2's weight 2 -> 1, rs3 joins web; dns is untouched.
	writeFile(t, file, lvsConfig(dir, realServers(1, 1, 1)))
	if err := d.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(10*time.Second, func() error {
		web := findService(lvsStatus(t, sock), "web")
		if web == nil || len(web.Reals) != 3 {
			return errors.New("rs3 not in web yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.Output())
	}
	// Two reconciles did anything: 7 operations at start (2 services,
	// 5 real servers), 2 at the reload (one weight, one new server). The
	// reconciles every second in between found nothing to do.
	if ops := reconciles(d.Output()); !slices.Equal(ops, []string{"7", "2"}) {
		t.Fatalf("reconciles issued %v operations, want [7 2]\n%s", ops, d.Output())
	}
	st = lvsStatus(t, sock)
	// The counters of both services went on: nothing was rebuilt.
	web, dns := findService(st, "web"), findService(st, "dns")
	if web.Stats.Connections != 31 || dns.Stats.Connections != 30 {
		t.Fatalf("counters after the reload: web %d (want 31), dns %d (want 30)", web.Stats.Connections, dns.Stats.Connections)
	}
	if ans, err := held.Echo("ping"); err != nil || !strings.HasSuffix(ans, " ping") {
		t.Fatalf("connection across the reload: %q, %v", ans, err)
	}
	got = tally(t, 30, func() (string, error) { return s.Ask("", "192.0.2.100:80") })
	if got["rs1"] != 10 || got["rs2"] != 10 || got["rs3"] != 10 {
		t.Fatalf("wrr 1:1:1 after the reload: %v", got)
	}

	// The table as an operator reads it.
	out, err := exec.Command(directorctl, "--socket", sock, "lvs").CombinedOutput()
	if err != nil {
		t.Fatalf("directorctl lvs: %v\n%s", err, out)
	}
	for _, want := range []string{"dataplane nftables (auto: no IPVS", "TCP  192.0.2.100:80 wrr (web)", "UDP  192.0.2.100:53 rr (dns)", "-> 203.0.113.13:8080", "Masq"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("directorctl lvs lacks %q:\n%s", want, out)
		}
	}
	t.Logf("directorctl lvs:\n%s", out)

	// Stopping removes directord's table.
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := d.Wait(5 * time.Second); err != nil || code != 0 {
		t.Fatalf("SIGTERM: exit %d, %v\n%s", code, err, d.Output())
	}
	if out := s.Director.MustRun("nft", "list", "tables"); strings.Contains(out, "directord") {
		t.Fatalf("table left after stop:\n%s", out)
	}
}

// TestConfigCheckDataplane: directord -t rejects what the chosen data
// plane cannot do, naming the line.
func TestConfigCheckDataplane(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "d.toml")
	writeFile(t, file, `[node]
name = "x"

[dataplane]
kind = "nftables"

[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
scheduler = "lc"
forwarding = "tun"
  [[virtual_server.real_server]]
  address = "203.0.113.11:80"

[[virtual_server]]
name = "dr"
address = "192.0.2.101:80"
scheduler = "mh"
forwarding = "dr"
  [[virtual_server.real_server]]
  address = "203.0.113.11:80"
`)
	_, stderr, code := run(t, directord, "-t", "-c", file)
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, stderr)
	}
	for _, want := range []string{
		file + ":10: virtual_server[0].scheduler: the nftables data plane schedules with rr, wrr, sh, mh only; lc needs IPVS",
		file + ":11: virtual_server[0].forwarding: the nftables data plane forwards by nat, dr only; tun needs IPVS",
		file + ":19: virtual_server[1].forwarding: direct routing on the nftables data plane needs dataplane.dr_interface",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
}

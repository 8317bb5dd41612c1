package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/directord/directord/cluster/pki"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/lvs"
	"github.com/directord/directord/lvs/lvstest"
	dsync "github.com/directord/directord/sync"
	"github.com/directord/directord/vrrp"
	"github.com/directord/directord/vrrp/vrrptest"
)

// These tests run the whole daemon as any user: VRRP on vrrptest's fake
// link, the load balancer on lvstest's map, health checks against
// listeners on loopback, the status API on a socket in a temporary
// directory. The kernel paths are tested in internal/e2e.

// fakeHost is one daemon on fakes.
type fakeHost struct {
	d      *Daemon
	file   string
	dp     *lvstest.Fake
	wire   *vrrptest.Node
	client *status.Client
	log    *lab.Buffer
	dump   chan string // as SIGUSR1/SIGUSR2
	stop   func()      // stops the daemon (the test's end does too)
	bgp    *fakeAnnouncer
}

// hostConfig is a director's file: one VRRP instance, one virtual server
// whose real servers are the given loopback listeners, checked by tcp.
func hostConfig(dir string, prio int, vips []string, reals []netip.AddrPort, nodeExtra ...string) string {
	web := conf.VirtualServer{Name: "web", Address: "192.0.2.100:80", Scheduler: "wrr",
		Check: &conf.Check{Type: "tcp", Interval: "50ms", Timeout: "50ms", Extra: []string{"rise = 1", "fall = 1", `warmup = "0s"`}}}
	for _, r := range reals {
		web.Reals = append(web.Reals, conf.Real{Address: r.String()})
	}
	return conf.File{
		Node:           conf.Node{Name: "lb1", DataDir: filepath.Join(dir, "data"), StatusSocket: filepath.Join(dir, "s.sock"), Extra: nodeExtra},
		VRRP:           []conf.Instance{{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, AdvertInt: "20ms", VIPs: vips}},
		VirtualServers: []conf.VirtualServer{web},
	}.String()
}

// fakeDeps are Deps on fakes; sysctls are recorded, not written.
func fakeDeps(wire *vrrptest.Node, dp *lvstest.Fake) Deps {
	return Deps{
		VRRP: wire.Deps(nil),
		Dataplane: func(c config.Dataplane, _ *slog.Logger) (lvs.Dataplane, string, error) {
			return dp, "fake for kind " + c.Kind, nil
		},
		Sysctls: func(ss []lvs.Sysctl) []lvs.Sysctl {
			out := slices.Clone(ss)
			for i := range out {
				out[i].Was = out[i].Want
			}
			return out
		},
		ConnSync:   func(dsync.Config) (ConnSync, error) { return nil, errors.New("no conntrack sync on fakes") },
		Cluster:    KernelDeps().Cluster, // Raft and gossip need no root on loopback
		Privileges: func() error { return nil },
	}
}

func startHost(t *testing.T, hub *vrrptest.Hub, src string, text string) *fakeHost {
	t.Helper()
	return startHostWith(t, hub, src, text, nil)
}

// startHostWith is startHost with the deps changed by with (nil: none);
// a BGP speaker it returns is the host's.
func startHostWith(t *testing.T, hub *vrrptest.Hub, src string, text string, with func(*Deps, *lvstest.Fake) *fakeAnnouncer) *fakeHost {
	t.Helper()
	dir := t.TempDir()
	h := &fakeHost{file: filepath.Join(dir, "d.toml"), dp: lvstest.NewFake(),
		wire: vrrptest.NewNode(hub, netip.MustParseAddr(src)), log: &lab.Buffer{}}
	writeConfig(t, h.file, text)
	cfg, err := config.Load(h.file)
	if err != nil {
		t.Fatal(err)
	}
	h.dump = make(chan string)
	deps := fakeDeps(h.wire, h.dp)
	if with != nil {
		h.bgp = with(&deps, h.dp)
	}
	h.d, err = New(cfg, Options{ConfigFile: h.file, Version: "test", Log: h.log, Dump: h.dump}, deps)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", cfg.Node.StatusSocket)
	if err != nil {
		t.Fatal(err)
	}
	h.client = status.NewClient(cfg.Node.StatusSocket)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.d.Run(ctx, ln) }()
	var once sync.Once
	var runErr error
	h.stop = func() { once.Do(func() { cancel(); runErr = <-done }) }
	t.Cleanup(func() {
		h.stop()
		if runErr != nil {
			t.Errorf("daemon: %v", runErr)
		}
		if t.Failed() {
			t.Logf("log of %s:\n%s", src, h.log.String())
		}
	})
	return h
}

func writeConfig(t *testing.T, file, text string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// listener accepts and closes connections on a loopback port until the
// test ends.
func listener(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	lab.AcceptAndClose(ln)
	return netip.MustParseAddrPort(ln.Addr().String())
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}

func (h *fakeHost) status(t *testing.T) api.Document {
	t.Helper()
	var doc api.Document
	if err := h.client.Get(context.Background(), "/v1/status", &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func (h *fakeHost) eventually(t *testing.T, what string, cond func(doc api.Document) error) api.Document {
	t.Helper()
	var doc api.Document
	if err := lab.Eventually(5*time.Second, func() error {
		doc = h.status(t)
		return cond(doc)
	}); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return doc
}

// TestDaemonOnFakes starts a director alone on a fake link: it becomes
// MASTER and holds the VIP, programs the virtual server, checks both real
// servers and takes the dead one out, and says so in every status section.
func TestDaemonOnFakes(t *testing.T) {
	up, down := listener(t), closedPort(t)
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, []netip.AddrPort{up, down}))
	doc := h.eventually(t, "master with the dead server out", func(doc api.Document) error {
		if !isMaster(doc) {
			return fmt.Errorf("vrrp %+v", doc.VRRP)
		}
		if s := doc.LVS.Services; len(s) != 1 || len(s[0].Reals) != 1 || s[0].Reals[0].Addr != up {
			return fmt.Errorf("lvs %+v", doc.LVS.Services)
		}
		return nil
	})
	if !h.wire.Addrs.Holds(netip.MustParsePrefix("192.0.2.100/24")) || h.wire.Announcer.Count() == 0 {
		t.Fatal("the master does not hold and announce the VIP")
	}
	if doc.APIVersion != api.Version || doc.Node.Name != "lb1" || doc.Node.Version != "test" || doc.Config.Generation != 1 ||
		doc.Config.VirtualServers != 1 || doc.Config.VRRPInstances != 1 {
		t.Fatalf("node %+v config %+v", doc.Node, doc.Config)
	}
	if doc.LVS.Dataplane != "fake" || doc.LVS.Capabilities == nil || !slices.Contains(doc.LVS.Capabilities.Forwarding, "dr") {
		t.Fatalf("lvs %+v", doc.LVS)
	}
	if doc.Cluster != nil || doc.Sync != nil || doc.Drills == nil || doc.Health == nil {
		t.Fatalf("sections: cluster %v sync %v drills %v health %v", doc.Cluster, doc.Sync, doc.Drills, doc.Health)
	}
	state := map[netip.AddrPort]bool{}
	for _, c := range doc.Health.Checks {
		state[c.ID.Real] = c.Up
	}
	if len(state) != 2 || !state[up] || state[down] {
		t.Fatalf("health %+v", doc.Health.Checks)
	}
	// A section by itself, and one this daemon does not have.
	var vrrpOnly api.VRRPStatus
	if err := h.client.Get(context.Background(), "/v1/status/vrrp", &vrrpOnly); err != nil || len(vrrpOnly.Instances) != 1 {
		t.Fatalf("/v1/status/vrrp: %+v %v", vrrpOnly, err)
	}
	var ae *status.APIError
	if err := h.client.Get(context.Background(), "/v1/status/cluster", &struct{}{}); !errors.As(err, &ae) || ae.Status != 404 {
		t.Fatalf("/v1/status/cluster without [cluster]: %v", err)
	}
}

// TestDaemonReload: what each kind of change restarts, what it applies in
// place, and a broken file that changes nothing.
func TestDaemonReload(t *testing.T) {
	dir := t.TempDir()
	up, up2 := listener(t), listener(t)
	vip := []string{"192.0.2.100/24"}
	base := hostConfig(dir, 150, vip, []netip.AddrPort{up})
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", base)
	h.eventually(t, "master with its table", func(doc api.Document) error {
		if !isMaster(doc) || len(doc.LVS.Services) != 1 || len(doc.LVS.Services[0].Reals) != 1 {
			return fmt.Errorf("%+v %+v", doc.VRRP.Instances, doc.LVS.Services)
		}
		return nil
	})
	reload := func(text string) api.ReloadResult {
		t.Helper()
		writeConfig(t, h.file, text)
		var res api.ReloadResult
		err := h.client.Post(context.Background(), "/v1/reload", nil, &res)
		var ae *status.APIError
		if errors.As(err, &ae) {
			return api.ReloadResult{Problems: ae.Details}
		}
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	transitions := func() uint64 { return h.status(t).VRRP.Instances[0].Transitions }
	before := transitions()

	for _, tc := range []struct {
		name         string
		text         string
		vrrp, vs     api.Delta
		live, restrt []string
		started      []string // VRRP instances (re)started
		inPlace      []string
		transitions  bool // the instance may go through transitions
		problem      string
	}{
		{name: "no change", text: base},
		{name: "priority: in place", text: hostConfig(dir, 160, vip, []netip.AddrPort{up}),
			vrrp: api.Delta{Changed: []string{"VI_1"}}, inPlace: []string{"VI_1"}},
		{name: "a VIP more: in place, as keepalived", text: hostConfig(dir, 160, append(vip, "192.0.2.101/24"), []netip.AddrPort{up}),
			vrrp: api.Delta{Changed: []string{"VI_1"}}, inPlace: []string{"VI_1"}},
		{name: "a real server more: the table only", text: hostConfig(dir, 160, append(vip, "192.0.2.101/24"), []netip.AddrPort{up, up2}),
			vs: api.Delta{Changed: []string{"web"}}},
		{name: "log level: live", text: hostConfig(dir, 160, append(vip, "192.0.2.101/24"), []netip.AddrPort{up, up2}, `log_level = "debug"`),
			live: []string{"node.log_level"}},
		{name: "metrics address: after a restart", text: hostConfig(dir, 160, append(vip, "192.0.2.101/24"), []netip.AddrPort{up, up2},
			`log_level = "debug"`, `metrics_listen = "127.0.0.1:0"`), restrt: []string{"node.metrics_listen"}},
		{name: "another VRID: the instance restarts", text: strings.Replace(hostConfig(dir, 160, append(vip, "192.0.2.101/24"), []netip.AddrPort{up, up2},
			`log_level = "debug"`, `metrics_listen = "127.0.0.1:0"`), "virtual_router_id = 51", "virtual_router_id = 52", 1),
			vrrp: api.Delta{Changed: []string{"VI_1"}}, started: []string{"VI_1"}, transitions: true},
		{name: "broken: nothing changes", text: hostConfig(dir, 160, []string{"192.0.2.300/24"}, []netip.AddrPort{up}),
			problem: `vrrp_instance[0].virtual_ipaddress[0]: "192.0.2.300/24" is not an address in CIDR notation`},
	} {
		res := reload(tc.text)
		if tc.problem != "" {
			if res.OK || len(res.Problems) == 0 || !strings.Contains(strings.Join(res.Problems, "\n"), tc.problem) {
				t.Fatalf("%s: %+v", tc.name, res)
			}
			continue
		}
		if !res.OK || res.Changes == nil {
			t.Fatalf("%s: %+v", tc.name, res)
		}
		c := res.Changes
		if !equalDelta(c.VRRP, tc.vrrp) || !equalDelta(c.VirtualServers, tc.vs) || !slices.Equal(c.Live, tc.live) || !slices.Equal(c.Restart, tc.restrt) {
			t.Fatalf("%s: changes %+v", tc.name, c)
		}
		if !slices.Equal(res.VRRPStarted, tc.started) || !slices.Equal(res.VRRPInPlace, tc.inPlace) {
			t.Fatalf("%s: VRRP started %v, in place %v; want %v, %v", tc.name, res.VRRPStarted, res.VRRPInPlace, tc.started, tc.inPlace)
		}
		doc := h.eventually(t, tc.name+": master again", func(doc api.Document) error {
			if !isMaster(doc) {
				return fmt.Errorf("vrrp %+v", doc.VRRP.Instances)
			}
			return nil
		})
		if now := doc.VRRP.Instances[0].Transitions; now != before && !tc.transitions {
			t.Fatalf("%s: %d transitions, %d before", tc.name, now, before)
		}
		before = transitions()
	}
	doc := h.eventually(t, "the second real server in the table", func(doc api.Document) error {
		if n := len(doc.LVS.Services[0].Reals); n != 2 {
			return fmt.Errorf("%d real servers", n)
		}
		return nil
	})
	if doc.Config.Generation != 8 || doc.Config.ReloadsOK != 7 || doc.Config.ReloadsFailed != 1 || doc.Config.LastReload.OK {
		t.Fatalf("config %+v", doc.Config)
	}
	if vips := doc.VRRP.Instances[0].VIPs; len(vips) != 2 {
		t.Fatalf("the broken file changed the running VIPs: %v", vips)
	}
	// The table grew by one real server: one kernel operation, not a
	// service re-made.
	var adds []string
	for _, op := range h.dp.Ops {
		adds = append(adds, op.String())
	}
	if n := len(slices.DeleteFunc(adds, func(s string) bool { return !strings.HasPrefix(s, "add-service") })); n != 1 {
		t.Fatalf("the service was added %d times: %v", n, h.dp.Ops)
	}
}

// isMaster: the one instance, VI_1, is MASTER.
func isMaster(doc api.Document) bool {
	in := doc.VRRP.Instances
	return len(in) == 1 && in[0].State == api.StateMaster
}

func equalDelta(a, b api.Delta) bool {
	return slices.Equal(a.Added, b.Added) && slices.Equal(a.Removed, b.Removed) && slices.Equal(a.Changed, b.Changed)
}

// TestDaemonDrillAndFailover: a drill on the backup is refused and names
// the master; one on the master without [cluster] is refused by the gate;
// neither moves anything. A planned failover hands over to the backup.
func TestDaemonDrillAndFailover(t *testing.T) {
	hub := &vrrptest.Hub{}
	up := listener(t)
	lb1 := startHost(t, hub, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, []netip.AddrPort{up}))
	lb2 := startHost(t, hub, "192.0.2.12", hostConfig(t.TempDir(), 100, []string{"192.0.2.100/24"}, []netip.AddrPort{up}))
	state := func(h *fakeHost) string {
		if in := h.status(t).VRRP.Instances; len(in) == 1 {
			return in[0].State
		}
		return ""
	}
	if err := lab.Eventually(5*time.Second, func() error {
		if a, b := state(lb1), state(lb2); a != api.StateMaster || b != api.StateBackup {
			return fmt.Errorf("lb1 %s, lb2 %s", a, b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	drill := func(h *fakeHost) api.DrillResult {
		t.Helper()
		var res api.DrillResult
		if err := h.client.Post(context.Background(), "/v1/drill", api.DrillRequest{}, &res); err != nil {
			t.Fatal(err)
		}
		return res
	}
	var res api.DrillResult
	if err := lb2.client.Post(context.Background(), "/v1/drill", api.DrillRequest{}, &res); err == nil ||
		err.Error() != "name the instance to drill with --instance (mastered here: none)" {
		t.Fatalf("drill of no instance on the backup: %+v %v", res, err)
	}
	if err := lb2.client.Post(context.Background(), "/v1/drill", api.DrillRequest{Instance: "VI_1"}, &res); err != nil ||
		res.Refused != "VI_1 is BACKUP here: run the drill on its master (192.0.2.11)" {
		t.Fatalf("drill on the backup: %+v %v", res, err)
	}
	res = drill(lb1)
	if res.OK || !strings.HasPrefix(res.Refused, "no [cluster]") || len(res.Checks) != 1 || res.Checks[0].Name != "peer" {
		t.Fatalf("drill without a cluster: %+v", res)
	}
	if state(lb1) != api.StateMaster {
		t.Fatal("a refused drill moved the instance")
	}
	if d := lb1.status(t).Drills; d == nil || len(d.Drills) != 1 || d.Drills[0].Refused == "" {
		t.Fatalf("drills in status: %+v", d)
	}

	var fo api.FailoverResult
	if err := lb1.client.Post(context.Background(), "/v1/vrrp/VI_1/failover", api.FailoverRequest{Hold: "1h"}, &fo); err != nil {
		t.Fatal(err)
	}
	if fo.Instance != "VI_1" || fo.Hold != "1h0m0s" || fo.Now.Name != "VI_1" {
		t.Fatalf("failover: %+v", fo)
	}
	if err := lab.Eventually(5*time.Second, func() error {
		if a, b := state(lb1), state(lb2); a != api.StateBackup || b != api.StateMaster {
			return fmt.Errorf("lb1 %s, lb2 %s", a, b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// freePort is a loopback address with a port nothing listens on.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestDaemonClusterOnLoopback: a one-node cluster (Raft and gossip on
// loopback) seeds the table from the file, a drain through the API is
// committed and programmed, and the cluster section reports it.
func TestDaemonClusterOnLoopback(t *testing.T) {
	dir := t.TempDir()
	up, up2 := listener(t), listener(t)
	f := conf.File{
		Node: conf.Node{Name: "lb1", DataDir: filepath.Join(dir, "data"), StatusSocket: filepath.Join(dir, "s.sock")},
		Cluster: &conf.Cluster{Bind: freePort(t), RaftBind: freePort(t), Members: []string{"lb1"},
			EncryptKey: "ZGlyZWN0b3JkIHN5bmNsYWIgZ29zc2lwIGtleSwgMzI=", TLS: certs(t, dir, "lb1")},
		VirtualServers: []conf.VirtualServer{{Name: "web", Address: "192.0.2.100:80", Scheduler: "wrr",
			Reals: []conf.Real{{Address: up.String()}, {Address: up2.String()}}}},
	}
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", f.String())
	h.eventually(t, "a seeded one-node cluster", func(doc api.Document) error {
		if c := doc.Cluster; c == nil || c.RaftState != "Leader" || !c.Seeded || c.Gossip != "aes" {
			return fmt.Errorf("cluster %+v", doc.Cluster)
		}
		return nil
	})
	var res api.ClusterResult
	if err := h.client.Post(context.Background(), "/v1/cluster", api.ClusterRequest{Op: api.OpRSDrain, Service: "web", Real: up2.String()}, &res); err != nil || !res.Applied {
		t.Fatalf("drain: %+v %v", res, err)
	}
	h.eventually(t, "the drain in the table", func(doc api.Document) error {
		for _, s := range doc.LVS.Services {
			for _, r := range s.Reals {
				if r.Addr == up2 && r.Weight == 0 {
					return nil
				}
			}
		}
		return fmt.Errorf("lvs %+v", doc.LVS.Services)
	})
	// A refused command is an error naming why, and changes nothing.
	err := h.client.Post(context.Background(), "/v1/cluster", api.ClusterRequest{Op: api.OpRSDrain, Service: "nope", Real: up2.String()}, &res)
	var ae *status.APIError
	if !errors.As(err, &ae) || ae.Status != 422 {
		t.Fatalf("drain of an unknown service: %v", err)
	}
	// The replicated table is validated like the file: what would panic
	// in the FSM, busy-loop or run a command is refused, naming the key.
	before := h.status(t).Cluster.StateIndex
	for _, bad := range []struct{ doc, want string }{
		{`"health_check":{"type":"http","interval":1000000000,"timeout":1000000,"rise":1,"fall":1,"path":"/","method":"GET","body_regex":"("}`,
			"virtual_server.web.health_check.body_regex: error parsing regexp"},
		{`"health_check":{"type":"tcp","interval":0,"timeout":0,"rise":1,"fall":1}`,
			"virtual_server.web.health_check.interval: 0s is out of range"},
		{`"health_check":{"type":"exec","interval":1000000000,"timeout":1000000,"rise":1,"fall":1,"command":["/bin/sh","-c","id"]}`,
			"virtual_server.web.health_check.command: commands never travel through the cluster"},
	} {
		doc := json.RawMessage(`{"name":"web","address":"192.0.2.100:80","protocol":"tcp","scheduler":"wrr","forwarding":"nat","quorum":1,` +
			`"real_server":[{"address":"` + up.String() + `","weight":1,"forwarding":"nat"}],` + bad.doc + `}`)
		for _, req := range []api.ClusterRequest{
			{Op: api.OpApply, Services: map[string]json.RawMessage{"web": doc}},
			{Op: api.OpVSPut, Service: "web", Document: doc},
		} {
			err := h.client.Post(context.Background(), "/v1/cluster", req, &res)
			if !errors.As(err, &ae) || ae.Status != 422 || !strings.Contains(err.Error(), bad.want) {
				t.Errorf("%s with %s: got %v, want 422 naming %q", req.Op, bad.doc, err, bad.want)
			}
		}
	}
	if st := h.status(t); st.Cluster.StateIndex != before || st.Cluster.RaftState != "Leader" {
		t.Fatalf("after refused writes: table index %d (was %d), raft %s", st.Cluster.StateIndex, before, st.Cluster.RaftState)
	}
	// Programmed vs committed: the kernel holds the committed table...
	h.eventually(t, "the committed table programmed", func(doc api.Document) error {
		if c := doc.Cluster; c.ProgrammedIndex != c.StateIndex || c.TableError != "" || c.CacheError != "" {
			return fmt.Errorf("committed %d, programmed %d, error %q %q", c.StateIndex, c.ProgrammedIndex, c.TableError, c.CacheError)
		}
		return nil
	})
	// ...until the data plane fails to program a new one: status says so
	// and the programmed index stays behind.
	h.dp.SetFail(func(op lvs.Op) error {
		if op.Service.Key.Addr.Port() == 81 {
			return errors.New("injected: the kernel refuses")
		}
		return nil
	})
	doc81 := json.RawMessage(`{"name":"web81","address":"192.0.2.100:81","protocol":"tcp","scheduler":"wrr","forwarding":"nat","quorum":1,` +
		`"drain_timeout":300000000000,"real_server":[{"address":"` + up.String() + `","weight":1,"forwarding":"nat"}]}`)
	if err := h.client.Post(context.Background(), "/v1/cluster", api.ClusterRequest{Op: api.OpVSPut, Service: "web81", Document: doc81}, &res); err != nil {
		t.Fatal(err)
	}
	h.eventually(t, "the failure to program shown", func(doc api.Document) error {
		if c := doc.Cluster; c.ProgrammedIndex >= c.StateIndex || !strings.Contains(c.TableError, "injected: the kernel refuses") {
			return fmt.Errorf("committed %d, programmed %d, error %q", c.StateIndex, c.ProgrammedIndex, c.TableError)
		}
		return nil
	})
	h.dp.SetFail(nil)
	h.eventually(t, "programmed once the kernel takes it", func(doc api.Document) error {
		if c := doc.Cluster; c.ProgrammedIndex != c.StateIndex || c.TableError != "" {
			return fmt.Errorf("committed %d, programmed %d, error %q", c.StateIndex, c.ProgrammedIndex, c.TableError)
		}
		return nil
	})
}

// certs writes a CA and name's key pair (for 127.0.0.1) under dir.
func certs(t *testing.T, dir, name string) conf.TLS {
	t.Helper()
	c, err := conf.Certs(filepath.Join(dir, "certs"), pki.Member{Name: name, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	return c[name]
}

// /v1/config shows health-check header names, never their values.
func TestConfigRedactsHeaders(t *testing.T) {
	dir := t.TempDir()
	f := conf.File{
		Node: conf.Node{Name: "lb1", DataDir: filepath.Join(dir, "data"), StatusSocket: filepath.Join(dir, "s.sock")},
		VirtualServers: []conf.VirtualServer{{Name: "web", Address: "192.0.2.100:80",
			Check: &conf.Check{Type: "http", Extra: []string{`headers = { "Authorization" = "Bearer s3cret-token" }`}},
			Reals: []conf.Real{{Address: listener(t).String()}}}},
	}
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", f.String())
	var raw json.RawMessage
	if err := h.client.Get(context.Background(), "/v1/config", &raw); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "s3cret") || !strings.Contains(string(raw), `"Authorization":"(redacted)"`) {
		t.Fatalf("/v1/config: %s", raw)
	}
	// What runs still has the value.
	if hc := h.d.config().VirtualServers[0].HealthCheck; hc.Headers["Authorization"] != "Bearer s3cret-token" {
		t.Fatalf("the running config lost its header: %+v", hc.Headers)
	}
}

// VRRP never waits on the cluster: with a corrupt raft.db the director
// still becomes MASTER and serves its table, and status says why the
// cluster is not running. (On main the daemon did not start at all.)
func TestDaemonRunsWithoutItsCluster(t *testing.T) {
	dir := t.TempDir()
	up := listener(t)
	f := conf.File{
		Node: conf.Node{Name: "lb1", DataDir: filepath.Join(dir, "data"), StatusSocket: filepath.Join(dir, "s.sock")},
		Cluster: &conf.Cluster{Bind: freePort(t), RaftBind: freePort(t), Members: []string{"lb1"},
			EncryptKey: "ZGlyZWN0b3JkIHN5bmNsYWIgZ29zc2lwIGtleSwgMzI=", TLS: certs(t, dir, "lb1")},
		VRRP: []conf.Instance{{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 150, AdvertInt: "20ms", VIPs: []string{"192.0.2.100/24"}}},
		VirtualServers: []conf.VirtualServer{{Name: "web", Address: "192.0.2.100:80", Scheduler: "wrr",
			Reals: []conf.Real{{Address: up.String()}}}},
	}
	if err := os.MkdirAll(filepath.Join(dir, "data", "cluster"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data", "cluster", "raft.db"), []byte("not a bolt database, not at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", f.String())
	h.eventually(t, "MASTER, with the cluster's error shown", func(doc api.Document) error {
		if !isMaster(doc) {
			return fmt.Errorf("vrrp %+v", doc.VRRP)
		}
		if c := doc.Cluster; c == nil || !strings.Contains(c.Error, "raft store") {
			return fmt.Errorf("cluster %+v", doc.Cluster)
		}
		if s := doc.LVS.Services; len(s) != 1 {
			return fmt.Errorf("lvs %+v", s)
		}
		return nil
	})
}

// Certificates rotate without a restart: new files at the same paths and
// a reload, and the Raft port presents the new certificate.
func TestClusterCertificateRotation(t *testing.T) {
	dir := t.TempDir()
	raftAddr := freePort(t)
	files := certs(t, dir, "lb1")
	f := conf.File{
		Node: conf.Node{Name: "lb1", DataDir: filepath.Join(dir, "data"), StatusSocket: filepath.Join(dir, "s.sock")},
		Cluster: &conf.Cluster{Bind: freePort(t), RaftBind: raftAddr, Members: []string{"lb1"},
			EncryptKey: "ZGlyZWN0b3JkIHN5bmNsYWIgZ29zc2lwIGtleSwgMzI=", TLS: files},
	}
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", f.String())
	h.eventually(t, "a one-node cluster", func(doc api.Document) error {
		if c := doc.Cluster; c == nil || c.RaftState != "Leader" {
			return fmt.Errorf("cluster %+v", doc.Cluster)
		}
		return nil
	})
	ca, err := pki.LoadCA(files.CA, filepath.Join(filepath.Dir(files.CA), "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	loop := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	client, err := ca.Issue("lb1", loop, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(client.Cert, client.Key)
	if err != nil {
		t.Fatal(err)
	}
	// The serial of the certificate the Raft port presents.
	served := func() string {
		c, err := tls.Dial("tcp", raftAddr, &tls.Config{Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	old := served()
	next, err := ca.Issue("lb1", loop, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeConfig(t, files.Cert, string(next.Cert))
	writeConfig(t, files.Key, string(next.Key))
	var res api.ReloadResult
	if err := h.client.Post(context.Background(), "/v1/reload", nil, &res); err != nil || !res.OK || len(res.Problems) != 0 {
		t.Fatalf("reload: %+v %v", res, err)
	}
	block, _ := pem.Decode(next.Cert)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if now := served(); now == old || now != leaf.SerialNumber.String() {
		t.Fatalf("after the reload the Raft port presents serial %s (before %s, new %s)", now, old, leaf.SerialNumber)
	}
}

// A director that left its cluster holds its VRRP instances in FAULT, so
// that it cannot be MASTER with a table nobody updates; rejoin lifts it.
func TestLeaveHoldsVRRP(t *testing.T) {
	dir := t.TempDir()
	loop := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	tlsFiles, err := conf.Certs(filepath.Join(dir, "certs"), pki.Member{Name: "lb1", IPs: loop}, pki.Member{Name: "lb2", IPs: loop})
	if err != nil {
		t.Fatal(err)
	}
	hub := &vrrptest.Hub{}
	gossip := map[string]string{"lb1": freePort(t), "lb2": freePort(t)}
	hosts := map[string]*fakeHost{}
	for i, name := range []string{"lb1", "lb2"} {
		other := "lb2"
		if name == "lb2" {
			other = "lb1"
		}
		d := filepath.Join(dir, name)
		f := conf.File{
			Node: conf.Node{Name: name, DataDir: filepath.Join(d, "data"), StatusSocket: filepath.Join(d, "s.sock")},
			Cluster: &conf.Cluster{Bind: gossip[name], RaftBind: freePort(t), Peers: []string{gossip[other]}, Members: []string{"lb1", "lb2"},
				EncryptKey: "ZGlyZWN0b3JkIHN5bmNsYWIgZ29zc2lwIGtleSwgMzI=", TLS: tlsFiles[name]},
			VRRP: []conf.Instance{{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: 150 - 50*i, AdvertInt: "20ms", VIPs: []string{"192.0.2.100/24"}}},
		}
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		hosts[name] = startHost(t, hub, fmt.Sprintf("192.0.2.%d", 11+i), f.String())
	}
	lb2 := hosts["lb2"]
	lb2.eventually(t, "a formed cluster, lb2 BACKUP", func(doc api.Document) error {
		if c := doc.Cluster; c == nil || c.Leader == "" || len(doc.VRRP.Instances) != 1 || doc.VRRP.Instances[0].State != api.StateBackup {
			return fmt.Errorf("cluster %+v, vrrp %+v", doc.Cluster, doc.VRRP.Instances)
		}
		return nil
	})
	if err := lb2.client.Post(context.Background(), "/v1/cluster/leave", struct{}{}, &api.LeaveResult{}); err != nil {
		t.Fatal(err)
	}
	lb2.eventually(t, "lb2 held in FAULT", func(doc api.Document) error {
		in := doc.VRRP.Instances[0]
		if in.State != api.StateFault || in.LastTransition == nil || !strings.Contains(in.LastTransition.Reason, "left the cluster") || !doc.Cluster.Left {
			return fmt.Errorf("vrrp %+v %+v, left %v", in, in.LastTransition, doc.Cluster.Left)
		}
		return nil
	})
	// A node that led when it left hands the leadership over first: the
	// rejoin answers "no quorum, nothing was changed" until lb1 leads,
	// which an operator retries as this does.
	if err := lab.Eventually(15*time.Second, func() error {
		return lb2.client.Post(context.Background(), "/v1/cluster/rejoin", struct{}{}, &api.LeaveResult{})
	}); err != nil {
		t.Fatal(err)
	}
	lb2.eventually(t, "lb2 BACKUP again", func(doc api.Document) error {
		if in := doc.VRRP.Instances[0]; in.State != api.StateBackup || doc.Cluster.Left {
			return fmt.Errorf("vrrp %+v, left %v", in, doc.Cluster.Left)
		}
		return nil
	})
}

// vrrp_startup_delay holds VRRP back: its first transition comes no
// sooner than the delay after the start.
func TestVRRPStartupDelay(t *testing.T) {
	start := time.Now()
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, nil, `vrrp_startup_delay = "300ms"`))
	doc := h.eventually(t, "master", func(doc api.Document) error {
		if !isMaster(doc) {
			return fmt.Errorf("vrrp %+v", doc.VRRP)
		}
		return nil
	})
	in := doc.VRRP.Instances[0]
	first := in.LastTransition.At
	if in.Transitions > 1 {
		// The last transition is BACKUP→MASTER; the first came a
		// Master_Down_Interval earlier at least, and after the delay.
		first = first.Add(-3 * 20 * time.Millisecond)
	}
	if first.Sub(start) < 300*time.Millisecond {
		t.Fatalf("VRRP started %s after the daemon, before the delay", first.Sub(start))
	}
}

// A vrrp_script with user runs as that user: touching a file in a
// directory only root may write fails as nobody (on main the key was
// refused; without it the script ran as root).
func TestScriptRunsAsItsUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the script runs as nobody")
	}
	dir := t.TempDir() // 0700, root's
	script := func(user string) string {
		return fmt.Sprintf("\n[[vrrp_script]]\nname = \"chk\"\nscript = [\"/usr/bin/touch\", %q]\ninterval = \"50ms\"\n%s", filepath.Join(dir, "f"), user)
	}
	for _, tc := range []struct {
		user string
		ok   bool
	}{{"", true}, {`user = "nobody"`, false}} {
		h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, nil)+script(tc.user))
		h.eventually(t, "the script's verdict", func(doc api.Document) error {
			s := doc.VRRP.Scripts
			if len(s) != 1 || s[0].Runs == 0 || s[0].OK != tc.ok {
				return fmt.Errorf("%q: scripts %+v", tc.user, s)
			}
			return nil
		})
	}
}

// SIGUSR1 and SIGUSR2 (here their channel) write the status beside the
// status socket, as keepalived's data and statistics dumps; on main they
// were ignored.
func TestStatusDumps(t *testing.T) {
	dir := t.TempDir()
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(dir, 150, []string{"192.0.2.100/24"}, []netip.AddrPort{listener(t)}))
	h.eventually(t, "master", func(doc api.Document) error {
		if !isMaster(doc) {
			return fmt.Errorf("vrrp %+v", doc.VRRP)
		}
		return nil
	})
	for _, tc := range []struct{ kind, file string }{{"data", "directord.json"}, {"stats", "directord.stats.json"}} {
		h.dump <- tc.kind
		path := filepath.Join(dir, tc.file)
		// The file is written before the line is logged, so both are
		// waited for: checking the log as soon as the file parses raced.
		logged := fmt.Sprintf(`msg="status dumped" kind=%s file=%s`, tc.kind, path)
		var doc api.Document
		deadline := time.Now().Add(5 * time.Second)
		for {
			b, err := os.ReadFile(path)
			parsed := err == nil && json.Unmarshal(b, &doc) == nil
			if parsed && strings.Contains(h.log.String(), logged) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: parsed %v (%v), logged %v", path, parsed, err, strings.Contains(h.log.String(), logged))
			}
			time.Sleep(10 * time.Millisecond)
		}
		if doc.VRRP == nil || doc.LVS == nil || (tc.kind == "data") != (doc.Node != nil) {
			t.Fatalf("%s dump: node %v, vrrp %v, lvs %v", tc.kind, doc.Node != nil, doc.VRRP != nil, doc.LVS != nil)
		}
	}
}

// notify_master_rx_lower_pri runs when the master hears a lower priority,
// with keepalived's arguments (on main the key was refused).
func TestNotifyMasterRxLowerPri(t *testing.T) {
	hub := &vrrptest.Hub{}
	text := strings.Replace(hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, nil), `advert_int = "20ms"`,
		"advert_int = \"20ms\"\nnotify_master_rx_lower_pri = [\"/bin/true\"]", 1)
	h := startHost(t, hub, "192.0.2.11", text)
	h.eventually(t, "master", func(doc api.Document) error {
		if !isMaster(doc) {
			return fmt.Errorf("vrrp %+v", doc.VRRP)
		}
		return nil
	})
	low := netip.MustParseAddr("192.0.2.5")
	adv := (&vrrp.Advert{Version: 3, VRID: 51, Priority: 50, Interval: 20 * time.Millisecond,
		Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.100")}}).Marshal(low, vrrp.GroupIPv4, true)
	hub.Inject(vrrptest.Packet{B: adv, Src: low, Dst: vrrp.GroupIPv4, TTL: 255}, nil)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(h.log.String(), `msg="notify program ran" instance=VI_1 state=MASTER program=/bin/true`) {
		if time.Now().After(deadline) {
			t.Fatalf("the program did not run:\n%s", h.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A vrrp_track_file's number moves the instance's priority within about
// a second of the file changing (keepalived's track_file).
func TestTrackFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "load")
	text := strings.Replace(hostConfig(dir, 100, []string{"192.0.2.100/24"}, nil), `advert_int = "20ms"`, "advert_int = \"20ms\"\ntrack_file = [\"load\"]", 1) +
		fmt.Sprintf("\n[[vrrp_track_file]]\nname = \"load\"\nfile = %q\nweight = -10\n", file)
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", text)
	prio := func(want uint8) {
		t.Helper()
		h.eventually(t, fmt.Sprintf("priority %d", want), func(doc api.Document) error {
			if len(doc.VRRP.Instances) != 1 {
				return fmt.Errorf("vrrp %+v", doc.VRRP)
			}
			if p := doc.VRRP.Instances[0].Priority; p != want {
				return fmt.Errorf("priority %d", p)
			}
			return nil
		})
	}
	prio(100) // no file yet: 0, and logged (wait for it: the file must
	// not appear before the first reading)
	if err := lab.Eventually(5*time.Second, func() error {
		if !strings.Contains(h.log.String(), `vrrp_track_file counts as 0`) {
			return errors.New("the missing file was not logged")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	writeConfig(t, file, "3\n")
	prio(70)
}

// /v1/config (directorctl config) writes durations as the file does and
// empty lists as []; on main they were nanoseconds and null.
func TestConfigShowsDurations(t *testing.T) {
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, nil))
	var raw json.RawMessage
	if err := h.client.Get(context.Background(), "/v1/config", &raw); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"advert_int":"20ms"`, `"track_interface":[]`, `"virtual_ipaddress":["192.0.2.100/24"]`, `"reconcile_interval":"1s"`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("/v1/config lacks %s:\n%s", want, raw)
		}
	}
	if strings.Contains(string(raw), "null") || strings.Contains(string(raw), "auth_pass") {
		t.Errorf("/v1/config:\n%s", raw)
	}
}

// A planned failover with no other director to take over is undone and
// fails, instead of reporting a handover that did not happen (on main it
// succeeded). --force hands over anyway; with nobody there, the machine
// takes the addresses back after its Master_Down_Interval.
func TestFailoverWithoutBackup(t *testing.T) {
	hub := &vrrptest.Hub{}
	lb1 := startHost(t, hub, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, nil))
	master := func(doc api.Document) error {
		if in := doc.VRRP.Instances; len(in) != 1 || in[0].State != api.StateMaster {
			return fmt.Errorf("lb1 %+v", in)
		}
		return nil
	}
	lb1.eventually(t, "lb1 master", master)
	var fo api.FailoverResult
	err := lb1.client.Post(context.Background(), "/v1/vrrp/VI_1/failover", api.FailoverRequest{Hold: "1h"}, &fo)
	if err == nil || !strings.Contains(err.Error(), "no other director took over") {
		t.Fatalf("failover with nobody to take over: %+v, %v", fo, err)
	}
	lb1.eventually(t, "lb1 master again after the undone failover", master)
	if err := lb1.client.Post(context.Background(), "/v1/vrrp/VI_1/failover", api.FailoverRequest{Hold: "1h", Force: true}, &fo); err != nil || fo.Instance != "VI_1" {
		t.Fatalf("forced failover: %+v, %v", fo, err)
	}
}

// Without [cluster], rs drain|disable|weight|enable work on this director
// (on main: POST /v1/cluster 404), are shown in status, survive a restart
// from data_dir, and vs add says it needs a cluster.
func TestLocalOverrides(t *testing.T) {
	dir := t.TempDir()
	up, up2 := listener(t), listener(t)
	text := hostConfig(dir, 150, []string{"192.0.2.100/24"}, []netip.AddrPort{up, up2})
	weightOf := func(doc api.Document, addr netip.AddrPort) (int, bool) {
		if doc.LVS == nil {
			return 0, false
		}
		for _, s := range doc.LVS.Services {
			for _, r := range s.Reals {
				if r.Addr == addr {
					return r.Weight, true
				}
			}
		}
		return 0, false
	}
	post := func(h *fakeHost, req api.ClusterRequest) error {
		var res api.ClusterResult
		return h.client.Post(context.Background(), "/v1/cluster", req, &res)
	}
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", text)
	if err := post(h, api.ClusterRequest{Op: api.OpRSDrain, Service: "web", Real: up2.String()}); err != nil {
		t.Fatalf("drain without a cluster: %v", err)
	}
	h.eventually(t, "the drain programmed and shown", func(doc api.Document) error {
		if w, ok := weightOf(doc, up2); !ok || w != 0 || doc.LVS.Overrides["web"][up2.String()] != "drain" {
			return fmt.Errorf("weight %d (%v), overrides %v", w, ok, doc.LVS.Overrides)
		}
		return nil
	})
	if err := post(h, api.ClusterRequest{Op: api.OpRSWeight, Service: "web", Real: up.String(), Weight: 7}); err != nil {
		t.Fatal(err)
	}
	var ae *status.APIError
	for _, bad := range []api.ClusterRequest{
		{Op: api.OpRSDrain, Service: "nope", Real: up2.String()},
		{Op: api.OpRSDrain, Service: "web", Real: "192.0.2.99:80"},
		{Op: api.OpVSDel, Service: "web"},
	} {
		if err := post(h, bad); !errors.As(err, &ae) || ae.Status != 422 {
			t.Errorf("%+v: %v, want 422", bad, err)
		}
	}
	h.stop()

	// Another run on the same data_dir keeps them.
	h2 := startHost(t, &vrrptest.Hub{}, "192.0.2.11", text)
	h2.eventually(t, "the overrides after a restart", func(doc api.Document) error {
		w2, ok2 := weightOf(doc, up2)
		w1, ok1 := weightOf(doc, up)
		if !ok1 || !ok2 || w2 != 0 || w1 != 7 {
			return fmt.Errorf("weights %d %d", w1, w2)
		}
		return nil
	})
	for _, r := range []netip.AddrPort{up, up2} {
		if err := post(h2, api.ClusterRequest{Op: api.OpRSEnable, Service: "web", Real: r.String()}); err != nil {
			t.Fatal(err)
		}
	}
	h2.eventually(t, "enabled again", func(doc api.Document) error {
		if w, _ := weightOf(doc, up2); w != 1 || len(doc.LVS.Overrides) != 0 {
			return fmt.Errorf("weight %d, overrides %v", w, doc.LVS.Overrides)
		}
		return nil
	})
}

// TestDaemonReportsRefusedService: a service the kernel refuses shows in
// status with the kernel's error and in directord_lvs_service_refused;
// the rest of the table is programmed.
func TestDaemonReportsRefusedService(t *testing.T) {
	up := listener(t)
	dir := t.TempDir()
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(dir, 150, []string{"192.0.2.100/24"}, []netip.AddrPort{up}))
	h.eventually(t, "web programmed", func(doc api.Document) error {
		if len(doc.LVS.Services) != 1 || len(doc.LVS.Services[0].Reals) != 1 {
			return fmt.Errorf("%+v", doc.LVS.Services)
		}
		return nil
	})
	h.dp.SetFail(func(op lvs.Op) error {
		if op.Service.Scheduler == "rr" {
			return errors.New("no such file or directory")
		}
		return nil
	})
	text := strings.Replace(hostConfig(dir, 150, []string{"192.0.2.100/24"}, []netip.AddrPort{up}), `scheduler = "wrr"`, `scheduler = "rr"`, 1)
	text += "\n[[virtual_server]]\nname = \"other\"\naddress = \"192.0.2.100:81\"\nscheduler = \"wrr\"\n  [[virtual_server.real_server]]\n  address = \"" + up.String() + "\"\n"
	writeConfig(t, h.file, text)
	if err := h.client.Post(context.Background(), "/v1/reload", nil, &api.ReloadResult{}); err != nil {
		t.Fatal(err)
	}
	h.eventually(t, "web refused, other programmed", func(doc api.Document) error {
		lr := doc.LVS.LastReconcile
		if !strings.Contains(lr.Refused["tcp 192.0.2.100:80"], "no such file or directory") || len(lr.Refused) != 1 || len(doc.LVS.Services) != 2 {
			return fmt.Errorf("refused %v, services %+v", lr.Refused, doc.LVS.Services)
		}
		return nil
	})
	mfs, err := h.d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, mf := range mfs {
		if mf.GetName() == "directord_lvs_service_refused" {
			for _, m := range mf.GetMetric() {
				found = found || (m.GetLabel()[0].GetValue() == "web" && m.GetGauge().GetValue() == 1)
			}
		}
	}
	if !found {
		t.Fatal("no directord_lvs_service_refused{service=\"web\"} 1")
	}
	if !strings.Contains(h.log.String(), "the kernel refused a virtual service") {
		t.Fatalf("not logged:\n%s", h.log.String())
	}
}

// TestDaemonFlows: GET /v1/lvs/flows gives the data plane's connections
// and templates, sorted, with the service in the status's terms; POST
// /v1/lvs/zero zeroes the counters.
func TestDaemonFlows(t *testing.T) {
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, nil))
	ap := netip.MustParseAddrPort
	web := lvs.Key{Protocol: lvs.TCP, Addr: ap("192.0.2.100:80")}
	h.dp.SetFlows([]lvs.Flow{
		{Protocol: lvs.TCP, Client: ap("192.0.2.51:1000"), Service: web, Real: ap("203.0.113.11:80"), State: "ESTABLISHED", Expires: time.Minute},
		{Client: ap("192.0.2.50:0"), Service: lvs.Key{FWMark: 7}, Real: ap("203.0.113.12:0"), State: "NONE", Expires: time.Second, Template: true},
		{Protocol: lvs.TCP, Client: ap("192.0.2.50:1000"), Service: web, Real: ap("203.0.113.11:80"), State: "TIME_WAIT", Expires: time.Second},
	})
	var fl api.LVSFlows
	if err := h.client.Get(context.Background(), "/v1/lvs/flows", &fl); err != nil {
		t.Fatal(err)
	}
	if fl.Dataplane != "fake" || len(fl.Flows) != 3 {
		t.Fatalf("%+v", fl)
	}
	mark, first := fl.Flows[0], fl.Flows[1] // by service: "fwmark 7 ipv4" before "tcp ..."
	if first.Client != ap("192.0.2.50:1000") || first.Service.Addr != web.Addr || first.State != "TIME_WAIT" || first.Expires != "1s" {
		t.Fatalf("first flow %+v", first)
	}
	if mark.Service.FWMark != 7 || mark.Service.Addr.IsValid() || !mark.Template {
		t.Fatalf("the mark's template %+v", mark)
	}
	// directorctl lvs --zero.
	if err := h.client.Post(context.Background(), "/v1/lvs/zero", nil, &struct{}{}); err != nil || h.dp.Zeroes() != 1 {
		t.Fatalf("zero: %v, %d calls", err, h.dp.Zeroes())
	}
}

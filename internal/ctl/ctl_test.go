package ctl

import (
	"bytes"
	"encoding/json"
	"flag"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func TestMain(m *testing.M) {
	// Times print in the local zone; the golden files are in UTC.
	time.Local = time.UTC
	os.Exit(m.Run())
}

var (
	t0   = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	rs1  = netip.MustParseAddrPort("203.0.113.11:8080")
	rs2  = netip.MustParseAddrPort("203.0.113.12:8080")
	web  = api.LVSKey{Protocol: "tcp", Addr: netip.MustParseAddrPort("192.0.2.100:80")}
	leg  = &api.DrillLeg{Gap: "61ms", GapMS: 61, Unanswered: "12ms-73ms", Took: "80ms", Master: "198.51.100.12", MasterNode: "lb2"}
	back = &api.DrillLeg{Gap: "55ms", GapMS: 55, Unanswered: "3ms-58ms", Took: "70ms", Master: "198.51.100.11", MasterNode: "lb1"}
)

// fixture is what the fake daemon answers.
func fixture() (api.Document, api.DrillResult) {
	lvsStatus := &api.LVSStatus{
		Dataplane: "nftables", Reason: "auto: no IPVS in this kernel",
		Capabilities: &api.Capabilities{Schedulers: []string{"rr", "wrr", "sh"}, Forwarding: []string{"nat"}, Features: []string{"masquerade", "conntrack_sync"}},
		Sysctls:      []api.Sysctl{{Key: "net.ipv4.ip_forward", Want: "1", Was: "0", Why: "nat"}},
		Timeouts:     &api.Timeouts{TCP: "15m0s", TCPFin: "2m0s", UDP: "0s"},
		LastReconcile: api.Reconcile{Ops: 3, At: t0, Duration: "1.2ms", Err: "apply to nftables: 1 of the services refused, the rest programmed; tcp 192.0.2.100:81: nftables transaction: no such file or directory",
			Refused: map[string]string{"tcp 192.0.2.100:81": "nftables transaction: no such file or directory"}},
		Services: []api.LVSService{{Name: "web", LVSKey: web, Scheduler: "sh", Flags: api.FlagSched1 | api.FlagSched2,
			Persistence: 300 * time.Second, PersistenceBits: 24, QuorumUp: true, Draining: []netip.AddrPort{rs2},
			Stats: api.LVSStats{Connections: 10, PacketsIn: 100, PacketsOut: 90, BytesIn: 5000, BytesOut: 9000},
			Reals: []api.LVSReal{{Addr: rs1, Weight: 2, Method: "nat", Active: 3, Inactive: 1, Stats: api.LVSStats{Connections: 7}},
				{Addr: rs2, Weight: 0, Method: "nat", Stats: api.LVSStats{Connections: 3}}}},
			{LVSKey: api.LVSKey{FWMark: 7, IPv6: true}, Scheduler: "rr", QuorumUp: false, Reals: []api.LVSReal{}},
			{Name: "v6", LVSKey: api.LVSKey{Protocol: "tcp", Addr: netip.MustParseAddrPort("[2001:db8::100]:443")}, Scheduler: "wlc", OnePacket: true,
				Persistence: 60 * time.Second, PersistenceBits: 64, QuorumUp: true, Stats: api.LVSStats{CPS: 12, PPSIn: 340, PPSOut: 300, BPSIn: 56000, BPSOut: 780000},
				Reals: []api.LVSReal{{Addr: netip.MustParseAddrPort("[2001:db8::11]:443"), Weight: 5, Method: "dr", Upper: 100, Lower: 50, Stats: api.LVSStats{CPS: 12}},
					{Addr: netip.MustParseAddrPort("[2001:db8::12]:443"), Weight: 1, Method: "tun"}}}},
	}
	drill := api.DrillResult{Number: 2, Instance: "VI_1", Node: "lb1", Peer: "lb2", Started: t0, Duration: "1.4s", OK: true,
		Checks: []api.DrillCheck{{Name: "peer", OK: true, Detail: "lb2 is alive"}, {Name: "raft", OK: true, Detail: "caught up"}},
		Probe:  "ICMP echo to 192.0.2.100 every 5ms", AdvertInt: "100ms", Handover: leg, Back: back, Moved: []string{"VI_1 192.0.2.100/24"}}
	doc := api.Document{
		APIVersion: api.Version,
		Node:       &api.NodeStatus{Name: "lb1", Version: "v1.2", PID: 42, StartedAt: t0, Uptime: "1h0m0s"},
		Config: &api.ConfigStatus{File: "/etc/directord/directord.toml", LoadedAt: t0, Generation: 3, ReloadsOK: 2, ReloadsFailed: 1,
			LastReload: &api.ReloadResult{At: t0.Add(time.Minute), Problems: []string{"d.toml:3: node.name: must not be empty"}},
			Dataplane:  "auto", VRRPInstances: 1, VirtualServers: 1, Cluster: true},
		VRRP: &api.VRRPStatus{Instances: []api.VRRPInstance{{Name: "VI_1", Interface: "eth0", VRID: 51, Version: 3,
			VIPs: []string{"192.0.2.100/24"}, State: api.StateMaster, Priority: 150, Master: "198.51.100.11", AdvertInt: time.Second,
			LastTransition: &api.VRRPTransition{From: "BACKUP", To: "MASTER", Reason: "no advertisement from the master for 3.6s", At: t0},
			AdvertsSent:    100, AdvertsReceived: 2, Transitions: 2, Drops: map[string]uint64{"ttl": 1, "auth": 2}, Error: ""}},
			Scripts: []api.ScriptStatus{{Name: "chk_nginx", OK: true, Runs: 12, LastResult: "ok"}, {Name: "chk_db", Runs: 3, LastResult: "exit status 1"}}},
		LVS: lvsStatus,
		Health: &api.HealthStatus{Checks: []api.CheckStatus{
			{ID: api.CheckID{Service: "web", Real: rs1}, Check: "tcp", Up: true, Weight: -1, Since: t0.Add(-90 * time.Second), Checks: 50,
				LastAt: t0, LastOK: true, Latency: "1ms", Transitions: 1},
			{ID: api.CheckID{Service: "web", Real: rs2}, Check: "http", Up: false, Weight: -1, Since: t0.Add(-10 * time.Second), Checks: 50,
				Failures: 3, LastAt: t0, LastError: "connection refused", Latency: "0s", Transitions: 2}}},
		Cluster: &api.ClusterStatus{ID: "lb1", Role: "director", RaftState: "Leader", Leader: "lb1", Term: "3", CommitIndex: "12",
			Applied: 12, LastContact: "0", RaftTLS: true, Gossip: "aes", StateIndex: 11, Seeded: true, FileDiffers: []string{"web"},
			ClusterID: "5e1f2a9c0d3b4e77", RefusedConnections: 4, ProgrammedIndex: 10,
			TableError: "the table at index 11 is not in force here: tcp 192.0.2.100:81: scheduler twos: no such file or directory", Refused: map[string]string{"evil": "virtual_server.evil.health_check.command: commands never travel through the cluster"},
			Conflicts: []string{"x belongs to another cluster (0a1b; this one is 5e1f2a9c0d3b4e77): refusing to merge"},
			Members: []api.ClusterMember{{Name: "lb1", Gossip: "198.51.100.11:7946", Raft: "198.51.100.11:7947", State: "alive", Role: "director"},
				{Name: "w", Gossip: "198.51.100.13:7946", Raft: "198.51.100.13:7947", State: "suspect", Role: "witness"}}},
		Sync:   &api.SyncStatus{Role: "master", Peer: "198.51.100.12:7001", Connected: true},
		Drills: &api.DrillsStatus{Drills: []api.DrillResult{{Number: 1, Instance: "VI_1", Started: t0, Refused: "lb2 has not caught up"}, drill}},
	}
	return doc, drill
}

// fakeDaemon answers directorctl's requests with the fixture.
func fakeDaemon(t *testing.T) string {
	t.Helper()
	doc, drill := fixture()
	mux := http.NewServeMux()
	reply := func(v any) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(v) }
	}
	mux.Handle("GET /v1/status", reply(doc))
	mux.Handle("GET /v1/status/lvs", reply(doc.LVS))
	mux.Handle("GET /v1/status/cluster", reply(doc.Cluster))
	mux.Handle("POST /v1/drill", reply(drill))
	mux.Handle("POST /v1/lvs/zero", reply(struct{}{}))
	mux.Handle("GET /v1/lvs/flows", reply(api.LVSFlows{Dataplane: "nftables", Flows: []api.LVSFlow{
		{Protocol: "tcp", Client: netip.MustParseAddrPort("192.0.2.50:40000"), Service: web, Real: rs1, State: "ESTABLISHED", Expires: "7m59s"},
		{Protocol: "tcp", Client: netip.MustParseAddrPort("192.0.2.51:40001"), Service: web, Real: rs2, State: "TIME_WAIT", Expires: "1m0s"},
		{Protocol: "udp", Client: netip.MustParseAddrPort("192.0.2.50:5353"), Service: api.LVSKey{Protocol: "udp", Addr: netip.MustParseAddrPort("192.0.2.100:53")},
			Real: netip.MustParseAddrPort("203.0.113.11:53"), State: "UDP", Expires: "29s"},
		{Protocol: "tcp", Client: netip.MustParseAddrPort("192.0.2.50:0"), Service: web, Real: rs1, State: "NONE", Expires: "4m59s", Template: true},
	}}))
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnprocessableEntity)
		json.NewEncoder(w).Encode(api.ErrorBody{Error: "configuration rejected; the running configuration is unchanged",
			Details: []string{"d.toml:3: node.name: must not be empty"}})
	})
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// TestRender runs directorctl's commands against the fixture and compares
// what they print with testdata/*.golden (go test -update rewrites them).
func TestRender(t *testing.T) {
	sock := fakeDaemon(t)
	for _, tc := range []struct {
		golden string
		args   []string
		code   int
	}{
		{"status", []string{"status"}, 0},
		{"lvs", []string{"lvs"}, 0},
		{"lvs-rate", []string{"lvs", "--rate"}, 0},
		{"lvs-save", []string{"lvs", "save"}, 0},
		{"lvs-bad", []string{"lvs", "list"}, 2},
		{"lvs-conns", []string{"lvs", "--conns"}, 0},
		{"lvs-conns-service", []string{"lvs", "--conns", "192.0.2.100:53"}, 0},
		{"lvs-persistence", []string{"lvs", "--persistence"}, 0},
		{"lvs-zero", []string{"lvs", "--zero"}, 0},
		{"cluster", []string{"cluster"}, 0},
		{"drill", []string{"drill", "--back"}, 0},
		{"reload-refused", []string{"reload"}, 1},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"--socket", sock}, tc.args...), &stdout, &stderr, env{now: func() time.Time { return t0 }, version: "test"})
		if code != tc.code {
			t.Errorf("%v: exit %d, want %d; stderr: %s", tc.args, code, tc.code, stderr.String())
		}
		got := append(stdout.Bytes(), stderr.Bytes()...)
		file := filepath.Join("testdata", tc.golden+".golden")
		if *update {
			if err := os.WriteFile(file, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%v printed:\n%s\nwant (%s):\n%s", tc.args, got, file, want)
		}
	}
}

// cluster certs writes a CA and a pair per member, 0600, and prints lines
// that make a valid [cluster] for each; run again, it reuses the CA.
func TestClusterCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	var out, errb bytes.Buffer
	if code := run([]string{"cluster", "certs", "--out", dir, "lb1=192.0.2.11", "lb2=192.0.2.12,2001:db8::12", "w=192.0.2.13"}, &out, &errb, env{now: time.Now, version: "test"}); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "lb1.pem", "lb1-key.pem", "lb2.pem", "lb2-key.pem", "w.pem", "w-key.pem"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, err, st)
		}
	}
	// lb2's lines, pasted into its [cluster], make a valid file.
	text := out.String()
	i := strings.Index(text, "# lb2\n")
	if i < 0 {
		t.Fatalf("no lines for lb2:\n%s", text)
	}
	lines := text[i+len("# lb2\n"):]
	lines = lines[:strings.Index(lines, "\n\n")]
	file := "[node]\nname = \"lb2\"\n[cluster]\nbind = \"192.0.2.12:7946\"\nraft_bind = \"192.0.2.12:7000\"\n" + lines + "\n"
	cfg, err := config.Parse("lb2.toml", []byte(file))
	if err != nil {
		t.Fatalf("%v\n%s", err, file)
	}
	if c := cfg.Cluster; len(c.Members) != 3 || len(c.EncryptKey) != 32 {
		t.Fatalf("cluster %+v", c)
	}
	// Again into the same directory, for a new member: the same CA.
	out.Reset()
	if code := run([]string{"cluster", "certs", "--out", dir, "lb3=192.0.2.14"}, &out, &errb, env{now: time.Now, version: "test"}); code != 0 || !strings.Contains(out.String(), "signed with the CA in") {
		t.Fatalf("exit %d: %s%s", code, out.String(), errb.String())
	}
	// Bad arguments are refused.
	for _, args := range [][]string{{"cluster", "certs", "lb1=192.0.2.11"}, {"cluster", "certs", "--out", dir, "lb1"}, {"cluster", "certs", "--out", dir, "lb9=nope"}} {
		if code := run(args, &out, &errb, env{now: time.Now, version: "test"}); code == 0 {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestNotRunning: without a daemon directorctl says so in one line.
func TestNotRunning(t *testing.T) {
	var stdout, stderr bytes.Buffer
	sock := filepath.Join(t.TempDir(), "none.sock")
	if code := Main("test", []string{"--socket", sock, "status"}, &stdout, &stderr); code != exitNotRunning {
		t.Fatalf("exit %d", code)
	}
	if want := "directorctl: directord is not running (no socket at " + sock + ")\n"; stderr.String() != want || stdout.Len() != 0 {
		t.Fatalf("stderr %q, want %q", stderr.String(), want)
	}
}

// directorctl's conventions: --version and --help on stdout with exit 0,
// each command's own help, a flag of another command refused (exit 2),
// usage mistakes exit 2. On main --help went to stderr with exit 2 and
// "status --back --dry-run" was accepted.
func TestConventions(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		args         []string
		code         int
		stdout, errs string
	}{
		{[]string{"--version"}, 0, "directorctl test\n", ""},
		{[]string{"--help"}, 0, "usage: directorctl", ""},
		{[]string{"-h"}, 0, "exit status: 0 done, 1 refused or failed, 2 usage, 3 directord not reachable", ""},
		{[]string{"drill", "--help"}, 0, "--probe", ""},
		{[]string{"--socket", sock, "status", "--back", "--dry-run"}, 2, "", "directorctl status: --back, --dry-run: not a flag of status"},
		{[]string{"--socket", sock, "rs", "drain"}, 2, "", "usage: directorctl rs"},
		{[]string{"--socket", sock, "frobnicate"}, 2, "", `unknown command "frobnicate"`},
		{[]string{"--socket", sock, "status", "--nope"}, 2, "", "flag provided but not defined: -nope"},
		{[]string{"--socket", sock, "status"}, 3, "", "directord is not running"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tc.args, &stdout, &stderr, env{now: time.Now, version: "test"})
		if code != tc.code || !strings.Contains(stdout.String(), tc.stdout) || !strings.Contains(stderr.String(), tc.errs) ||
			(tc.stdout == "" && stdout.Len() > 0) || (tc.errs == "" && stderr.Len() > 0) {
			t.Errorf("%v: exit %d\nstdout: %s\nstderr: %s", tc.args, code, stdout.String(), stderr.String())
		}
	}
}

package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/cluster/pki"
)

const minimal = `
[node]
name = "lb1"
`

func TestExampleIsValid(t *testing.T) {
	_, self, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(self), "..", "..", "etc", "directord.toml")
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("etc/directord.toml: %v", err)
	}
	if cfg.Node.Name != "lb1" || len(cfg.VRRP) != 1 || len(cfg.VirtualServers) != 1 || cfg.Cluster != nil {
		t.Fatalf("example decoded wrongly: %+v", cfg)
	}
	// The [cluster] it shows, commented out, is valid once the files and
	// the key that directorctl cluster certs makes are filled in.
	text, _ := os.ReadFile(path)
	dir := t.TempDir()
	ca, err := pki.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files, err := pki.WriteAll(dir, ca, []pki.Member{{Name: "lb1", IPs: []netip.Addr{netip.MustParseAddr("192.0.2.11")}}, {Name: "lb2"}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Uncomment the block: its lines start "#key" (no space after the
	// mark, unlike the comments around it).
	var out []string
	in := false
	for _, l := range strings.Split(string(text), "\n") {
		in = in && strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "# ") || l == "#[cluster]"
		if in {
			l = strings.NewReplacer(`"..."`, `"ZGlyZWN0b3JkIHN5bmNsYWIgZ29zc2lwIGtleSwgMzI="`, "/etc/directord/cluster/lb1.pem", files.Cert["lb1"],
				"/etc/directord/cluster/lb1-key.pem", files.Key["lb1"], "/etc/directord/cluster/ca.pem", files.CA).Replace(l[1:])
		}
		out = append(out, l)
	}
	cfg, err = Parse("example with [cluster]", []byte(strings.Join(out, "\n")))
	if err != nil {
		t.Fatalf("the example's [cluster], filled in: %v", err)
	}
	if c := cfg.Cluster; c == nil || len(c.Members) != 3 || c.BootstrapExpect != 3 || len(c.EncryptKey) != 32 {
		t.Fatalf("the example's [cluster] decoded wrongly: %+v", cfg.Cluster)
	}
	// Another node's certificate is refused: the peers would not take it.
	other := strings.NewReplacer(files.Cert["lb1"], files.Cert["lb2"], files.Key["lb1"], files.Key["lb2"]).Replace(strings.Join(out, "\n"))
	if _, err := Parse("f.toml", []byte(other)); err == nil || !strings.Contains(err.Error(), `cluster.tls_cert: `+files.Cert["lb2"]+` names [lb2], not this node "lb1"`) {
		t.Fatalf("lb2's certificate on lb1: %v", err)
	}
	vs := cfg.VirtualServers[0]
	if len(vs.RealServers) != 2 || vs.RealServers[1].Weight != 2 || vs.HealthCheck.Fall != 3 {
		t.Fatalf("virtual server decoded wrongly: %+v", vs)
	}
}

func TestDefaults(t *testing.T) {
	cfg, err := Parse("m.toml", []byte(minimal+`
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 7
virtual_ipaddress = ["192.0.2.1", "192.0.2.2/24"]

[[virtual_server]]
name = "dns"
address = "192.0.2.1:53"
  [virtual_server.health_check]
  type = "http"
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node.StatusSocket != DefaultStatusSocket || cfg.Node.DataDir != DefaultDataDir || cfg.Node.LogFormat != "text" || cfg.Node.LogLevel != "info" {
		t.Errorf("node defaults: %+v", cfg.Node)
	}
	if cfg.Dataplane.Kind != "auto" || cfg.Cluster != nil {
		t.Errorf("dataplane %q, cluster %v", cfg.Dataplane.Kind, cfg.Cluster)
	}
	in := cfg.VRRP[0]
	if in.Priority != 100 || in.Version != 3 || in.AdvertInt != time.Second || !in.Preempt {
		t.Errorf("vrrp defaults: %+v", in)
	}
	if in.GARPMasterDelay != 5*time.Second || in.GARPMasterRepeat != 5 || in.GARPMasterRefresh != 0 || in.Notify.Timeout != 10*time.Second {
		t.Errorf("vrrp garp/notify defaults: %+v", in)
	}
	if want := netip.MustParsePrefix("192.0.2.1/32"); in.VIPs[0] != want {
		t.Errorf("bare VIP = %v, want %v", in.VIPs[0], want)
	}
	vs := cfg.VirtualServers[0]
	if vs.Protocol != "tcp" || vs.Scheduler != "wlc" || vs.Forwarding != "nat" || vs.HealthCheck.Path != "/" {
		t.Errorf("virtual server defaults: %+v %+v", vs, vs.HealthCheck)
	}
}

// problems parses src and returns its problems as "line key: msg" strings.
func problems(t *testing.T, src string) []string {
	t.Helper()
	_, err := Parse("f.toml", []byte(src))
	if err == nil {
		return nil
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error is %T, not *Error: %v", err, err)
	}
	var out []string
	for _, p := range ce.Problems {
		if p.File != "f.toml" {
			t.Errorf("problem names file %q", p.File)
		}
		out = append(out, p.String())
	}
	return out
}

func TestProblems(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  string
		want []string // each must appear, in order, as a substring of one problem
	}{
		{"missing node", `[dataplane]
kind = "auto"`, []string{"f.toml: node: missing [node] section"}},
		{"syntax error", "[node]\nname = \"lb1\nx = 1\n", []string{"f.toml:2: "}},
		{"type mismatch", "[node]\nname = \"lb1\"\n[[vrrp_instance]]\npriority = \"high\"\n", []string{"f.toml:3: vrrp_instance[0].name: required", "f.toml:3: vrrp_instance[0].interface: required",
			"f.toml:3: vrrp_instance[0].virtual_router_id: required", "f.toml:3: vrrp_instance[0].virtual_ipaddress: required",
			"f.toml:4: vrrp_instance.priority: want a number, not a string"}},
		{"every type mismatch at once, with the other problems", minimal + "[[vrrp_instance]]\nname = 7\ninterface = \"eth0\"\nvirtual_router_id = \"one\"\npriority = 300\nvirtual_ipaddress = [\"192.0.2.1\"]\npreempt = \"no\"\n",
			[]string{"f.toml:5: vrrp_instance.name: want a string, not a number",
				"f.toml:7: vrrp_instance.virtual_router_id: want a number, not a string",
				"f.toml:8: vrrp_instance[0].priority: 300 is out of range",
				"f.toml:10: vrrp_instance.preempt: want true or false, not a string"}},
		{"table mismatch in TOML's words", "node = 5\n", []string{"f.toml:1: node: want a table, not a number"}},
		{"bgp", minimal + `[bgp]
local_as = 0
router_id = "2001:db8::1"
communities = ["65001:100", "70000:1", "1:2:3", "+1:2"]
  [[bgp.neighbor]]
  address = "192.0.2.1"
  peer_as = 65000
  hold_time = "3500ms"
  [[bgp.neighbor]]
  address = "192.0.2.1"
  hold_time = "1m"
`, []string{"f.toml:5: bgp.local_as: 0 is out of range [1, 4294967295]",
			`f.toml:6: bgp.router_id: "2001:db8::1" is not an IPv4 address`,
			`f.toml:7: bgp.communities[1]: "70000:1" is not a community ASN:VALUE (each 0-65535)`,
			`f.toml:7: bgp.communities[2]: "1:2:3" is not a community ASN:VALUE`,
			`f.toml:7: bgp.communities[3]: "+1:2" is not a community ASN:VALUE`,
			"f.toml:11: bgp.neighbor[0].hold_time: 3.5s: BGP keeps the hold time in whole seconds",
			"f.toml:13: bgp.neighbor[1].address: 192.0.2.1 is already a neighbor (line 9)",
			"bgp.neighbor[1].peer_as: required"}},
		{"keepalived.conf", "! Configuration File for keepalived\nglobal_defs {\n   router_id LVS_A\n}\nvrrp_instance VI_1 {\n  state MASTER\n}\n",
			[]string{`f.toml:2: this looks like a keepalived.conf ("global_defs {"), not directord's TOML`}},
		{"keepalived keyword in TOML", minimal + "[[virtual_server]]\nname = \"web\"\naddress = \"192.0.2.1:80\"\nlb_algo = \"rr\"\ndelay_loop = 5\n",
			[]string{"f.toml:7: virtual_server.lb_algo: unknown key (keepalived's keyword; directord's is scheduler)",
				"f.toml:8: virtual_server.delay_loop: unknown key (keepalived's keyword; directord's is health_check.interval)"}},
		{"misspelt key with suggestion", minimal + `[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 1
priorty = 100
virtual_ipaddress = ["192.0.2.1"]
`, []string{`f.toml:8: vrrp_instance.priorty: unknown key (did you mean "priority"?)`}},
		{"unknown table reported once", minimal + "[global]\nfoo = 1\nbar = 2\n", []string{"f.toml:4: global: unknown key"}},
		{"timeouts", minimal + "[dataplane]\ntimeouts = { tcp = \"1.5s\", udp = \"60d\", tcpfin = \"0s\" }\n", []string{
			"f.toml:5: dataplane.timeouts.tcp: 1.5s: the kernel keeps timeouts in whole seconds",
			"f.toml:5: dataplane.timeouts.tcpfin: 0s is out of range [1s, 720h0m0s]",
			"f.toml:5: dataplane.timeouts.udp: \"60d\" is not a duration"}},
		{"misspelt key in second real server", minimal + `[[virtual_server]]
name = "a"
address = "192.0.2.1:80"
  [[virtual_server.real_server]]
  address = "203.0.113.1:80"
  [[virtual_server.real_server]]
  address = "203.0.113.2:80"
  wieght = 3
`, []string{`f.toml:11: virtual_server.real_server.wieght: unknown key (did you mean "weight"?)`}},
		{"ranges", minimal + `[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 256
priority = 0
version = 4
virtual_ipaddress = ["192.0.2.1"]
`, []string{
			"f.toml:7: vrrp_instance[0].virtual_router_id: 256 is out of range [1, 255]",
			"f.toml:8: vrrp_instance[0].priority: 0 is out of range [1, 255]",
			"f.toml:9: vrrp_instance[0].version: 4 is out of range [2, 3]",
		}},
		{"duplicate VRID and VIP across instances", minimal + `[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24"]

[[vrrp_instance]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24", "192.0.2.300/24"]
`, []string{
			`f.toml:14: vrrp_instance[1].virtual_ipaddress[0]: 192.0.2.100 is already a virtual address of instance "VI_1" (line 8)`,
			`f.toml:14: vrrp_instance[1].virtual_ipaddress[1]: "192.0.2.300/24" is not an address in CIDR notation`,
			`f.toml:13: vrrp_instance[1].virtual_router_id: virtual_router_id 51 is already used on interface eth0 by instance "VI_1" (line 7)`,
		}},
		{"same VRID on another interface or family is fine, v2 timing", minimal + `[[vrrp_instance]]
name = "A"
interface = "eth0"
virtual_router_id = 5
version = 2
advert_int = "1500ms"
virtual_ipaddress = ["192.0.2.1"]
[[vrrp_instance]]
name = "B"
interface = "eth1"
virtual_router_id = 5
virtual_ipaddress = ["192.0.2.2"]
[[vrrp_instance]]
name = "C"
interface = "eth0"
virtual_router_id = 5
advert_int = "15ms"
virtual_ipaddress = ["fe80::5/64", "2001:db8::1/64"]
`, []string{
			"f.toml:9: vrrp_instance[0].advert_int: 1.5s: VRRP version 2 advertises whole seconds only",
			"f.toml:20: vrrp_instance[2].advert_int: 15ms: VRRP version 3 advertises in steps of 10ms",
		}},
		{"mixed families and v2 IPv6", minimal + `[[vrrp_instance]]
name = "A"
interface = "eth0"
virtual_router_id = 5
version = 2
virtual_ipaddress = ["2001:db8::1", "192.0.2.1"]
unicast_peer = ["192.0.2.9", "bogus"]
`, []string{
			"f.toml:9: vrrp_instance[0].virtual_ipaddress[1]: 192.0.2.1: an instance carries one address family",
			"f.toml:8: vrrp_instance[0].version: IPv6 virtual addresses need VRRP version 3",
			"f.toml:9: vrrp_instance[0].virtual_ipaddress[0]: 2001:db8::1: the first IPv6 virtual address must be link-local (RFC 9568 §5.2.9)",
			"f.toml:10: vrrp_instance[0].unicast_peer[0]: 192.0.2.9 is not of the instance's address family",
			`f.toml:10: vrrp_instance[0].unicast_peer[1]: "bogus" is not an IP address`,
		}},
		{"durations", minimal + `[[vrrp_instance]]
name = "A"
interface = "eth0"
virtual_router_id = 5
advert_int = "1 second"
preempt_delay = "2h"
virtual_ipaddress = ["192.0.2.1"]
`, []string{
			`f.toml:8: vrrp_instance[0].advert_int: "1 second" is not a duration`,
			"f.toml:9: vrrp_instance[0].preempt_delay: 2h0m0s is out of range [0s, 16m40s]",
		}},
		{"virtual server checks", minimal + `[[virtual_server]]
name = "web"
address = "192.0.2.1"
scheduler = "fastest"
forwarding = "magic"
  [[virtual_server.real_server]]
  address = "203.0.113.1:80"
  [[virtual_server.real_server]]
  address = "203.0.113.1:80"
  weight = 70000
  [virtual_server.health_check]
  type = "ping"
  interval = "1s"
  timeout = "2s"
[[virtual_server]]
name = "web"
address = "[2001:db8::1]:80"
  [[virtual_server.real_server]]
  address = "203.0.113.1:80"
`, []string{
			`f.toml:6: virtual_server[0].address: "192.0.2.1" is not an IP:port address`,
			`f.toml:7: virtual_server[0].scheduler: "fastest" is not one of rr, wrr`,
			`f.toml:8: virtual_server[0].forwarding: "magic" is not one of nat, dr, tun`,
			"f.toml:12: virtual_server[0].real_server[1].address: real server 203.0.113.1:80 is listed twice (also at line 10)",
			`f.toml:15: virtual_server[0].health_check.type: "ping" is not one of tcp`,
			"f.toml:17: virtual_server[0].health_check.timeout: 2s is longer than the interval 1s",
			`f.toml:19: virtual_server[1].name: virtual server "web" is already defined at line 5`,
			"f.toml:22: virtual_server[1].real_server[0].address: 203.0.113.1:80 is not of the virtual server's address family",
		}},
		{"vrrp extras", minimal + `[[vrrp_instance]]
name = "A"
interface = "eth0"
virtual_router_id = 5
virtual_ipaddress = ["192.0.2.1"]
auth_pass = "secret"
garp_master_refresh = "100ms"
track_interface = ["eth1", { interface = "eth2", weight = -300 }, "eth1"]
notify_master = ["notify.sh", "master"]
notify = []
`, []string{
			"f.toml:9: vrrp_instance[0].auth_pass: VRRP version 3 has no authentication",
			"f.toml:10: vrrp_instance[0].garp_master_refresh: 100ms: use 0 (off) or at least 1s",
			"f.toml:11: vrrp_instance[0].track_interface[1]: -300 is out of range [-253, 253]",
			"f.toml:11: vrrp_instance[0].track_interface[2]: eth1 is tracked twice",
			"f.toml:12: vrrp_instance[0].notify_master: give the program as an array starting with its absolute path",
			"f.toml:13: vrrp_instance[0].notify: give the program as an array",
		}},
		{"track_interface entry of the wrong shape", minimal + `[[vrrp_instance]]
name = "A"
interface = "eth0"
virtual_router_id = 5
virtual_ipaddress = ["192.0.2.1"]
track_interface = [{ ifname = "eth1" }]
`, []string{`f.toml:9: vrrp_instance.track_interface: unknown key "ifname" (use interface, weight and reverse)`}},
		{"sync groups", minimal + `[[vrrp_instance]]
name = "A"
interface = "eth0"
virtual_router_id = 5
virtual_ipaddress = ["192.0.2.1"]
[[vrrp_sync_group]]
name = "G"
group = ["A", "B"]
[[vrrp_sync_group]]
name = "H"
group = ["A"]
`, []string{
			`f.toml:11: vrrp_sync_group[0].group[1]: no vrrp_instance is named "B"`,
			"f.toml:14: vrrp_sync_group[1].group: a sync group needs at least two instances",
			`f.toml:14: vrrp_sync_group[1].group[0]: A is already in sync group "G"`,
		}},
		{"vrrp_script references", minimal + `[[vrrp_instance]]
name = "A"
interface = "eth0"
virtual_router_id = 5
virtual_ipaddress = ["192.0.2.1"]
track_script = ["chk", "nope", { name = "chk", weight = 300 }]
[[vrrp_script]]
name = "chk"
script = ["check"]
`, []string{
			"f.toml:12: vrrp_script[0].script: give the program as an array starting with its absolute path",
			`f.toml:9: vrrp_instance[0].track_script[1]: no [[vrrp_script]] is named "nope"`,
			"f.toml:9: vrrp_instance[0].track_script[2]: chk is tracked twice",
		}},
		{"virtual server settings", minimal + `[[virtual_server]]
name = "both"
address = "192.0.2.1:80"
fwmark = 3
[[virtual_server]]
name = "flags"
address = "192.0.2.1:81"
protocol = "tcp"
scheduler = "wrr"
scheduler_flags = ["sh-port", "bogus"]
one_packet = true
quorum = 2
hysteresis = 2
persistence_granularity = 24
sorry_server = "[2001:db8::1]:80"
  [[virtual_server.real_server]]
  address = "203.0.113.1:80"
  lower_threshold = 10
  upper_threshold = 5
  [[virtual_server.real_server]]
  address = "203.0.113.2"
[[virtual_server]]
name = "mark"
fwmark = 7
family = "ipv6"
protocol = "udp"
  [[virtual_server.real_server]]
  address = "2001:db8::2"
`, []string{
			"f.toml:7: virtual_server[0].fwmark: a virtual server has an address or a fwmark, not both",
			"f.toml:13: virtual_server[1].scheduler_flags[0]: sh-port is a flag of the sh scheduler, not of wrr",
			`f.toml:13: virtual_server[1].scheduler_flags[1]: "bogus" is not one of sh-fallback`,
			"f.toml:17: virtual_server[1].persistence_granularity: needs persistence_timeout",
			"f.toml:14: virtual_server[1].one_packet: one-packet scheduling is for udp services",
			"f.toml:16: virtual_server[1].hysteresis: must be below quorum (2)",
			"f.toml:18: virtual_server[1].sorry_server: [2001:db8::1]:80 is not of the virtual server's address family",
			"f.toml:21: virtual_server[1].real_server[0].lower_threshold: 10 is above upper_threshold 5",
			`f.toml:24: virtual_server[1].real_server[1].address: "203.0.113.2"`,
			"f.toml:29: virtual_server[2].protocol: a fwmark service balances every protocol the mark is set on; leave protocol out",
		}},
		{"checks of a real server", minimal + `[[virtual_server]]
name = "a"
address = "192.0.2.1:80"
  [[virtual_server.real_server]]
  address = "203.0.113.1:80"
    [[virtual_server.real_server.check]]
    type = "icmp"
    connect_port = 80
    [[virtual_server.real_server.check]]
    type = "smtp"
    helo_name = "two words"
    [[virtual_server.real_server.check]]
    type = "ping"
`, []string{
			"f.toml:11: virtual_server[0].real_server[0].check[0].connect_port: only tcp, http, https, tls, udp, dns and smtp checks take connect_port",
			`f.toml:14: virtual_server[0].real_server[0].check[1].helo_name: "two words": a HELO name has no spaces`,
			`f.toml:16: virtual_server[0].real_server[0].check[2].type: "ping" is not one of tcp`,
		}},
		{"health checks", minimal + `[[virtual_server]]
name = "a"
address = "192.0.2.1:80"
  [virtual_server.health_check]
  type = "tcp"
  path = "/x"
  status_codes = ["200", "2xx"]
[[virtual_server]]
name = "b"
address = "192.0.2.1:81"
  [virtual_server.health_check]
  type = "http"
  status_codes = ["302-301"]
  body_regex = "("
  digest = "abc"
  method = "PUT"
[[virtual_server]]
name = "c"
address = "192.0.2.1:82"
  [virtual_server.health_check]
  type = "dns"
  query_type = "AXFR"
[[virtual_server]]
name = "d"
address = "192.0.2.1:83"
  [virtual_server.health_check]
  type = "exec"
  connect_port = 80
`, []string{
			"f.toml:9: virtual_server[0].health_check.path: only http and https checks take path",
			"f.toml:10: virtual_server[0].health_check.status_codes: only http and https checks take status_codes",
			`f.toml:10: virtual_server[0].health_check.status_codes[1]: "2xx" is not a status code or range`,
			`f.toml:19: virtual_server[1].health_check.method: "PUT" is not one of GET, HEAD, POST, OPTIONS`,
			`f.toml:16: virtual_server[1].health_check.status_codes[0]: "302-301" is not a status code or range`,
			"f.toml:17: virtual_server[1].health_check.body_regex: error parsing regexp",
			`f.toml:18: virtual_server[1].health_check.digest: "abc" is not an MD5 digest`,
			`f.toml:25: virtual_server[2].health_check.query_type: "AXFR" is not one of A, AAAA`,
			"f.toml:31: virtual_server[3].health_check.connect_port: only tcp, http, https, tls, udp, dns and smtp checks take connect_port",
			"f.toml:29: virtual_server[3].health_check.command: an exec check needs a command",
		}},
		{"node and cluster", `[node]
name = "lb 1"
status_socket = "run/x.sock"
log_format = "xml"
[dataplane]
kind = "lvs"
[cluster]
bind = "192.0.2.1:7946"
raft_bind = "192.0.2.1:7946"
peers = ["192.0.2.1:7946", "lb2", "lb2:7946", "lb2:7946"]
`, []string{
			`f.toml:2: node.name: "lb 1": use letters`,
			`f.toml:3: node.status_socket: "run/x.sock" is not an absolute path`,
			`f.toml:4: node.log_format: "xml" is not one of text, json`,
			`f.toml:6: dataplane.kind: "lvs" is not one of auto, ipvs, nftables`,
			"f.toml:9: cluster.raft_bind: must differ from bind",
			"f.toml:10: cluster.peers[0]: 192.0.2.1:7946 is this node's own bind address",
			`f.toml:10: cluster.peers[1]: "lb2" is not a host:port address`,
			"f.toml:10: cluster.peers[3]: lb2:7946 is listed twice",
			// Secure by default: a cluster without mutual TLS and a
			// gossip key is refused, each missing key named.
			"f.toml:7: cluster.members: required",
			"f.toml:7: cluster.encrypt_key: required",
			"f.toml:7: cluster.tls_cert: required",
			"f.toml:7: cluster.tls_key: required",
			"f.toml:7: cluster.tls_ca: required",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := problems(t, tc.src)
			if len(got) != len(tc.want) {
				t.Errorf("got %d problems, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i, w := range tc.want {
				if i >= len(got) || !strings.Contains(got[i], w) {
					t.Errorf("problem %d: want containing\n  %s\ngot:\n%s", i, w, strings.Join(got, "\n"))
				}
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want not exist", err)
	}
}

func TestPositionsScanner(t *testing.T) {
	src := `# comment with [brackets] and key = "value"
[node]
name = "x" # trailing
text = """
multi [line]
key = no
"""
[[a]]
list = [
  "one", # c
  { k = 1, j = "}" },
  { k = 2 },
]
[a.sub]
z = 1
[[a]]
"quoted.key" = 'lit'
[[a.b]]
y = 1
`
	p := scanPositions(src)
	for path, want := range map[string]int{
		"node.name":       3,
		"node.text":       4,
		"a.0":             8,
		"a.0.list":        9,
		"a.0.list.1":      11,
		"a.0.list.1.j":    11,
		"a.0.list.2.k":    12,
		"a.0.sub.z":       15,
		"a.1":             16,
		"a.1.quoted.key":  17,
		"a.1.b.0.y":       19,
		"node.text.inner": 0,
	} {
		if got := p.indexed[path]; got != want && want != 0 {
			t.Errorf("%s at line %d, want %d", path, got, want)
		}
		if want == 0 {
			if _, ok := p.indexed[path]; ok {
				t.Errorf("%s recorded from inside a string", path)
			}
		}
	}
	if got := p.plain["a.list.k"]; len(got) != 2 || got[0] != 11 || got[1] != 12 {
		t.Errorf("plain a.list.k lines = %v, want [11 12]", got)
	}
	if _, ok := p.indexed["node.key"]; ok {
		t.Error("scanner read a key inside a multi-line string")
	}
}

// A program that a user other than root could change is refused, as
// keepalived's enable_script_security does: the file or a directory above
// it owned by another user, or writable by group or others.
func TestScriptSecurity(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test gives files to another user")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "bin", "check")
	if err := os.MkdirAll(filepath.Dir(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	file := func(extra string) string {
		return "[node]\nname = \"lb1\"\nscript_user = \"nobody\"\n" + extra + "\n[[vrrp_script]]\nname = \"chk\"\nscript = [\"" + script + "\"]\n"
	}
	cfg, err := Parse("f.toml", []byte(file("")))
	if err != nil {
		t.Fatalf("a root-owned script: %v", err)
	}
	if cfg.Node.ScriptUser != "nobody" || cfg.Node.ScriptUID == 0 || !cfg.Node.ScriptSecurity {
		t.Fatalf("node %+v", cfg.Node)
	}
	nobody, _ := lookupUser("nobody")
	for _, tc := range []struct {
		name  string
		setup func() error
		undo  func() error
		want  string
	}{
		{"file owned by nobody", func() error { return os.Chown(script, int(nobody.uid), -1) }, func() error { return os.Chown(script, 0, -1) },
			"is owned by uid"},
		{"file writable by others", func() error { return os.Chmod(script, 0o757) }, func() error { return os.Chmod(script, 0o755) },
			"is writable by group or others"},
		{"directory writable by others", func() error { return os.Chmod(filepath.Dir(script), 0o777) },
			func() error { return os.Chmod(filepath.Dir(script), 0o755) }, "bin is writable by group or others"},
		{"directory owned by nobody", func() error { return os.Chown(filepath.Dir(script), int(nobody.uid), -1) },
			func() error { return os.Chown(filepath.Dir(script), 0, -1) }, "bin is owned by uid"},
	} {
		if err := tc.setup(); err != nil {
			t.Fatal(err)
		}
		_, err := Parse("f.toml", []byte(file("")))
		if err == nil || !strings.Contains(err.Error(), "f.toml:7: vrrp_script[0].script: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.name, err)
		}
		// Switched off, it passes.
		if _, err := Parse("f.toml", []byte(file("enable_script_security = false"))); err != nil {
			t.Errorf("%s, security off: %v", tc.name, err)
		}
		if err := tc.undo(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Parse("f.toml", []byte("[node]\nname = \"x\"\nscript_user = \"no-such-user-here\"\n")); err == nil || !strings.Contains(err.Error(), `node.script_user: no user "no-such-user-here"`) {
		t.Fatalf("unknown user: %v", err)
	}
}

// TestSyncDaemonGroup: the IPVS sync daemon's group may be an IPv4 or an
// IPv6 multicast address (the kernel has an attribute for each); not a
// unicast one.
func TestSyncDaemonGroup(t *testing.T) {
	src := func(group string) []byte {
		return []byte(minimal + `[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.1"]
[dataplane]
kind = "ipvs"
lvs_sync_daemon = { interface = "eth1", instance = "VI_1", group = "` + group + `" }
`)
	}
	for _, g := range []string{"224.0.0.81", "ff02::8848"} {
		cfg, err := Parse("f.toml", src(g))
		if err != nil {
			t.Fatalf("group %s: %v", g, err)
		}
		if got := cfg.Dataplane.LVSSyncDaemon.Group.String(); got != g {
			t.Fatalf("group %s read as %s", g, got)
		}
	}
	for _, g := range []string{"192.0.2.9", "2001:db8::1", "ff02::1%eth1"} {
		if _, err := Parse("f.toml", src(g)); err == nil || !strings.Contains(err.Error(), "dataplane.lvs_sync_daemon.group: ") {
			t.Fatalf("group %s: %v", g, err)
		}
	}
}

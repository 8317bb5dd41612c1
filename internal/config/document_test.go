package config_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/config"
)

// richServers covers every kind of virtual server and check the file
// takes; each must survive the trip into the replicated table.
const richServers = `
[node]
name = "lb1"

[[check_script]]
name = "mysql"
command = ["/usr/local/bin/check-mysql", "--quick"]

[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
scheduler = "sh"
scheduler_flags = ["sh-port"]
persistence_timeout = "5m"
persistence_granularity = 24
quorum = 2
hysteresis = 1
inhibit_on_failure = true
drain_timeout = "30s"
sorry_server = "203.0.113.99:80"
  [virtual_server.health_check]
  type = "http"
  interval = "500ms"
  timeout = "200ms"
  path = "/health"
  headers = { "X-Token" = "s3cret" }
  status_codes = ["200-299"]
  body_regex = "ok"
  [[virtual_server.real_server]]
  address = "203.0.113.11:8080"
  weight = 3
  upper_threshold = 100
  lower_threshold = 50
  [[virtual_server.real_server]]
  address = "203.0.113.12:80"
  forwarding = "dr"

[[virtual_server]]
name = "db"
address = "[2001:db8::100]:3306"
  [virtual_server.health_check]
  type = "exec"
  script = "mysql"
  dynamic = true
  notify_down_script = "mysql"
  [[virtual_server.real_server]]
  address = "[2001:db8::11]:3306"

[[virtual_server]]
name = "marked"
fwmark = 7
family = "ipv6"
  [virtual_server.health_check]
  type = "tcp"
  connect_port = 443
  [[virtual_server.real_server]]
  address = "2001:db8::12"

[[virtual_server]]
name = "dns"
address = "192.0.2.100:53"
protocol = "udp"
one_packet = true
  [virtual_server.health_check]
  type = "dns"
  query_name = "example.test."
  [[virtual_server.real_server]]
  address = "203.0.113.13:53"

[[virtual_server]]
name = "tls"
address = "192.0.2.100:443"
  [virtual_server.health_check]
  type = "tls"
  sni = "example.test"
  verify_cert = true
  warn_days = 14
  bindto = "192.0.2.1"
  [[virtual_server.real_server]]
  address = "203.0.113.14:443"
`

func TestValidateDocumentRoundTrip(t *testing.T) {
	cfg, err := config.Parse("rich.toml", []byte(richServers))
	if err != nil {
		t.Fatal(err)
	}
	docs := config.Documents(cfg.VirtualServers)
	if len(docs) != 5 {
		t.Fatalf("%d documents", len(docs))
	}
	for name, doc := range docs {
		if err := config.ValidateDocument(name, doc); err != nil {
			t.Errorf("%s: a virtual server the file accepts is refused from the table: %v\n%s", name, err, doc)
		}
	}
}

// TestValidateDocumentRefuses: what the file's validator refuses, the
// table refuses, naming the key; and commands never pass.
func TestValidateDocumentRefuses(t *testing.T) {
	cfg, err := config.Parse("rich.toml", []byte(richServers))
	if err != nil {
		t.Fatal(err)
	}
	web := config.Documents(cfg.VirtualServers)["web"]
	edit := func(f func(m map[string]any)) json.RawMessage {
		var m map[string]any
		if err := json.Unmarshal(web, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	check := func(m map[string]any) map[string]any { return m["health_check"].(map[string]any) }
	for _, tc := range []struct {
		name, vs string
		doc      json.RawMessage
		want     string
	}{
		{"regex", "web", edit(func(m map[string]any) { check(m)["body_regex"] = "(" }),
			"virtual_server.web.health_check.body_regex: error parsing regexp"},
		{"zero interval", "web", edit(func(m map[string]any) { check(m)["interval"] = 0 }),
			"virtual_server.web.health_check.interval: 0s is out of range"},
		{"command", "web", edit(func(m map[string]any) {
			c := check(m)
			c["type"], c["command"] = "exec", []string{"/bin/sh", "-c", "id"}
			for _, k := range []string{"path", "method", "headers", "status_codes", "body_regex"} {
				delete(c, k)
			}
		}), "virtual_server.web.health_check.command: commands never travel through the cluster"},
		{"notify", "web", edit(func(m map[string]any) { check(m)["notify_up"] = []string{"/usr/bin/touch", "/tmp/x"} }),
			"virtual_server.web.health_check.notify_up: commands never travel through the cluster"},
		{"command in a real server's check", "web", edit(func(m map[string]any) {
			m["real_server"].([]any)[0].(map[string]any)["check"] = []any{map[string]any{"type": "tcp"},
				map[string]any{"type": "exec", "command": []string{"/bin/sh", "-c", "id"}}}
		}), "virtual_server.web.real_server[0].check[1].command: commands never travel through the cluster"},
		{"notify in a real server's check", "web", edit(func(m map[string]any) {
			m["real_server"].([]any)[0].(map[string]any)["check"] = []any{map[string]any{"type": "tcp", "notify_down": []string{"/bin/true"}}}
		}), "virtual_server.web.real_server[0].check[0].notify_down: commands never travel through the cluster"},
		{"unknown field", "web", edit(func(m map[string]any) { m["exec"] = "x" }), `unknown field "exec"`},
		{"bad weight", "web", edit(func(m map[string]any) { m["real_server"].([]any)[0].(map[string]any)["weight"] = 70000 }),
			"virtual_server.web.real_server[0].weight: 70000 is out of range"},
		{"bad scheduler", "web", edit(func(m map[string]any) { m["scheduler"] = "twos!" }),
			`virtual_server.web.scheduler: "twos!" is not one of`},
		{"bad name", "web/../x", web, "not a valid name"},
		{"not json", "web", json.RawMessage(`{"name":`), "virtual_server.web:"},
		{"too big", "web", json.RawMessage(`{"name":"` + strings.Repeat("a", config.MaxDocument) + `"}`), "over the limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := config.ValidateDocument(tc.vs, tc.doc)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// With [cluster], a notify program is a local [[check_script]] named in
// notify_up_script / notify_down_script: checked against the file, and
// not both ways at once.
func TestNotifyScripts(t *testing.T) {
	base := `[node]
name = "lb1"
[cluster]
bind = "192.0.2.1:7946"
raft_bind = "192.0.2.1:7000"
[[check_script]]
name = "page"
command = ["/usr/local/bin/page"]
[[virtual_server]]
name = "db"
address = "192.0.2.100:3306"
  [virtual_server.health_check]
  type = "tcp"
  %s
  [[virtual_server.real_server]]
  address = "203.0.113.11:3306"
`
	for _, tc := range []struct{ keys, want string }{
		{`notify_down_script = "page"`, ""},
		{`notify_up_script = "nope"`, `virtual_server[0].health_check.notify_up_script: "nope" is not a [[check_script]] of this file`},
		{`notify_up_script = "bad name"`, `"bad name" is not a valid name`},
	} {
		_, err := config.Parse("c.toml", []byte(fmt.Sprintf(base, tc.keys)))
		var problems []string
		var ce *config.Error
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				if !strings.HasPrefix(p.Key, "cluster.") { // the keys this test leaves out
					problems = append(problems, p.String())
				}
			}
		}
		switch {
		case tc.want == "" && len(problems) > 0:
			t.Errorf("%s: %v", tc.keys, problems)
		case tc.want != "" && !strings.Contains(strings.Join(problems, "\n"), tc.want):
			t.Errorf("%s: %v, want %q", tc.keys, problems, tc.want)
		}
	}
	noCluster := strings.Replace(fmt.Sprintf(base, `notify_up = ["/usr/local/bin/page"]`+"\n  "+`notify_up_script = "page"`), "[cluster]\nbind = \"192.0.2.1:7946\"\nraft_bind = \"192.0.2.1:7000\"\n", "", 1)
	if _, err := config.Parse("c.toml", []byte(noCluster)); err == nil || !strings.Contains(err.Error(), "give notify_up or notify_up_script, not both") {
		t.Errorf("both: %v", err)
	}
}

func TestClusterFileRefusesCommands(t *testing.T) {
	_, err := config.Parse("c.toml", []byte(`[node]
name = "lb1"
[cluster]
bind = "192.0.2.1:7946"
raft_bind = "192.0.2.1:7000"
[[virtual_server]]
name = "db"
address = "192.0.2.100:3306"
  [virtual_server.health_check]
  type = "exec"
  command = ["/usr/local/bin/check"]
  notify_down = ["/usr/local/bin/page"]
  [[virtual_server.real_server]]
  address = "203.0.113.11:3306"
`))
	for _, want := range []string{
		"c.toml:11: virtual_server[0].health_check.command: commands never travel through the cluster",
		"c.toml:12: virtual_server[0].health_check.notify_down: commands never travel",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v, want %q", err, want)
		}
	}
}

// virtual_ipaddress_excluded: held, never advertised, of the instance's
// family, and no address twice.
func TestExcludedAddresses(t *testing.T) {
	base := `[node]
name = "lb1"
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 100
virtual_ipaddress = ["192.0.2.100/24"]
virtual_ipaddress_excluded = [%s]
`
	cfg, err := config.Parse("f.toml", []byte(fmt.Sprintf(base, `"192.0.2.101/24", "192.0.2.102"`)))
	if err != nil {
		t.Fatal(err)
	}
	if ex := cfg.VRRP[0].Excluded; len(ex) != 2 || ex[1].Bits() != 32 {
		t.Fatalf("excluded %v", ex)
	}
	for _, tc := range []struct{ list, want string }{
		{`"192.0.2.100"`, "f.toml:9: vrrp_instance[0].virtual_ipaddress_excluded[0]: 192.0.2.100 is listed twice in this instance"},
		{`"2001:db8::1"`, "an instance carries one address family"},
	} {
		if _, err := config.Parse("f.toml", []byte(fmt.Sprintf(base, tc.list))); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.list, err)
		}
	}
}

// Unicast addresses: an IPv4 source on an IPv6 instance is refused; a
// peer written with its zone (fe80::12%eth0) matches adverts, which
// arrive without one; a zone that is not the instance's interface is
// refused. On main the first was accepted and the second never matched.
func TestUnicastAddresses(t *testing.T) {
	base := `[node]
name = "lb1"
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 100
virtual_ipaddress = ["fe80::100/64", "2001:db8::100/64"]
%s
`
	cfg, err := config.Parse("f.toml", []byte(fmt.Sprintf(base, `unicast_peer = ["fe80::12%eth0"]`+"\n"+`unicast_src_ip = "fe80::11%eth0"`)))
	if err != nil {
		t.Fatal(err)
	}
	if in := cfg.VRRP[0]; in.UnicastPeers[0].Zone() != "" || in.UnicastPeers[0] != netip.MustParseAddr("fe80::12") || in.UnicastSrc.Zone() != "" {
		t.Fatalf("peers %v, source %v", in.UnicastPeers, in.UnicastSrc)
	}
	for _, tc := range []struct{ lines, want string }{
		{`unicast_src_ip = "192.0.2.11"`, "vrrp_instance[0].unicast_src_ip: 192.0.2.11 is not of the instance's address family"},
		{`unicast_peer = ["fe80::12%eth1"]`, "the zone must be the instance's interface, eth0"},
	} {
		if _, err := config.Parse("f.toml", []byte(fmt.Sprintf(base, tc.lines))); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.lines, err)
		}
	}
}

// keepalived's instance keys read as keepalived spells them.
func TestKeepalivedInstanceKeysParse(t *testing.T) {
	cfg, err := config.Parse("f.toml", []byte(`[node]
name = "lb1"
[[vrrp_script]]
name = "chk"
script = ["/bin/true"]
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
state = "master"
mcast_src_ip = "192.0.2.11"
dont_track_primary = true
skip_check_adv_addr = true
lower_prio_no_advert = true
virtual_ipaddress = ["192.0.2.100/24"]
track_interface = [{ interface = "eth1", weight = -20, reverse = true }]
track_script = [{ name = "chk", weight = 10, reverse = true }]
`))
	if err != nil {
		t.Fatal(err)
	}
	in := cfg.VRRP[0]
	if !in.InitialMaster || in.UnicastSrc != netip.MustParseAddr("192.0.2.11") || !in.DontTrackPrimary || !in.SkipCheckAdvAddr ||
		!in.LowerPrioNoAdvert || !in.TrackInterfaces[0].Reverse || !in.TrackScripts[0].Reverse {
		t.Fatalf("instance %+v", in)
	}
	for _, tc := range []struct{ line, want string }{
		{`state = "FAULT"`, `vrrp_instance[0].state: "FAULT" is not one of MASTER, BACKUP`},
		{"mcast_src_ip = \"192.0.2.11\"\nunicast_src_ip = \"192.0.2.12\"", "give one source"},
	} {
		_, err := config.Parse("f.toml", []byte("[node]\nname = \"lb1\"\n[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"192.0.2.100/24\"]\n"+tc.line+"\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v", tc.line, err)
		}
	}
}

// -t refuses what IPVS would do wrong: a DR or TUN real server on another
// port than the service's (IPVS does not rewrite it), and a firewall-mark
// service's real server of the other family (the kernel stored
// 2001:db8::11 as 32.1.13.184).
func TestRealServerChecks(t *testing.T) {
	for _, tc := range []struct{ vs, want string }{
		{"address = \"192.0.2.100:80\"\nforwarding = \"dr\"\n  [[virtual_server.real_server]]\n  address = \"203.0.113.11:8080\"",
			"virtual_server[0].real_server[0].address: dr forwarding keeps the destination port: give port 80 (the service's), not 8080"},
		{"address = \"192.0.2.100:80\"\n  [[virtual_server.real_server]]\n  address = \"203.0.113.11:8080\"\n  forwarding = \"tun\"",
			"tun forwarding keeps the destination port"},
		{"fwmark = 7\n  [[virtual_server.real_server]]\n  address = \"2001:db8::11\"",
			`virtual_server[0].real_server[0].address: 2001:db8::11 is not of the virtual server's family (family = "ipv4")`},
	} {
		_, err := config.Parse("f.toml", []byte("[node]\nname = \"lb1\"\n[[virtual_server]]\nname = \"web\"\n"+tc.vs+"\n"))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n%v", tc.vs, err)
		}
	}
}

// accept / no_accept, keepalived's pair of keys for one setting.
func TestAcceptKeys(t *testing.T) {
	base := "[node]\nname = \"lb1\"\n[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"192.0.2.100/24\"]\n"
	for _, tc := range []struct {
		line     string
		noAccept bool
		want     string
	}{
		{"", false, ""},
		{"no_accept = true", true, ""},
		{"accept = false", true, ""},
		{"accept = true\nno_accept = true", false, "accept and no_accept say opposite things"},
	} {
		cfg, err := config.Parse("f.toml", []byte(base+tc.line+"\n"))
		switch {
		case tc.want != "":
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%q: %v", tc.line, err)
			}
		case err != nil || cfg.VRRP[0].NoAccept != tc.noAccept:
			t.Errorf("%q: %v", tc.line, err)
		}
	}
}

// [[vrrp_track_file]] and an instance's track_file, keepalived's spelling.
func TestTrackFileKeys(t *testing.T) {
	base := `[node]
name = "lb1"
[[vrrp_track_file]]
name = "load"
file = "/run/load"
weight = -5
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24"]
track_file = [%s]
`
	cfg, err := config.Parse("f.toml", []byte(fmt.Sprintf(base, `"load"`)))
	if err != nil {
		t.Fatal(err)
	}
	if tf := cfg.VRRP[0].TrackFiles; len(tf) != 1 || tf[0].Weight != -5 || cfg.TrackFiles[0].File != "/run/load" {
		t.Fatalf("track files %+v %+v", tf, cfg.TrackFiles)
	}
	if _, err := config.Parse("f.toml", []byte(fmt.Sprintf(base, `"nope"`))); err == nil || !strings.Contains(err.Error(), `vrrp_instance[0].track_file[0]: no [[vrrp_track_file]] is named "nope"`) {
		t.Fatalf("unknown file: %v", err)
	}
	cfg, err = config.Parse("f.toml", []byte(fmt.Sprintf(base, `{ name = "load", weight = 2, reverse = true }`)))
	if err != nil || cfg.VRRP[0].TrackFiles[0].Weight != 2 || !cfg.VRRP[0].TrackFiles[0].Reverse {
		t.Fatalf("weighted: %v %+v", err, cfg)
	}
}

// The keys of the rest of keepalived's instance features: use_vmac,
// vmac_xmit_base, virtual_routes/_rules, strict_mode and vrrp_strict,
// higher_prio_send_advert, track_process and notify_fifo.
func TestKeepalivedInstanceFeatures(t *testing.T) {
	cfg, err := config.Parse("f.toml", []byte(`[node]
name = "lb1"
notify_fifo = "/run/directord/notify.fifo"
[[vrrp_track_process]]
name = "nginx"
process = "nginx"
quorum = 2
weight = -30
delay = "500ms"
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.100/24"]
use_vmac = true
higher_prio_send_advert = false
virtual_routes = ["198.51.100.0/24 via 192.0.2.1", "blackhole 203.0.113.0/24"]
virtual_rules = ["from 192.0.2.100 table 100"]
track_process = ["nginx"]
[[vrrp_instance]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 52
virtual_ipaddress = ["192.0.2.101/24"]
use_vmac = "vmac52"
vmac_xmit_base = true
strict_mode = true
`))
	if err != nil {
		t.Fatal(err)
	}
	a, b := cfg.VRRP[0], cfg.VRRP[1]
	switch {
	case cfg.Node.NotifyFIFO != "/run/directord/notify.fifo":
		t.Errorf("notify_fifo %q", cfg.Node.NotifyFIFO)
	case a.VMAC != "vrrp.51" || a.VMACXmitBase || a.HigherPrioSendAdvert || len(a.Routes) != 2 || !a.Routes[1].Blackhole || len(a.Rules) != 1 || a.Strict || a.NoAccept:
		t.Errorf("VI_1 %+v", a)
	case len(a.TrackProcesses) != 1 || a.TrackProcesses[0].Weight != -30:
		t.Errorf("VI_1 track_process %+v", a.TrackProcesses)
	case len(cfg.TrackProcesses) != 1 || cfg.TrackProcesses[0].Quorum != 2 || cfg.TrackProcesses[0].Delay != 500*time.Millisecond:
		t.Errorf("vrrp_track_process %+v", cfg.TrackProcesses)
	case b.VMAC != "vmac52" || !b.VMACXmitBase || !b.HigherPrioSendAdvert || !b.Strict || !b.NoAccept:
		t.Errorf("VI_2 %+v (strict_mode means no_accept by default)", b)
	}

	const base = "[node]\nname = \"lb1\"\n%s\n[[vrrp_instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvirtual_router_id = 51\nvirtual_ipaddress = [\"192.0.2.100/24\"]\n%s\n"
	for _, tc := range []struct{ node, line, want string }{
		{"", `strict_mode = true` + "\n" + `unicast_peer = ["192.0.2.12"]`, "f.toml:10: vrrp_instance[0].unicast_peer: strict_mode: VRRP is multicast"},
		{"vrrp_strict = true", `auth_pass = "x"` + "\nversion = 2\nadvert_int = \"1s\"", "vrrp_instance[0].auth_pass: strict_mode: authentication is not allowed"},
		{"vrrp_strict = true", `preempt_delay = "5s"`, "vrrp_instance[0].preempt_delay: strict_mode"},
		{"vrrp_strict = true", `accept = true`, "vrrp_instance[0].accept: strict_mode"},
		{"", `use_vmac = 5`, "vrrp_instance[0].use_vmac: want true or the VMAC interface's name"},
		{"", `use_vmac = "eth0"`, "the VMAC needs a name other than the interface's"},
		{"", `vmac_xmit_base = true`, "vrrp_instance[0].vmac_xmit_base: applies with use_vmac only"},
		{"", `virtual_routes = ["198.51.100.0/24 via"]`, `vrrp_instance[0].virtual_routes[0]: "198.51.100.0/24 via": via needs a value`},
		{"", `virtual_routes = ["2001:db8::/64"]`, "is not of the instance's address family"},
		{"", `virtual_rules = ["from 192.0.2.100"]`, "vrrp_instance[0].virtual_rules[0]: \"from 192.0.2.100\": a rule needs a table"},
		{"", `track_process = ["nginx"]`, `vrrp_instance[0].track_process[0]: no [[vrrp_track_process]] is named "nginx"`},
		{"notify_fifo = \"fifo\"", ``, `node.notify_fifo: "fifo" is not an absolute path`},
		{"[[vrrp_track_process]]\nname = \"p\"\nquorum = 3\nquorum_max = 2", ``, "vrrp_track_process[0].process: required"},
		{"[[vrrp_track_process]]\nname = \"p\"\nprocess = \"p\"\nquorum = 3\nquorum_max = 2", ``, "vrrp_track_process[0].quorum_max: 2 is below quorum 3"},
	} {
		node := tc.node
		if strings.HasPrefix(node, "[[") {
			// A table after [node] would take the instance's keys: put it last.
			_, err = config.Parse("f.toml", []byte(fmt.Sprintf(base, "", tc.line)+node+"\n"))
		} else {
			_, err = config.Parse("f.toml", []byte(fmt.Sprintf(base, node, tc.line)))
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s / %s: %v, want %q", tc.node, tc.line, err, tc.want)
		}
	}
}

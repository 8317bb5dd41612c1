package convert

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Options steer a conversion.
type Options struct {
	// ConfigID picks the @ID lines (keepalived's -i); "" = the host's
	// short name, as keepalived.
	ConfigID string
}

// Result is a converted file.
type Result struct {
	TOML  []byte
	Notes []Note
}

// File converts the keepalived.conf at path.
func File(path string, o Options) (*Result, error) {
	if o.ConfigID == "" {
		h, _ := os.Hostname()
		o.ConfigID, _, _ = strings.Cut(h, ".")
	}
	r := &reader{configID: o.ConfigID, vars: map[string]string{}}
	if err := r.readFile(path, 0); err != nil {
		return nil, err
	}
	c := &converter{reader: r, root: &table{}, scripts: map[string]bool{}}
	c.convert(r.parse())
	var b strings.Builder
	fmt.Fprintf(&b, "# Converted from %s by directorctl convert.\n", path)
	b.WriteString("# Check it with directord -t; every key: docs/configuration.md.\n")
	c.root.write(&b)
	return &Result{TOML: []byte(b.String()), Notes: r.notes}, nil
}

type converter struct {
	*reader
	root            *table
	node, dataplane *table
	// Instance defaults from global_defs (vrrp_version, vrrp_garp_*...).
	defaults map[string]string
	scripts  map[string]bool // vrrp_script names
	vsCount  int
	groups   map[string]*node // virtual_server_group by name
}

func (c *converter) warn(n *node, format string, args ...any) {
	c.note(n.File, n.Line, n.Key, format, args...)
}

// none says a keyword has no equivalent.
func (c *converter) none(n *node, why string) {
	if why == "" {
		why = "no equivalent in directord: dropped"
	}
	c.warn(n, "%s", why)
}

func (c *converter) convert(top []*node) {
	c.node = &table{header: "[node]"}
	c.root.subs = append(c.root.subs, c.node)
	c.defaults = map[string]string{}
	c.groups = map[string]*node{}
	// Definitions first: instances and virtual servers refer to them.
	var rest []*node
	for _, n := range top {
		switch n.Key {
		case "global_defs":
			c.globalDefs(n)
		case "virtual_server_group":
			c.groups[n.arg(0)] = n
		default:
			rest = append(rest, n)
		}
	}
	if !c.node.has("name") {
		c.node.setNote("name", str(c.configID), "keepalived.conf has no router_id: the host's name")
	}
	for _, n := range rest {
		switch n.Key {
		case "vrrp_script":
			c.vrrpScript(n)
		case "vrrp_track_file":
			c.trackFile(n)
		case "vrrp_track_process":
			c.trackProcess(n)
		}
	}
	for _, n := range rest {
		switch n.Key {
		case "vrrp_script", "vrrp_track_file", "vrrp_track_process":
		case "vrrp_sync_group":
			c.syncGroup(n)
		case "vrrp_instance":
			c.instance(n)
		case "virtual_server":
			c.virtualServer(n)
		case "static_ipaddress", "static_routes", "static_rules":
			c.none(n, "static addresses, routes and rules are the system's to set (systemd-networkd, ifupdown): dropped")
		case "garp_group", "linkbeat_interfaces", "vrrp_track_bfd", "bfd_instance":
			c.none(n, "")
		default:
			c.warn(n, "unknown keyword: dropped")
		}
	}
	if c.dataplane != nil {
		// [dataplane] after [node], before the instances.
		c.root.subs = slices.Insert(slices.DeleteFunc(c.root.subs, func(t *table) bool { return t == c.dataplane }), 1, c.dataplane)
	}
}

// named starts a top-level array table with its name key.
func (c *converter) named(header, name string) *table {
	t := c.root.sub(header)
	t.indent = ""
	t.set("name", str(name))
	return t
}

func (c *converter) plane() *table {
	if c.dataplane == nil {
		c.dataplane = &table{header: "[dataplane]"}
		c.root.subs = append(c.root.subs, c.dataplane)
	}
	return c.dataplane
}

// seconds reads keepalived's seconds (decimals allowed) as a duration.
func (c *converter) seconds(n *node, i int) (time.Duration, bool) {
	f, err := strconv.ParseFloat(n.arg(i), 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || f > 1e6 {
		c.warn(n, "%q is not a number of seconds: dropped", n.arg(i))
		return 0, false
	}
	return time.Duration(f * float64(time.Second)).Round(time.Millisecond), true
}

// integer reads the i-th argument as an integer.
func (c *converter) integer(n *node, i int) (int, bool) {
	v, err := strconv.Atoi(n.arg(i))
	if err != nil {
		c.warn(n, "%q is not a number: dropped", n.arg(i))
		return 0, false
	}
	return v, true
}

// setInt sets key to n's number, when it is one.
func (c *converter) setInt(t *table, key string, n *node) {
	if v, ok := c.integer(n, 0); ok {
		t.set(key, num(v))
	}
}

// setSeconds sets key to n's seconds as a duration, when they are.
func (c *converter) setSeconds(t *table, key string, n *node) {
	if d, ok := c.seconds(n, 0); ok {
		t.set(key, dur(d))
	}
}

// flag is a keyword that is on when present, or followed by true/false
// or on/off.
func flagOn(n *node) bool {
	switch strings.ToLower(n.arg(0)) {
	case "false", "off", "no", "0":
		return false
	}
	return true
}

// argv splits a keepalived script string into the program and its
// arguments. keepalived runs it without a shell too, unless it is a
// pipeline or uses shell syntax, which directord never runs.
func (c *converter) argv(n *node, s string) []string {
	if strings.ContainsAny(s, "|;&$`<>*?()") {
		c.warn(n, "%q uses shell syntax, and directord runs programs without a shell: put it in an executable file and name that", s)
	}
	return splitWords(s)
}

func (c *converter) globalDefs(g *node) {
	for _, n := range g.Children {
		switch n.Key {
		case "router_id":
			c.node.set("name", str(n.arg(0)))
		case "script_user":
			c.node.set("script_user", str(n.arg(0)))
			if n.arg(1) != "" {
				c.warn(n, "the group %q is dropped: scripts run with the user's own group", n.arg(1))
			}
		case "enable_script_security":
			c.node.set("enable_script_security", "true")
		case "vrrp_strict":
			c.node.set("vrrp_strict", "true")
		case "vrrp_rt_priority":
			if v, ok := c.integer(n, 0); ok {
				c.node.set("realtime_priority", num(v))
			}
		case "vrrp_startup_delay":
			if d, ok := c.seconds(n, 0); ok {
				c.node.set("vrrp_startup_delay", dur(d))
			}
		case "notify_fifo", "vrrp_notify_fifo":
			if c.node.has("notify_fifo") {
				c.warn(n, "directord has one notify FIFO: this one is dropped")
				continue
			}
			c.node.set("notify_fifo", str(n.arg(0)))
			if n.arg(1) != "" {
				c.warn(n, "the FIFO's script %q is dropped: directord writes the FIFO, a reader of yours reads it", n.arg(1))
			}
		case "lvs_flush":
			c.plane().set("lvs_flush", "true")
		case "lvs_timeouts":
			c.lvsTimeouts(n)
		case "lvs_sync_daemon":
			c.syncDaemon(n)
		case "vrrp_version":
			c.defaults["version"] = n.arg(0)
		case "vrrp_garp_master_delay", "vrrp_garp_master_repeat", "vrrp_garp_master_refresh",
			"vrrp_garp_lower_prio_repeat", "vrrp_garp_lower_prio_delay":
			c.defaults[strings.TrimPrefix(n.Key, "vrrp_")] = n.arg(0)
		case "vrrp_skip_check_adv_addr", "vrrp_higher_prio_send_advert", "vrrp_lower_prio_no_advert":
			c.defaults[strings.TrimPrefix(n.Key, "vrrp_")] = boolean(flagOn(n))
		case "notification_email", "notification_email_from", "smtp_server", "smtp_connect_timeout", "smtp_helo_name":
			c.none(n, "directord sends no mail: run a program from notify (or alert on the metrics, etc/prometheus/directord.rules.yml)")
		case "enable_snmp_vrrp", "enable_snmp_checker", "enable_snmp_rfc", "enable_snmp_rfcv2", "enable_snmp_rfcv3", "snmp_socket", "enable_traps":
			c.none(n, "no SNMP in directord: its metrics are Prometheus's (node.metrics_listen)")
		case "vrrp_mcast_group4", "vrrp_mcast_group6":
			c.none(n, "directord uses the RFC's groups 224.0.0.18 and ff02::12 (or unicast_peer)")
		case "vrrp_iptables", "vrrp_ipsets", "nftables", "nftables_priority", "nftables_ifindex":
			c.none(n, "directord makes its own nftables table for no_accept and needs no firewall set-up: dropped")
		case "dynamic_interfaces":
			c.none(n, "directord follows interfaces that appear and disappear without it: dropped")
		default:
			c.none(n, "")
		}
	}
}

func (c *converter) lvsTimeouts(n *node) {
	var parts []string
	for i := 0; i+1 < len(n.Args); i += 2 {
		d, ok := c.seconds(n, i+1)
		if !ok {
			continue
		}
		switch n.Args[i] {
		case "tcp", "tcpfin", "udp":
			parts = append(parts, fmt.Sprintf("%s = %s", n.Args[i], dur(d)))
		default:
			c.warn(n, "%q is not a timeout: tcp, tcpfin or udp", n.Args[i])
		}
	}
	if len(parts) > 0 {
		c.plane().set("timeouts", "{ "+strings.Join(parts, ", ")+" }")
	}
}

func (c *converter) syncDaemon(n *node) {
	if len(n.Args) < 2 {
		c.warn(n, "needs an interface and an instance: dropped")
		return
	}
	parts := []string{"interface = " + str(n.Args[0]), "instance = " + str(n.Args[1])}
	for i := 2; i < len(n.Args); i++ {
		key := n.Args[i]
		switch key {
		case "id", "maxlen", "port", "ttl":
			if i+1 < len(n.Args) {
				i++
				if key == "id" {
					key = "sync_id"
				}
				parts = append(parts, key+" = "+n.Args[i])
			}
		case "group":
			if i+1 < len(n.Args) {
				i++
				parts = append(parts, "group = "+str(n.Args[i]))
			}
		default:
			c.warn(n, "%q is not an option of lvs_sync_daemon: dropped", key)
		}
	}
	c.plane().set("lvs_sync_daemon", "{ "+strings.Join(parts, ", ")+" }")
}

func (c *converter) vrrpScript(s *node) {
	t := c.named("[[vrrp_script]]", s.arg(0))
	c.scripts[s.arg(0)] = true
	for _, n := range s.Children {
		switch n.Key {
		case "script":
			t.set("script", strs(c.argv(n, strings.Join(n.Args, " "))))
		case "interval", "timeout":
			c.setSeconds(t, n.Key, n)
		case "rise", "fall", "weight":
			c.setInt(t, n.Key, n)
			if n.Key == "weight" && n.arg(1) == "reverse" {
				c.warn(n, "reverse belongs on the instances' track_script in directord: add reverse = true there")
			}
		case "user":
			t.set("user", str(n.arg(0)))
			if n.arg(1) != "" {
				c.warn(n, "the group %q is dropped", n.arg(1))
			}
		case "init_fail":
			c.warn(n, "directord's init_fail is the instance's: set init_fail = true on the instances tracking it")
		default:
			c.none(n, "")
		}
	}
	if !t.has("script") {
		c.warn(s, "no script: directord -t will say so")
	}
}

func (c *converter) trackFile(s *node) {
	t := c.named("[[vrrp_track_file]]", s.arg(0))
	for _, n := range s.Children {
		switch n.Key {
		case "file":
			t.set("file", str(n.arg(0)))
		case "weight":
			c.setInt(t, "weight", n)
		case "init_file":
			c.none(n, "directord reads a missing file as 0 and does not create it")
		default:
			c.none(n, "")
		}
	}
}

func (c *converter) trackProcess(s *node) {
	t := c.named("[[vrrp_track_process]]", s.arg(0))
	for _, n := range s.Children {
		switch n.Key {
		case "process":
			t.set("process", str(n.arg(0)))
			if len(n.Args) > 1 {
				c.warn(n, "directord matches the process's name only, not its arguments")
			}
		case "quorum", "quorum_max", "weight":
			c.setInt(t, n.Key, n)
		case "delay":
			c.setSeconds(t, "delay", n)
		default:
			c.none(n, "")
		}
	}
}

func (c *converter) syncGroup(g *node) {
	t := c.named("[[vrrp_sync_group]]", g.arg(0))
	for _, n := range g.Children {
		switch n.Key {
		case "group":
			var members []string
			for _, m := range n.Children {
				members = append(members, m.Key)
				members = append(members, m.Args...)
			}
			t.set("group", strs(members))
		case "notify_master", "notify_backup", "notify_fault", "notify_stop", "notify":
			c.warn(n, "directord runs notify programs per instance: put it on the group's instances")
		case "smtp_alert", "global_tracking", "sync_group_tracking_weight":
			c.none(n, "")
		case "track_script", "track_interface", "track_file", "track_process":
			c.warn(n, "directord tracks per instance: put it on each of the group's instances, with weight 0")
		default:
			c.none(n, "")
		}
	}
}

package convert

import (
	"fmt"
	"net/netip"
	"strings"
)

// instance converts a vrrp_instance.
func (c *converter) instance(in *node) {
	t := c.named("[[vrrp_instance]]", in.arg(0))
	// keepalived's default version is 2, directord's 3: say it always.
	version, versionAt := "2", (*node)(nil)
	if v := c.defaults["version"]; v != "" {
		version = v
	}
	var vips []string
	for _, n := range in.Children {
		switch n.Key {
		case "interface":
			t.set("interface", str(n.arg(0)))
		case "state":
			st := strings.ToUpper(n.arg(0))
			if st != "MASTER" && st != "BACKUP" {
				c.warn(n, "%q is not MASTER or BACKUP: dropped", n.arg(0))
				continue
			}
			t.set("state", str(st))
		case "virtual_router_id", "priority":
			c.setInt(t, n.Key, n)
		case "advert_int", "preempt_delay", "garp_master_delay", "garp_master_refresh", "garp_lower_prio_delay":
			c.setSeconds(t, n.Key, n)
		case "garp_master_repeat", "garp_lower_prio_repeat":
			c.setInt(t, n.Key, n)
		case "version":
			version, versionAt = n.arg(0), n
		case "nopreempt":
			t.set("preempt", "false")
		case "preempt":
			t.set("preempt", "true")
		case "dont_track_primary", "skip_check_adv_addr", "lower_prio_no_advert", "higher_prio_send_advert",
			"strict_mode", "vmac_xmit_base", "init_fail", "v3_checksum_as_v2":
			t.set(n.Key, boolean(flagOn(n)))
		case "accept":
			t.set("accept", "true")
		case "no_accept":
			t.set("no_accept", "true")
		case "authentication":
			c.authentication(t, n)
		case "virtual_ipaddress":
			vips = append(vips, c.addresses(n)...)
		case "virtual_ipaddress_excluded":
			t.set("virtual_ipaddress_excluded", strs(c.addresses(n)))
		case "unicast_src_ip", "mcast_src_ip":
			t.set(n.Key, str(n.arg(0)))
		case "unicast_peer":
			var peers []string
			for _, p := range n.Children {
				peers = append(peers, p.Key)
				if len(p.Args) > 0 {
					c.warn(p, "directord takes a peer's address only: %s dropped", strings.Join(p.Args, " "))
				}
			}
			t.set("unicast_peer", strs(peers))
		case "track_interface":
			c.tracks(t, n, "track_interface", "interface")
		case "track_script":
			c.tracks(t, n, "track_script", "name")
		case "track_file":
			c.tracks(t, n, "track_file", "name")
		case "track_process":
			c.tracks(t, n, "track_process", "name")
		case "notify_master", "notify_backup", "notify_fault", "notify_stop", "notify", "notify_master_rx_lower_pri":
			t.set(n.Key, strs(c.argv(n, strings.Join(n.Args, " "))))
		case "use_vmac":
			if n.arg(0) != "" {
				t.set("use_vmac", str(n.arg(0)))
			} else {
				t.set("use_vmac", "true")
			}
		case "virtual_routes", "virtual_rules":
			var lines []string
			for _, r := range n.Children {
				lines = append(lines, strings.Join(append([]string{r.Key}, r.Args...), " "))
			}
			t.set(n.Key, strs(lines))
		case "smtp_alert":
			c.none(n, "directord sends no mail: run a program from notify")
		case "debug":
			c.none(n, "directord's log level is node.log_level: dropped")
		case "track_bfd":
			c.none(n, "no BFD in directord: track the BFD daemon's state with a vrrp_script or vrrp_track_file")
		case "use_ipvlan", "track_src_ip", "unicast_ttl", "notify_deleted", "native_ipv6", "kernel_rx_buf_size",
			"check_unicast_src", "unicast_fault_no_peer", "old_unicast_checksum":
			c.none(n, "")
		default:
			c.warn(n, "unknown keyword: dropped")
		}
	}
	c.instanceDefaults(t)
	v6 := false
	if len(vips) > 0 {
		a, err := netip.ParsePrefix(vips[0])
		if err != nil {
			b, _ := netip.ParseAddr(vips[0])
			a = netip.PrefixFrom(b, b.BitLen())
		}
		v6 = a.Addr().Is6()
	}
	if v6 && version == "2" {
		// keepalived runs IPv6 instances in version 3 whatever it says.
		if versionAt != nil {
			c.warn(versionAt, "IPv6 needs VRRP version 3: the instance runs version 3, as keepalived's does")
		}
		version = "3"
	}
	t.set("version", version)
	if v6 {
		first, err := netip.ParsePrefix(vips[0])
		if err == nil && !first.Addr().IsLinkLocalUnicast() {
			// RFC 9568: an IPv6 instance's first address is link-local.
			// keepalived makes one up; directord wants it written.
			vrid := "1"
			for _, k := range t.keys {
				if k.key == "virtual_router_id" {
					vrid = k.value
				}
			}
			ll := fmt.Sprintf("fe80::%s/64", vrid)
			c.warn(in, "an IPv6 instance's first address must be link-local: %s added before the others", ll)
			vips = append([]string{ll}, vips...)
		}
	}
	t.set("virtual_ipaddress", strs(vips))
}

// instanceDefaults fills in what global_defs set for every instance.
func (c *converter) instanceDefaults(t *table) {
	for _, k := range []string{"garp_master_delay", "garp_master_refresh", "garp_lower_prio_delay"} {
		if v, ok := c.defaults[k]; ok && !t.has(k) {
			if d, ok := c.seconds(&node{Key: "vrrp_" + k, Args: []string{v}, File: "global_defs"}, 0); ok {
				t.set(k, dur(d))
			}
		}
	}
	for _, k := range []string{"garp_master_repeat", "garp_lower_prio_repeat"} {
		if v, ok := c.defaults[k]; ok && !t.has(k) {
			t.set(k, v)
		}
	}
	for _, k := range []string{"skip_check_adv_addr", "higher_prio_send_advert", "lower_prio_no_advert"} {
		if v, ok := c.defaults[k]; ok && !t.has(k) {
			t.set(k, v)
		}
	}
}

func (c *converter) authentication(t *table, a *node) {
	for _, n := range a.Children {
		switch n.Key {
		case "auth_type":
			if strings.ToUpper(n.arg(0)) != "PASS" {
				c.warn(n, "only PASS: IPsec AH is not in directord; the instance runs without authentication")
				return
			}
		case "auth_pass":
			t.set("auth_pass", str(n.arg(0)))
		default:
			c.none(n, "")
		}
	}
}

// addresses reads a virtual_ipaddress block: "ADDR[/LEN] [dev IF] [label
// L] [scope S] [brd B]..." per line; directord keeps the address.
func (c *converter) addresses(b *node) []string {
	var out []string
	for _, n := range b.Children {
		addr := n.Key
		if len(n.Args) > 0 {
			c.warn(n, "directord puts the address on the instance's interface with no options: %s dropped", strings.Join(n.Args, " "))
		}
		if strings.Contains(addr, "-") && !strings.Contains(addr, ":") {
			c.warn(n, "address ranges are not supported: write each address")
		}
		out = append(out, addr)
	}
	return out
}

// tracks converts a track_* block: each line a name (or interface) with
// an optional "weight N [reverse]".
func (c *converter) tracks(t *table, b *node, key, nameKey string) {
	var items []string
	for _, n := range b.Children {
		item := str(n.Key)
		var parts []string
		for i := 0; i < len(n.Args); i++ {
			switch n.Args[i] {
			case "weight":
				if i+1 < len(n.Args) {
					i++
					parts = append(parts, "weight = "+n.Args[i])
				}
			case "reverse":
				parts = append(parts, "reverse = true")
			default:
				c.warn(n, "%q is not understood here: dropped", n.Args[i])
			}
		}
		if key == "track_script" && !c.scripts[n.Key] {
			c.warn(n, "no vrrp_script %q is defined", n.Key)
		}
		if len(parts) > 0 {
			item = fmt.Sprintf("{ %s = %s, %s }", nameKey, str(n.Key), strings.Join(parts, ", "))
		}
		items = append(items, item)
	}
	t.set(key, "["+strings.Join(items, ", ")+"]")
}

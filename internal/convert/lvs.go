package convert

import (
	"encoding/hex"
	"fmt"
	"math/bits"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"
)

// checkDefaults are the timings a checker inherits from its virtual and
// real server (keepalived lets both set them).
type checkDefaults struct {
	interval, timeout, delayBeforeRetry, warmup time.Duration
	retry                                       int
	alpha                                       bool
	virtualhost                                 string
	notifyUp, notifyDown                        []string
}

// timing reads a keyword a virtual server, a real server and a checker
// may all give, each for those under it; false when n is another.
func (c *converter) timing(n *node, d *checkDefaults) bool {
	durations := map[string]*time.Duration{"delay_loop": &d.interval, "connect_timeout": &d.timeout,
		"misc_timeout": &d.timeout, "delay_before_retry": &d.delayBeforeRetry, "warmup": &d.warmup}
	if p, ok := durations[n.Key]; ok {
		if v, ok := c.seconds(n, 0); ok {
			*p = v
		}
		return true
	}
	switch n.Key {
	case "retry", "nb_get_retry":
		if v, ok := c.integer(n, 0); ok {
			d.retry = v
		}
	case "alpha":
		d.alpha = true
	case "virtualhost":
		d.virtualhost = n.arg(0)
	default:
		return false
	}
	return true
}

// virtualServer converts a virtual_server: by address, by fwmark, or a
// virtual_server_group, which directord writes as one virtual server per
// member.
func (c *converter) virtualServer(vs *node) {
	type member struct{ address, fwmark string }
	var members []member
	var groupName string
	switch {
	case vs.arg(0) == "fwmark":
		members = []member{{fwmark: vs.arg(1)}}
	case vs.arg(0) == "group":
		groupName = vs.arg(1)
		g, ok := c.groups[groupName]
		if !ok {
			c.warn(vs, "no virtual_server_group %q: dropped", groupName)
			return
		}
		for _, m := range g.Children {
			if m.Key == "fwmark" {
				members = append(members, member{fwmark: m.arg(0)})
				continue
			}
			for _, a := range c.expandRange(m) {
				members = append(members, member{address: hostPort(a, m.arg(0))})
			}
		}
		c.warn(vs, "directord has no virtual server groups: written as %d virtual servers %s-1... with the same real servers", len(members), groupName)
	default:
		members = []member{{address: hostPort(vs.arg(0), vs.arg(1))}}
	}
	for i, m := range members {
		c.vsCount++
		name := ""
		switch {
		case groupName != "":
			name = fmt.Sprintf("%s-%d", groupName, i+1)
		case m.fwmark != "":
			name = "fwmark-" + m.fwmark
		default:
			name = "vs-" + strings.NewReplacer("[", "", "]", "", ":", "-").Replace(m.address)
		}
		t := c.named("[[virtual_server]]", name)
		if m.fwmark != "" {
			t.set("fwmark", m.fwmark)
		} else {
			t.set("address", str(m.address))
		}
		// Only the first of a group's members reports what it drops.
		quiet := i > 0
		c.virtualServerBody(t, vs, m.fwmark != "", quiet)
	}
}

// expandRange reads a group member "IP PORT" or "IP-LAST PORT" (the last
// byte of an IPv4 address, or the last group of an IPv6 one).
func (c *converter) expandRange(m *node) []string {
	first, last, isRange := strings.Cut(m.Key, "-")
	if !isRange {
		return []string{m.Key}
	}
	a, err := netip.ParseAddr(first)
	if err != nil {
		c.warn(m, "%q is not an address range: dropped", m.Key)
		return nil
	}
	var out []string
	for n := 0; n < 256; n++ {
		out = append(out, a.String())
		s := a.String()
		if strings.HasSuffix(s, "."+last) || strings.HasSuffix(s, ":"+last) {
			return out
		}
		a = a.Next()
	}
	c.warn(m, "%q: a range of more than 256 addresses: dropped", m.Key)
	return nil
}

func hostPort(host, port string) string {
	a, err := netip.ParseAddr(host)
	if err == nil && a.Is6() {
		host = "[" + host + "]"
	}
	if port == "" {
		return host
	}
	return host + ":" + port
}

func (c *converter) virtualServerBody(t *table, vs *node, fwmark, quiet bool) {
	warn := func(n *node, format string, args ...any) {
		if !quiet {
			c.warn(n, format, args...)
		}
	}
	d := checkDefaults{interval: 60 * time.Second, timeout: 5 * time.Second, delayBeforeRetry: time.Second, retry: 1}
	var reals []*node
	var flags []string
	inhibit := false
	for _, n := range vs.Children {
		if c.timing(n, &d) {
			continue
		}
		switch n.Key {
		case "lb_algo", "lvs_sched":
			t.set("scheduler", str(strings.ToLower(n.arg(0))))
		case "lb_kind", "lvs_method":
			t.set("forwarding", str(strings.ToLower(n.arg(0))))
		case "protocol":
			if !fwmark {
				t.set("protocol", str(strings.ToLower(n.arg(0))))
			}
		case "ip_family":
			if fwmark {
				t.set("family", str(map[string]string{"inet": "ipv4", "inet6": "ipv6"}[strings.ToLower(n.arg(0))]))
			}
		case "persistence_timeout":
			v := 360 * time.Second // keepalived's default when none is given
			if n.arg(0) != "" {
				var ok bool
				if v, ok = c.seconds(n, 0); !ok {
					continue
				}
			}
			t.set("persistence_timeout", dur(v))
		case "persistence_granularity":
			c.granularity(t, n)
		case "ops":
			t.set("one_packet", "true")
		case "quorum", "hysteresis":
			c.setInt(t, n.Key, n)
		case "inhibit_on_failure":
			inhibit = true
		case "sorry_server":
			t.set("sorry_server", str(hostPort(n.arg(0), n.arg(1))))
		case "sh-port", "sh-fallback", "mh-port", "mh-fallback", "flag-1", "flag-2", "flag-3":
			flags = append(flags, n.Key)
		case "real_server":
			reals = append(reals, n)
		case "quorum_up", "quorum_down":
			warn(n, "directord runs no program when quorum changes: alert on directord_lvs_service_quorum_up (etc/prometheus/directord.rules.yml)")
		case "omega":
			warn(n, "directord runs no quorum_down program at shutdown: dropped")
		case "ha_suspend":
			warn(n, "directord checks real servers on both directors all the time, so that a backup's table is right when it takes over: dropped")
		case "sorry_server_inhibit", "sorry_server_lvs_method":
			warn(n, "the sorry server is added and removed, with the service's forwarding: dropped")
		default:
			warn(n, "unknown keyword: dropped")
		}
	}
	if len(flags) > 0 {
		t.set("scheduler_flags", strs(flags))
	}
	// keepalived's default scheduler is the kernel's default; directord's
	// is wlc, the same as ipvsadm's.
	var rsTables []*table
	var checks [][]*table
	for _, rs := range reals {
		rt, cs := c.realServer(t, rs, d, quiet, &inhibit)
		rsTables = append(rsTables, rt)
		checks = append(checks, cs)
	}
	if inhibit {
		t.set("inhibit_on_failure", "true")
	}
	// One check per server, the same for all: the virtual server's
	// health_check. Else each server's own list.
	shared := len(checks) > 0
	for _, cs := range checks {
		if len(cs) != 1 || render(cs[0]) != render(checks[0][0]) {
			shared = false
		}
	}
	if shared {
		hc := checks[0][0]
		hc.header, hc.indent = "[virtual_server.health_check]", "  "
		t.subs = append([]*table{hc}, t.subs...)
	} else {
		for i, cs := range checks {
			for _, ct := range cs {
				ct.header, ct.indent = "[[virtual_server.real_server.check]]", "    "
				rsTables[i].subs = append(rsTables[i].subs, ct)
			}
		}
	}
}

func render(t *table) string {
	var b strings.Builder
	for _, k := range t.keys {
		fmt.Fprintf(&b, "%s=%s\n", k.key, k.value)
	}
	return b.String()
}

// granularity turns keepalived's mask (255.255.255.0) into a prefix
// length.
func (c *converter) granularity(t *table, n *node) {
	a, err := netip.ParseAddr(n.arg(0))
	if err != nil {
		c.setInt(t, "persistence_granularity", n)
		return
	}
	b := a.As4()
	m := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	ones := bits.LeadingZeros32(^m)
	if m<<ones != 0 {
		c.warn(n, "%s is not a contiguous mask: dropped", n.arg(0))
		return
	}
	t.set("persistence_granularity", num(ones))
}

func (c *converter) realServer(vs *table, rs *node, d checkDefaults, quiet bool, inhibit *bool) (*table, []*table) {
	warn := func(n *node, format string, args ...any) {
		if !quiet {
			c.warn(n, format, args...)
		}
	}
	t := vs.sub("[[virtual_server.real_server]]")
	t.set("address", str(hostPort(rs.arg(0), rs.arg(1))))
	rsPort := rs.arg(1)
	var checkers []*node
	for _, n := range rs.Children {
		if c.timing(n, &d) {
			continue
		}
		switch n.Key {
		case "weight":
			c.setInt(t, "weight", n)
		case "uthreshold", "lthreshold":
			if v, ok := c.integer(n, 0); ok {
				t.set(map[string]string{"uthreshold": "upper_threshold", "lthreshold": "lower_threshold"}[n.Key], num(v))
			}
		case "lvs_method", "lb_kind":
			t.set("forwarding", str(strings.ToLower(n.arg(0))))
		case "inhibit_on_failure":
			if !*inhibit {
				warn(n, "directord's inhibit_on_failure is the virtual server's: set for all its real servers")
			}
			*inhibit = true
		case "notify_up":
			d.notifyUp = c.argv(n, strings.Join(n.Args, " "))
		case "notify_down":
			d.notifyDown = c.argv(n, strings.Join(n.Args, " "))
		case "TCP_CHECK", "HTTP_GET", "SSL_GET", "MISC_CHECK", "DNS_CHECK", "UDP_CHECK", "PING_CHECK", "SMTP_CHECK":
			checkers = append(checkers, n)
		case "BFD_CHECK", "FILE_CHECK":
			warn(n, "no %s in directord: dropped (an exec check can read a file)", n.Key)
		default:
			warn(n, "unknown keyword: dropped")
		}
	}
	var checks []*table
	for _, n := range checkers {
		checks = append(checks, c.checker(n, d, rsPort, warn)...)
	}
	return t, checks
}

// checker converts one keepalived checker into directord checks: several
// when it has several url or host blocks, each of which must pass in
// keepalived too.
func (c *converter) checker(ck *node, d checkDefaults, rsPort string, warn func(*node, string, ...any)) []*table {
	typ := map[string]string{"TCP_CHECK": "tcp", "HTTP_GET": "http", "SSL_GET": "https", "MISC_CHECK": "exec",
		"DNS_CHECK": "dns", "UDP_CHECK": "udp", "PING_CHECK": "icmp", "SMTP_CHECK": "smtp"}[ck.Key]
	base := &table{}
	extra := &table{} // type-specific keys, after the timings
	var urls, hosts []*node
	for _, n := range ck.Children {
		if c.timing(n, &d) {
			continue
		}
		switch n.Key {
		case "connect_ip", "bindto":
			extra.set(n.Key, str(n.arg(0)))
		case "connect_port":
			if v, ok := c.integer(n, 0); ok {
				extra.set("connect_port", num(v))
			}
		case "log_all_failures":
			extra.set("log_all_failures", "true")
		case "url":
			urls = append(urls, n)
		case "host":
			hosts = append(hosts, n)
		case "misc_path":
			extra.set("command", strs(c.argv(n, strings.Join(n.Args, " "))))
		case "misc_dynamic":
			extra.set("dynamic", "true")
		case "user":
			warn(n, "exec checks run as node.script_user in directord: the user %q is dropped", n.arg(0))
		case "type":
			extra.set("query_type", str(strings.ToUpper(n.arg(0))))
		case "name":
			extra.set("query_name", str(n.arg(0)))
		case "helo_name":
			extra.set("helo_name", str(n.arg(0)))
		case "payload":
			if s, ok := c.hexText(n, n.arg(0), warn); ok {
				extra.set("payload", str(s))
			}
		case "require_reply":
			if n.arg(0) == "" {
				extra.set("expect", str("(?s)."))
			} else if s, ok := c.hexText(n, n.arg(0), warn); ok {
				extra.set("expect", str("^"+regexp.QuoteMeta(s)))
			}
		case "enable_sni":
			if d.virtualhost != "" {
				extra.set("sni", str(d.virtualhost))
			}
		case "bind_port", "bind_if", "fwmark", "http_protocol", "fast_recovery", "tls_compliant", "protocol", "min_ttl", "max_ttl":
			warn(n, "no equivalent in directord's checks: dropped")
		default:
			warn(n, "unknown keyword: dropped")
		}
	}
	timeout := d.timeout
	if timeout > d.interval {
		warn(ck, "connect_timeout %s is longer than delay_loop %s, which directord refuses: the timeout is the interval", timeout, d.interval)
		timeout = d.interval
	}
	base.set("type", str(typ))
	base.set("interval", dur(d.interval))
	base.set("timeout", dur(timeout))
	base.set("retry", num(d.retry))
	base.set("delay_before_retry", dur(d.delayBeforeRetry))
	if d.warmup > 0 {
		base.set("warmup", dur(d.warmup))
	}
	// keepalived takes a server down at the first failed check (after
	// its retries) and up at the first good one.
	base.set("rise", "1")
	base.set("fall", "1")
	if d.alpha {
		base.set("alpha", "true")
	}
	if d.notifyUp != nil {
		base.set("notify_up", strs(d.notifyUp))
	}
	if d.notifyDown != nil {
		base.set("notify_down", strs(d.notifyDown))
	}
	// keepalived's default ports of DNS and SMTP checks.
	defaultPort := map[string]string{"dns": "53", "smtp": "25"}[typ]
	if defaultPort != "" && !extra.has("connect_port") && rsPort != defaultPort {
		extra.set("connect_port", defaultPort)
	}
	if typ == "exec" && !extra.has("command") {
		warn(ck, "no misc_path: directord -t will say so")
	}
	one := func(keys ...kv) *table {
		t := &table{keys: slices.Clone(base.keys)}
		t.keys = append(t.keys, extra.keys...)
		t.keys = append(t.keys, keys...)
		return t
	}
	switch {
	case typ == "http" || typ == "https":
		if len(urls) == 0 {
			warn(ck, "no url block: the check asks for / and wants 200-299")
			urls = []*node{{Key: "url"}}
		}
		var out []*table
		for _, u := range urls {
			out = append(out, one(c.url(u, d.virtualhost, warn)...))
		}
		return out
	case typ == "smtp" && len(hosts) > 0:
		var out []*table
		for _, h := range hosts {
			var keys []kv
			for _, n := range h.Children {
				switch n.Key {
				case "connect_ip", "bindto":
					keys = append(keys, kv{key: n.Key, value: str(n.arg(0))})
				case "connect_port":
					keys = append(keys, kv{key: n.Key, value: n.arg(0)})
				default:
					warn(n, "no equivalent in directord's checks: dropped")
				}
			}
			t := one(keys...)
			out = append(out, dedupKeys(t))
		}
		return out
	}
	return []*table{one()}
}

// dedupKeys keeps the last value of a key written twice (a host block's
// connect_port over the checker's).
func dedupKeys(t *table) *table {
	var out []kv
	for i, k := range t.keys {
		later := slices.ContainsFunc(t.keys[i+1:], func(o kv) bool { return o.key == k.key })
		if !later {
			out = append(out, k)
		}
	}
	t.keys = out
	return t
}

// url converts an HTTP_GET/SSL_GET url block.
func (c *converter) url(u *node, virtualhost string, warn func(*node, string, ...any)) []kv {
	keys := []kv{{key: "path", value: str("/")}}
	var codes []string
	for _, n := range u.Children {
		switch n.Key {
		case "path":
			keys[0].value = str(n.arg(0))
		case "digest":
			keys = append(keys, kv{key: "digest", value: str(strings.ToLower(n.arg(0)))})
		case "status_code":
			codes = append(codes, n.Args...)
		case "regex":
			keys = append(keys, kv{key: "body_regex", value: str(n.arg(0))})
		case "virtualhost":
			virtualhost = n.arg(0)
		default:
			warn(n, "no equivalent in directord's http checks: dropped")
		}
	}
	if len(codes) > 0 {
		keys = append(keys, kv{key: "status_codes", value: strs(codes)})
	}
	if virtualhost != "" {
		keys = append(keys, kv{key: "host", value: str(virtualhost)})
	}
	return keys
}

// hexText reads keepalived's hex payload as text; directord's payload is a
// string.
func (c *converter) hexText(n *node, s string, warn func(*node, string, ...any)) (string, bool) {
	b, err := hex.DecodeString(strings.TrimPrefix(s, "0x"))
	if err != nil {
		warn(n, "%q is not hex: dropped", s)
		return "", false
	}
	for _, r := range string(b) {
		if r > unicode.MaxASCII || (!unicode.IsPrint(r) && r != '\n' && r != '\r' && r != '\t') {
			warn(n, "the bytes are not text, and directord's udp payload is a string: dropped")
			return "", false
		}
	}
	return string(b), true
}

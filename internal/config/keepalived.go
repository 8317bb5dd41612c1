package config

import (
	"regexp"
	"strings"
)

// keepalivedBlock is how a keepalived.conf opens its blocks: a keyword,
// perhaps a name or address, and '{'. TOML has no such line.
var keepalivedBlock = regexp.MustCompile(`^\s*(global_defs|vrrp_instance|vrrp_script|vrrp_sync_group|virtual_server|virtual_server_group|real_server|static_ipaddress|static_routes|vrrp_track_file|vrrp_track_process)(\s+[^={}\[\]]*)?\{\s*$`)

// keepalivedLine returns the first line (1-based) of data that reads as
// keepalived syntax, and 0 when none does.
func keepalivedLine(data string) (int, string) {
	for i, l := range strings.Split(data, "\n") {
		if keepalivedBlock.MatchString(l) {
			return i + 1, strings.TrimSpace(l)
		}
	}
	return 0, ""
}

// keepalivedKeys names the directord key for a keepalived keyword written
// where directord has another name (docs/configuration.md has them all).
var keepalivedKeys = map[string]string{
	"router_id":               `[node] name`,
	"vrrp_rt_priority":        `[node] realtime_priority`,
	"vrrp_notify_fifo":        `[node] notify_fifo`,
	"nopreempt":               `preempt = false`,
	"authentication":          `auth_pass`,
	"auth_type":               `auth_pass (PASS only)`,
	"lb_algo":                 `scheduler`,
	"lvs_sched":               `scheduler`,
	"lb_kind":                 `forwarding`,
	"lvs_method":              `forwarding`,
	"ip_family":               `family`,
	"ops":                     `one_packet`,
	"uthreshold":              `upper_threshold`,
	"lthreshold":              `lower_threshold`,
	"delay_loop":              `health_check.interval`,
	"connect_timeout":         `health_check.timeout`,
	"nb_get_retry":            `health_check.retry`,
	"virtualhost":             `health_check.host`,
	"status_code":             `health_check.status_codes`,
	"regex":                   `health_check.body_regex`,
	"url":                     `health_check.path (and status_codes, digest)`,
	"tcp_check":               `health_check with type = "tcp"`,
	"http_get":                `health_check with type = "http"`,
	"ssl_get":                 `health_check with type = "https"`,
	"misc_check":              `health_check with type = "exec" (command, or script naming a [[check_script]])`,
	"ping_check":              `health_check with type = "icmp"`,
	"smtp_check":              `health_check with type = "smtp"`,
	"helo_name":               `health_check.helo_name`,
	"real_server":             `[[virtual_server.real_server]], its checks [[virtual_server.real_server.check]]`,
	"dns_check":               `health_check with type = "dns"`,
	"udp_check":               `health_check with type = "udp"`,
	"misc_path":               `health_check.command`,
	"sorry_server_inhibit":    `sorry_server`,
	"notification_email":      `notify programs (directord sends no mail)`,
	"notification_email_from": `notify programs (directord sends no mail)`,
	"smtp_server":             `notify programs (directord sends no mail)`,
}

// keepalivedHint is what to write instead of the keepalived keyword at the
// end of key, or "".
func keepalivedHint(key string) string {
	leaf := key
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		leaf = key[i+1:]
	}
	if k, ok := keepalivedKeys[strings.ToLower(leaf)]; ok {
		return k
	}
	return ""
}

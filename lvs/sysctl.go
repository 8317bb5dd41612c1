package lvs

import (
	"os"
	"strings"
)

// Sysctl is a kernel setting a data plane needs, and what became of it.
type Sysctl struct {
	Key  string `json:"key"`
	Want string `json:"want"`
	Was  string `json:"was,omitempty"`
	Err  string `json:"error,omitempty"`
	Why  string `json:"why"`
}

// NeededSysctls lists the settings a data plane with caps needs for vss.
func NeededSysctls(caps Capabilities, vss []VirtualServer) []Sysctl {
	var nat4, nat6, persist bool
	for _, vs := range vss {
		persist = persist || vs.Service.Persistence > 0
		reals := vs.Reals
		if vs.Sorry != nil {
			reals = append(reals[:len(reals):len(reals)], *vs.Sorry)
		}
		for _, r := range reals {
			if r.Method == NAT {
				if r.Addr.Addr().Is6() {
					nat6 = true
				} else {
					nat4 = true
				}
			}
		}
	}
	var out []Sysctl
	if nat4 {
		out = append(out, Sysctl{Key: "net.ipv4.ip_forward", Want: "1", Why: "nat: the director routes between clients and real servers"})
	}
	if nat6 {
		out = append(out, Sysctl{Key: "net.ipv6.conf.all.forwarding", Want: "1", Why: "nat over IPv6: the director routes between clients and real servers"})
	}
	if len(vss) > 0 {
		out = append(out, caps.TableSysctls...)
		if nat4 || nat6 {
			out = append(out, caps.NATSysctls...)
		}
		if persist {
			out = append(out, caps.PersistSysctls...)
		}
	}
	return out
}

// ApplySysctls writes each setting under /proc/sys and records the old
// value or the error.
func ApplySysctls(ss []Sysctl) []Sysctl {
	out := make([]Sysctl, len(ss))
	for i, s := range ss {
		path := "/proc/sys/" + strings.ReplaceAll(s.Key, ".", "/")
		if b, err := os.ReadFile(path); err == nil {
			s.Was = strings.TrimSpace(string(b))
		}
		if s.Was != s.Want {
			if err := os.WriteFile(path, []byte(s.Want), 0o644); err != nil {
				s.Err = err.Error()
			}
		}
		out[i] = s
	}
	return out
}

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

// NeededSysctls lists the settings the data plane named dp needs for vss.
func NeededSysctls(dp string, vss []VirtualServer) []Sysctl {
	var nat4, nat6 bool
	for _, vs := range vss {
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
	if dp == "ipvs" && len(vss) > 0 {
		out = append(out, Sysctl{Key: "net.ipv4.vs.expire_nodest_conn", Want: "1",
			Why: "connections of a deleted real server end at once instead of hanging until they time out"})
		if nat4 || nat6 {
			out = append(out, Sysctl{Key: "net.ipv4.vs.conntrack", Want: "1",
				Why: "IPVS NAT connections keep conntrack entries, so nftables rules and NAT on this host see them"})
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

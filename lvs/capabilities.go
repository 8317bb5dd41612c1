package lvs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Capabilities is what a data plane can carry out: one table per data
// plane, read through Dataplane.Capabilities by directord -t, the daemon
// before it applies a table, the reconciler and directorctl lvs.
type Capabilities struct {
	Name string
	// Atomic: Apply carries out all of its operations or none (a refused
	// batch leaves the kernel and the data plane as they were).
	Atomic     bool
	Schedulers []string
	Protocols  []Protocol
	Methods    []Method
	// FlagSchedulers take scheduler flags, limited to FlagBits; others
	// take none.
	FlagSchedulers []string
	FlagBits       uint32
	OnePacket      bool // ipvsadm -o
	Thresholds     bool // upper and lower connection thresholds
	Masquerade     bool // source NAT to the director's address
	PortZero       bool // a real server without a port on a port service
	SyncDaemon     bool // the kernel's connection sync daemons
	ConntrackSync  bool // directord's conntrack sync ([sync])
	// SlotWeights: wrr's weights become slots, at most MaxSlots per
	// service; larger ratios are scaled (see SlotsScaled).
	SlotWeights bool
	// TableSysctls are the kernel settings it needs while it holds a
	// table, NATSysctls those it needs for NAT on top of the forwarding,
	// PersistSysctls those for persistent services.
	TableSysctls, NATSysctls, PersistSysctls []Sysctl
}

// IPVSSchedulers are IPVS's schedulers by their ipvsadm names.
var IPVSSchedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos"}

// NFTSchedulers are the schedulers the nftables data plane implements.
var NFTSchedulers = []string{"rr", "wrr", "sh", "mh"}

// IPVSCapabilities is the IPVS data plane's table.
var IPVSCapabilities = Capabilities{
	Name:           "ipvs",
	Schedulers:     IPVSSchedulers,
	Protocols:      []Protocol{TCP, UDP, SCTP},
	Methods:        []Method{NAT, DR, Tunnel},
	FlagSchedulers: IPVSSchedulers,
	FlagBits:       FlagSched1 | FlagSched2 | FlagSched3,
	OnePacket:      true,
	Thresholds:     true,
	PortZero:       true,
	SyncDaemon:     true,
	TableSysctls: []Sysctl{{Key: "net.ipv4.vs.expire_nodest_conn", Want: "1",
		Why: "connections of a deleted real server end at once instead of hanging until they time out"}},
	NATSysctls: []Sysctl{{Key: "net.ipv4.vs.conntrack", Want: "1",
		Why: "IPVS NAT connections keep conntrack entries, so nftables rules and NAT on this host see them"}},
	PersistSysctls: []Sysctl{{Key: "net.ipv4.vs.expire_quiescent_template", Want: "1",
		Why: "a persistent client of a real server at weight 0 (drained or failed) goes to another: its template expires instead of holding it there"}},
}

// NFTCapabilities is the nftables data plane's table.
var NFTCapabilities = Capabilities{
	Name:           "nftables",
	Atomic:         true,
	Schedulers:     NFTSchedulers,
	Protocols:      []Protocol{TCP, UDP},
	Methods:        []Method{NAT, DR},
	FlagSchedulers: []string{"sh", "mh"},
	FlagBits:       FlagSched1 | FlagSched2,
	Masquerade:     true,
	ConntrackSync:  true,
	SlotWeights:    true,
}

// CapabilitiesOf is the table of the data plane called name.
func CapabilitiesOf(name string) (Capabilities, bool) {
	switch name {
	case IPVSCapabilities.Name:
		return IPVSCapabilities, true
	case NFTCapabilities.Name:
		return NFTCapabilities, true
	}
	return Capabilities{}, false
}

// Unsupported is one setting a data plane cannot carry out.
type Unsupported struct {
	Real  int    // index of the real server concerned, or -1: the service
	Field string // the setting: scheduler, scheduler_flags, protocol, one_packet, forwarding, upper_threshold, address, masquerade
	Msg   string
}

// Unsupported lists what this data plane cannot do for a service and its
// real servers.
func (c Capabilities) Unsupported(svc Service, reals []Real) []Unsupported {
	var out []Unsupported
	add := func(real int, field, format string, args ...any) {
		out = append(out, Unsupported{real, field, fmt.Sprintf(format, args...)})
	}
	switch {
	case slices.Contains(c.Schedulers, svc.Scheduler):
	case c.Name == IPVSCapabilities.Name && slices.Contains(IPVSSchedulers, svc.Scheduler):
		add(-1, "scheduler", "this kernel has no IPVS scheduler %s (no module ip_vs_%s); it has %s", svc.Scheduler, svc.Scheduler, strings.Join(c.Schedulers, ", "))
	default:
		add(-1, "scheduler", "the %s data plane schedules with %s only; %s needs IPVS", c.Name, strings.Join(c.Schedulers, ", "), svc.Scheduler)
	}
	if svc.Protocol != "" && !slices.Contains(c.Protocols, svc.Protocol) {
		add(-1, "protocol", "the %s data plane balances %s; %s needs IPVS", c.Name, joinNames(c.Protocols), svc.Protocol)
	}
	if svc.OnePacket && !c.OnePacket {
		add(-1, "one_packet", "one-packet scheduling needs IPVS")
	}
	switch {
	case svc.Masquerade && !c.Masquerade:
		add(-1, "masquerade", "masquerade needs the nftables data plane")
	case svc.Masquerade && svc.FWMark != 0:
		add(-1, "masquerade", "masquerade is for services with an address and port")
	}
	if svc.Flags&^c.FlagBits != 0 || (svc.Flags != 0 && !slices.Contains(c.FlagSchedulers, svc.Scheduler)) {
		add(-1, "scheduler_flags", "the %s data plane takes the scheduler flags %s only", c.Name, c.flagNames())
	}
	if c.Name == NFTCapabilities.Name && slices.ContainsFunc(reals, func(r Real) bool { return r.Method == DR }) {
		drUnsupported(svc, add)
	}
	for i, r := range reals {
		if !slices.Contains(c.Methods, r.Method) {
			add(i, "forwarding", "the %s data plane forwards by %s only; %s needs IPVS", c.Name, joinNames(c.Methods), r.Method)
		}
		if (r.Upper != 0 || r.Lower != 0) && !c.Thresholds {
			add(i, "upper_threshold", "connection thresholds need IPVS")
		}
		if svc.FWMark == 0 && r.Addr.Port() == 0 && !c.PortZero {
			add(i, "address", "the %s data plane needs a port", c.Name)
		}
	}
	return out
}

// Check is Unsupported as one error, or nil.
func (c Capabilities) Check(svc Service, reals []Real) error {
	u := c.Unsupported(svc, reals)
	if len(u) == 0 {
		return nil
	}
	msgs := make([]string, len(u))
	for i, x := range u {
		msgs[i] = x.Msg
	}
	return errors.New(strings.Join(msgs, "; "))
}

// Features names the optional features the table allows, for people.
func (c Capabilities) Features() []string {
	var out []string
	for _, f := range []struct {
		name string
		on   bool
	}{{"one_packet", c.OnePacket}, {"thresholds", c.Thresholds}, {"masquerade", c.Masquerade},
		{"port_zero", c.PortZero}, {"sync_daemon", c.SyncDaemon}, {"conntrack_sync", c.ConntrackSync}} {
		if f.on {
			out = append(out, f.name)
		}
	}
	return out
}

func (c Capabilities) flagNames() string {
	var names []string
	for name, bit := range SchedFlags {
		if c.FlagBits&bit != 0 && slices.ContainsFunc(c.FlagSchedulers, func(s string) bool { return strings.HasPrefix(name, s+"-") }) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func joinNames[T ~string](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = string(x)
	}
	return strings.Join(s, ", ")
}

// IPVSAvailable says, from files alone, whether this kernel has IPVS or
// can load it: directord -t must neither load a module nor open netlink
// to learn which data plane "auto" would pick.
func IPVSAvailable() (bool, string) {
	if _, err := os.Stat("/proc/net/ip_vs"); err == nil {
		return true, "the kernel has IPVS"
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
		for _, f := range []string{"modules.builtin", "modules.dep"} {
			if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil && moduleListed(b, "ip_vs") {
				return true, "the kernel can load IPVS (" + f + ")"
			}
		}
	}
	return false, "no IPVS in this kernel"
}

// IPVSKernelCapabilities is IPVS's table with the schedulers this kernel
// has: each one's module (ip_vs_NAME) built in, loaded, or in
// modules.dep. Debian's 6.1 kernel has no ip_vs_twos, for one. When the
// kernel's module lists cannot be read, every scheduler is assumed.
func IPVSKernelCapabilities() (Capabilities, string) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return IPVSCapabilities, "schedulers not checked: " + err.Error()
	}
	dir := filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
	var lists [][]byte
	for _, f := range []string{filepath.Join(dir, "modules.builtin"), filepath.Join(dir, "modules.dep"), "/proc/modules"} {
		if b, err := os.ReadFile(f); err == nil {
			lists = append(lists, b)
		}
	}
	return ipvsWithSchedulers(lists...)
}

// ipvsWithSchedulers narrows IPVS's table to the schedulers whose modules
// the lists (modules.builtin, modules.dep, /proc/modules) name.
func ipvsWithSchedulers(lists ...[]byte) (Capabilities, string) {
	c := IPVSCapabilities
	if !slices.ContainsFunc(lists, func(b []byte) bool { return moduleListed(b, "ip_vs") }) {
		return c, "schedulers not checked: the kernel's module lists do not name ip_vs"
	}
	c.Schedulers = slices.DeleteFunc(slices.Clone(IPVSSchedulers), func(s string) bool {
		return !slices.ContainsFunc(lists, func(b []byte) bool { return moduleListed(b, "ip_vs_"+s) })
	})
	c.FlagSchedulers = c.Schedulers
	return c, "schedulers: " + strings.Join(c.Schedulers, ", ")
}

// moduleListed reports whether a modules.dep, modules.builtin or
// /proc/modules lists name.
func moduleListed(list []byte, name string) bool {
	for line := range strings.Lines(string(list)) {
		path, _, _ := strings.Cut(line, ":")
		// /proc/modules: "ip_vs_wrr 12288 1 - Live ...".
		first, _, _ := strings.Cut(strings.TrimSpace(path), " ")
		base := filepath.Base(first)
		if mod, _, _ := strings.Cut(base, ".ko"); mod == name {
			return true
		}
	}
	return false
}

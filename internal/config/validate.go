package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/vrrp/route"

	"github.com/BurntSushi/toml"
)

// Defaults, documented in docs/configuration.md.
const (
	DefaultDataDir      = "/var/lib/directord"
	DefaultStatusSocket = "/run/directord/directord.sock"
)

// Schedulers lists the IPVS schedulers by their ipvsadm names.
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf", "twos"}

// HealthCheckTypes lists the checker kinds, keepalived's TCP_CHECK, HTTP_GET,
// SSL_GET and MISC_CHECK among them.
var HealthCheckTypes = healthcheck.Types

type validator struct {
	file     string
	pos      *lazyPositions
	problems []Problem
	// checkScripts are the file's [[check_script]] names; nil when the
	// virtual servers come from the replicated table, whose script names
	// each director resolves against its own file.
	checkScripts map[string]bool
	// scriptSecurity: programs must not be changeable by non-root users.
	scriptSecurity bool
	// strict is [node] vrrp_strict: the instances' strict_mode default.
	strict bool
}

// add records a problem at the line of path, a sequence of keys and array
// indices such as ("vrrp_instance", 1, "priority").
func (v *validator) add(path []any, format string, args ...any) {
	v.problems = append(v.problems, Problem{
		File: v.file,
		Line: v.pos.line(path...),
		Key:  keyName(path),
		Msg:  fmt.Sprintf(format, args...),
	})
}

// keyName renders a path the way an operator reads it: vrrp_instance[1].priority.
func keyName(path []any) string {
	var b strings.Builder
	for _, e := range path {
		switch x := e.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", x)
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(x)
		}
	}
	return b.String()
}

func at(path []any, more ...any) []any {
	return append(append(make([]any, 0, len(path)+len(more)), path...), more...)
}

// unknownKeys reports every key the schema does not have, with the line of
// each occurrence and the nearest known spelling.
func (v *validator) unknownKeys(keys []toml.Key) {
	known := knownKeys(reflect.TypeFor[rawConfig](), "")
	undecoded := map[string]bool{}
	for _, k := range keys {
		undecoded[k.String()] = true
	}
	for _, k := range keys {
		name := k.String()
		if len(k) > 1 && undecoded[k[:len(k)-1].String()] {
			continue // reported with its unknown table
		}
		msg := "unknown key"
		if h := keepalivedHint(name); h != "" {
			msg += fmt.Sprintf(" (keepalived's keyword; directord's is %s)", h)
		} else if s := suggest(name, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		lines := v.pos.get().plain[name]
		if len(lines) == 0 {
			lines = []int{0}
		}
		for _, l := range lines {
			v.problems = append(v.problems, Problem{File: v.file, Line: l, Key: name, Msg: msg})
		}
	}
}

func knownKeys(t reflect.Type, prefix string) []string {
	var out []string
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	for f := range t.Fields() {
		name := prefix + f.Tag.Get("toml")
		out = append(out, name)
		out = append(out, knownKeys(f.Type, name+".")...)
	}
	return out
}

// suggest returns the known key of the same table closest to name, if close.
func suggest(name string, known []string) string {
	parent, leaf := "", name
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		parent, leaf = name[:i+1], name[i+1:]
	}
	best, bestDist := "", 3
	for _, k := range known {
		if !strings.HasPrefix(k, parent) || strings.Contains(k[len(parent):], ".") {
			continue
		}
		if d := editDistance(leaf, k[len(parent):]); d < bestDist {
			best, bestDist = k[len(parent):], d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// ifname checks an interface name ("" is left to the caller).
func (v *validator) ifname(path []any, name string) string {
	if len(name) > 15 || strings.ContainsAny(name, "/ \t") {
		v.add(path, "%q is not a valid interface name", name)
	}
	return name
}

func (v *validator) config(raw *rawConfig) *Config {
	cfg := &Config{}
	if raw.Node == nil {
		v.problems = append(v.problems, Problem{File: v.file, Key: "node", Msg: "missing [node] section"})
	} else {
		cfg.Node = v.node(raw.Node)
	}
	cfg.Dataplane.Kind = v.oneOf([]any{"dataplane", "kind"}, raw.Dataplane.Kind, "auto", "auto", "ipvs", "nftables")
	cfg.Dataplane.LVSFlush = raw.Dataplane.LVSFlush != nil && *raw.Dataplane.LVSFlush
	cfg.Dataplane.ReconcileInterval = v.duration([]any{"dataplane", "reconcile_interval"}, raw.Dataplane.ReconcileInterval, time.Second, 100*time.Millisecond, time.Hour)
	cfg.Dataplane.DRInterface = v.ifname([]any{"dataplane", "dr_interface"}, raw.Dataplane.DRInterface)
	cfg.VRRPScripts = v.scripts(raw.VRRPScript)
	cfg.VRRP = v.vrrp(raw.VRRPInstance, cfg.VRRPScripts)
	cfg.SyncGroups = v.syncGroups(raw.VRRPSyncGroup, cfg.VRRP)
	cfg.CheckScripts = v.checkScriptList(raw.CheckScript)
	cfg.TrackFiles = v.trackFiles(raw.TrackFile)
	v.trackFileRefs(raw.VRRPInstance, cfg)
	cfg.TrackProcesses = v.trackProcesses(raw.TrackProcess)
	v.trackProcessRefs(raw.VRRPInstance, cfg)
	cfg.VirtualServers = v.virtualServers(raw.VirtualServer)
	if raw.Cluster != nil {
		// The file's virtual servers seed the replicated table.
		v.noCommands(raw.VirtualServer)
	}
	if r := raw.Dataplane.Timeouts; r != nil {
		for _, t := range []struct {
			key string
			raw string
			to  *time.Duration
		}{{"tcp", r.TCP, &cfg.Dataplane.Timeouts.TCP}, {"tcpfin", r.TCPFin, &cfg.Dataplane.Timeouts.TCPFin}, {"udp", r.UDP, &cfg.Dataplane.Timeouts.UDP}} {
			path := []any{"dataplane", "timeouts", t.key}
			*t.to = v.duration(path, t.raw, 0, time.Second, 30*24*time.Hour)
			if *t.to%time.Second != 0 {
				v.add(path, "%s: the kernel keeps timeouts in whole seconds", *t.to)
			}
		}
	}
	if r := raw.Dataplane.LVSSyncDaemon; r != nil {
		cfg.Dataplane.LVSSyncDaemon = v.syncDaemon(r, cfg.VRRP)
	}
	if cfg.Node.Role == "witness" && raw.Cluster == nil {
		v.add([]any{"node", "role"}, "a witness needs a [cluster] section: it only votes in one")
	}
	if raw.Cluster != nil {
		cfg.Cluster = v.cluster(raw.Cluster, cfg.Node.Name)
	}
	if raw.Sync != nil {
		cfg.Sync = v.sync(raw.Sync, cfg.VRRP)
	}
	if raw.BGP != nil {
		cfg.BGP = v.bgp(raw.BGP)
	}
	for i, vs := range cfg.VirtualServers {
		if vs.Announce == AnnounceBGP && cfg.BGP == nil {
			v.add([]any{"virtual_server", i, "announce"}, "announce = \"bgp\" needs a [bgp] section with the routers to announce to")
		}
	}
	return cfg
}

// ParseCommunity reads a standard community, "ASN:VALUE" (each 0-65535),
// as the 32-bit value BGP carries.
func ParseCommunity(s string) (uint32, error) {
	a, b, ok := strings.Cut(s, ":")
	hi, err1 := strconv.ParseUint(a, 10, 16)
	lo, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%q is not a community ASN:VALUE (each 0-65535)", s)
	}
	return uint32(hi)<<16 | uint32(lo), nil
}

func (v *validator) bgp(r *rawBGP) *BGP {
	p := []any{"bgp"}
	b := &BGP{}
	asn := func(path []any, n *int64) uint32 {
		if n == nil {
			v.add(path, "required: an AS number (1-4294967295)")
			return 0
		}
		if *n < 1 || *n > 1<<32-1 {
			v.add(path, "%d is out of range [1, 4294967295]", *n)
			return 0
		}
		return uint32(*n)
	}
	b.LocalAS = asn(at(p, "local_as"), r.LocalAS)
	if a, err := netip.ParseAddr(r.RouterID); err != nil || !a.Is4() {
		v.add(at(p, "router_id"), "%q is not an IPv4 address (BGP's router id is written as one)", r.RouterID)
	} else {
		b.RouterID = a
	}
	for i, c := range r.Communities {
		if _, err := ParseCommunity(c); err != nil {
			v.add(at(p, "communities", i), "%v", err)
			continue
		}
		b.Communities = append(b.Communities, c)
	}
	b.ShutdownDelay = v.duration(at(p, "shutdown_delay"), r.ShutdownDelay, 5*time.Second, 0, 10*time.Minute)
	if len(r.Neighbor) == 0 {
		v.add(at(p, "neighbor"), "required: at least one [[bgp.neighbor]]")
	}
	seen := map[netip.Addr][]any{}
	for i, rn := range r.Neighbor {
		np := at(p, "neighbor", i)
		n := BGPNeighbor{Password: rn.Password}
		a, err := netip.ParseAddr(rn.Address)
		if err != nil {
			v.add(at(np, "address"), "%q is not an IP address", rn.Address)
		} else if l, dup := seen[a]; dup {
			v.add(at(np, "address"), "%s is already a neighbor (line %d)", a, v.pos.line(l...))
		}
		seen[a] = at(np, "address")
		n.Address = a
		n.PeerAS = asn(at(np, "peer_as"), rn.PeerAS)
		n.Port = uint16(v.intIn(at(np, "port"), rn.Port, 179, 1, 65535))
		if len(n.Password) > 80 {
			v.add(at(np, "password"), "at most 80 bytes (the kernel's TCP MD5 key limit)")
		}
		n.HoldTime = v.duration(at(np, "hold_time"), rn.HoldTime, 90*time.Second, 3*time.Second, 65535*time.Second)
		if n.HoldTime%time.Second != 0 {
			v.add(at(np, "hold_time"), "%s: BGP keeps the hold time in whole seconds", n.HoldTime)
		}
		b.Neighbors = append(b.Neighbors, n)
	}
	return b
}

func (v *validator) sync(r *rawSync, instances []VRRPInstance) *Sync {
	p := []any{"sync"}
	s := &Sync{Instance: r.Instance}
	s.Listen, _ = v.addrPort(at(p, "listen"), r.Listen)
	s.Peer, _ = v.addrPort(at(p, "peer"), r.Peer)
	if s.Listen.IsValid() && s.Listen.Addr().IsUnspecified() {
		// The master connects from it, and the peer takes connections
		// from that address only.
		v.add(at(p, "listen"), "%s: give this node's address on the link to the peer, not a wildcard", s.Listen)
	}
	k, err := base64.StdEncoding.DecodeString(r.Key)
	if err != nil || len(k) < 16 {
		v.add(at(p, "key"), "required: at least 16 random bytes in base64 (head -c 32 /dev/urandom | base64)")
	}
	s.Key = k
	if !slices.ContainsFunc(instances, func(in VRRPInstance) bool { return in.Name == r.Instance }) {
		v.add(at(p, "instance"), "%q is not a [[vrrp_instance]]: this node sends its flows while it is MASTER", r.Instance)
	}
	return s
}

func (v *validator) node(r *rawNode) Node {
	p := []any{"node"}
	n := Node{
		Name:          r.Name,
		DataDir:       r.DataDir,
		StatusSocket:  r.StatusSocket,
		MetricsListen: r.MetricsListen,
	}
	n.Role = v.oneOf(at(p, "role"), r.Role, "director", "director", "witness")
	if n.Name == "" {
		v.add(at(p, "name"), "required: a name for this director, such as its host name")
	} else if !validName(n.Name) {
		v.add(at(p, "name"), "%q: use letters, digits, '.', '_' and '-' only", n.Name)
	}
	if n.DataDir == "" {
		n.DataDir = DefaultDataDir
	} else if !filepath.IsAbs(n.DataDir) {
		v.add(at(p, "data_dir"), "%q is not an absolute path", n.DataDir)
	}
	if n.StatusSocket == "" {
		n.StatusSocket = DefaultStatusSocket
	} else if !filepath.IsAbs(n.StatusSocket) {
		v.add(at(p, "status_socket"), "%q is not an absolute path", n.StatusSocket)
	} else if len(n.StatusSocket) > 107 {
		// sun_path holds 108 bytes including the terminating NUL.
		v.add(at(p, "status_socket"), "path is %d bytes long; a unix socket path can have at most 107", len(n.StatusSocket))
	}
	if n.MetricsListen != "" {
		if _, err := netip.ParseAddrPort(n.MetricsListen); err != nil {
			v.add(at(p, "metrics_listen"), "%q is not an IP:port address", n.MetricsListen)
		}
	}
	n.LogFormat = v.oneOf(at(p, "log_format"), r.LogFormat, "text", "text", "json")
	n.LogLevel = v.oneOf(at(p, "log_level"), r.LogLevel, "info", "debug", "info", "warn", "error")
	n.ScriptSecurity = r.ScriptSecure == nil || *r.ScriptSecure
	n.VRRPStartupDelay = v.duration(at(p, "vrrp_startup_delay"), r.VRRPStartup, 0, 0, time.Hour)
	n.RealtimePriority = v.intIn(at(p, "realtime_priority"), r.Realtime, 0, 0, 99)
	n.VRRPStrict = r.VRRPStrict != nil && *r.VRRPStrict
	v.strict = n.VRRPStrict
	if r.NotifyFIFO != "" {
		if !filepath.IsAbs(r.NotifyFIFO) {
			v.add(at(p, "notify_fifo"), "%q is not an absolute path", r.NotifyFIFO)
		}
		n.NotifyFIFO = r.NotifyFIFO
	}
	v.scriptSecurity = n.ScriptSecurity
	if r.ScriptUser != "" {
		u, err := lookupUser(r.ScriptUser)
		if err != nil {
			v.add(at(p, "script_user"), "%v", err)
		} else {
			n.ScriptUser, n.ScriptUID, n.ScriptGID, n.ScriptGroups = r.ScriptUser, u.uid, u.gid, u.groups
		}
	}
	return n
}

type scriptUser struct {
	uid, gid uint32
	groups   []uint32
}

// lookupUser resolves a user name (or a numeric uid) to its ids.
func lookupUser(name string) (scriptUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return scriptUser{}, fmt.Errorf("no user %q on this host", name)
		}
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return scriptUser{}, fmt.Errorf("user %q has ids %s:%s, not numbers", name, u.Uid, u.Gid)
	}
	su := scriptUser{uid: uint32(uid), gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				su.groups = append(su.groups, uint32(n))
			}
		}
	}
	return su, nil
}

// changeable says who other than root could change the program at path:
// the file or a directory above it owned by another user, or writable by
// group or others (a directory with the sticky bit excepted: others
// cannot replace what root owns in it). A program that is not there is
// not judged here (it fails when it runs).
func changeable(path string) string {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return ""
	}
	for cur := real; ; cur = filepath.Dir(cur) {
		st, err := os.Stat(cur)
		if err != nil {
			return ""
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 {
			return fmt.Sprintf("%s is owned by uid %d", cur, sys.Uid)
		}
		if st.Mode().Perm()&0o022 != 0 && !(st.IsDir() && st.Mode()&os.ModeSticky != 0) {
			return fmt.Sprintf("%s is writable by group or others (%s)", cur, st.Mode().Perm())
		}
		if cur == filepath.Dir(cur) {
			return ""
		}
	}
}

// uniqueName checks a required name that must be unique among its kind;
// seen maps the names so far to where they are.
func (v *validator) uniqueName(path []any, name, kind string, seen map[string][]any) {
	switch {
	case name == "":
		v.add(path, "required")
	case !validName(name):
		v.add(path, "%q: use letters, digits, '.', '_' and '-' only", name)
	default:
		if l, dup := seen[name]; dup {
			v.add(path, "%s %q is already defined at line %d", kind, name, v.pos.line(l...))
		}
		seen[name] = path
	}
}

func validName(s string) bool {
	for _, c := range s {
		if !(c == '.' || c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return s != ""
}

// oneOf returns s, or def when s is empty, and reports a value outside allowed.
func (v *validator) oneOf(path []any, s, def string, allowed ...string) string {
	if s == "" {
		return def
	}
	if !slices.Contains(allowed, s) {
		v.add(path, "%q is not one of %s", s, strings.Join(allowed, ", "))
	}
	return s
}

// duration parses s (Go syntax, "100ms") within [lo, hi]; empty gives def.
func (v *validator) duration(path []any, s string, def, lo, hi time.Duration) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		v.add(path, "%q is not a duration (write it like \"1s\" or \"100ms\")", s)
		return def
	}
	if d < lo || d > hi {
		v.add(path, "%s is out of range [%s, %s]", d, lo, hi)
	}
	return d
}

// intIn checks an optional integer against [lo, hi]; nil gives def.
func (v *validator) intIn(path []any, p *int, def, lo, hi int) int {
	if p == nil {
		return def
	}
	if *p < lo || *p > hi {
		v.add(path, "%d is out of range [%d, %d]", *p, lo, hi)
	}
	return *p
}

func (v *validator) syncGroups(raws []rawSyncGroup, instances []VRRPInstance) []SyncGroup {
	names := map[string][]any{}
	memberOf := map[string]string{}
	out := make([]SyncGroup, 0, len(raws))
	for i, r := range raws {
		p := []any{"vrrp_sync_group", i}
		v.uniqueName(at(p, "name"), r.Name, "vrrp_sync_group", names)
		if len(r.Group) < 2 {
			v.add(at(p, "group"), "a sync group needs at least two instances")
		}
		for j, m := range r.Group {
			switch {
			case !slices.ContainsFunc(instances, func(in VRRPInstance) bool { return in.Name == m }):
				v.add(at(p, "group", j), "no vrrp_instance is named %q", m)
			case memberOf[m] != "":
				v.add(at(p, "group", j), "%s is already in sync group %q; an instance belongs to one group", m, memberOf[m])
			default:
				memberOf[m] = r.Name
				// Members must agree on who is master: a weight could
				// make one lose on priority while the others win, and
				// the group would flap between the directors.
				in := instances[slices.IndexFunc(instances, func(in VRRPInstance) bool { return in.Name == m })]
				weighted := slices.ContainsFunc(in.TrackInterfaces, func(t TrackInterface) bool { return t.Weight != 0 }) ||
					slices.ContainsFunc(in.TrackScripts, func(t TrackScript) bool { return t.Weight != 0 })
				if weighted {
					v.add(at(p, "group", j), "%s tracks with a weight; in a sync group tracking must use weight 0 (FAULT), as in keepalived", m)
				}
			}
		}
		out = append(out, SyncGroup{Name: r.Name, Members: r.Group})
	}
	return out
}

func (v *validator) scripts(raws []rawScript) []VRRPScript {
	names := map[string][]any{}
	out := make([]VRRPScript, 0, len(raws))
	for i, r := range raws {
		p := []any{"vrrp_script", i}
		v.uniqueName(at(p, "name"), r.Name, "vrrp_script", names)
		sc := VRRPScript{Name: r.Name, Script: v.argv(at(p, "script"), r.Script)}
		if r.Script == nil {
			v.add(at(p, "script"), "required: the program to run, as an array")
		}
		sc.Interval = v.duration(at(p, "interval"), r.Interval, time.Second, 10*time.Millisecond, time.Hour)
		sc.Timeout = v.duration(at(p, "timeout"), r.Timeout, sc.Interval, time.Millisecond, time.Hour)
		sc.Rise = v.intIn(at(p, "rise"), r.Rise, 1, 1, 100)
		sc.Fall = v.intIn(at(p, "fall"), r.Fall, 1, 1, 100)
		sc.Weight = v.intIn(at(p, "weight"), r.Weight, 0, -253, 253)
		if r.User != "" {
			if u, err := lookupUser(r.User); err != nil {
				v.add(at(p, "user"), "%v", err)
			} else {
				sc.User, sc.UID, sc.GID, sc.Groups = r.User, u.uid, u.gid, u.groups
			}
		}
		out = append(out, sc)
	}
	return out
}

func (v *validator) checkScriptList(raws []rawCheckScript) []CheckScript {
	names := map[string][]any{}
	v.checkScripts = map[string]bool{}
	out := make([]CheckScript, 0, len(raws))
	for i, r := range raws {
		p := []any{"check_script", i}
		v.uniqueName(at(p, "name"), r.Name, "check_script", names)
		if r.Command == nil {
			v.add(at(p, "command"), "required: the program to run, as an array")
		}
		out = append(out, CheckScript{Name: r.Name, Command: v.argv(at(p, "command"), r.Command)})
		v.checkScripts[r.Name] = true
	}
	return out
}

// scriptName checks a reference to a [[check_script]]: a valid name, and
// one of this file's (a replicated document's are resolved by each
// director against its own file).
func (v *validator) scriptName(path []any, name string) string {
	switch {
	case name == "":
	case !validName(name):
		v.add(path, "%q is not a valid name", name)
	case v.checkScripts != nil && !v.checkScripts[name]:
		v.add(path, "%q is not a [[check_script]] of this file", name)
	}
	return name
}

func (v *validator) trackFiles(raws []rawTrackFile) []TrackFileDef {
	names := map[string][]any{}
	out := make([]TrackFileDef, 0, len(raws))
	for i, r := range raws {
		p := []any{"vrrp_track_file", i}
		v.uniqueName(at(p, "name"), r.Name, "vrrp_track_file", names)
		if !filepath.IsAbs(r.File) {
			v.add(at(p, "file"), "required: an absolute path (%q)", r.File)
		}
		out = append(out, TrackFileDef{Name: r.Name, File: r.File, Weight: v.intIn(at(p, "weight"), r.Weight, 1, -254, 254)})
	}
	return out
}

// trackProcesses checks the [[vrrp_track_process]] blocks.
func (v *validator) trackProcesses(raws []rawTrackProc) []TrackProcessDef {
	names := map[string][]any{}
	out := make([]TrackProcessDef, 0, len(raws))
	for i, r := range raws {
		p := []any{"vrrp_track_process", i}
		v.uniqueName(at(p, "name"), r.Name, "vrrp_track_process", names)
		if r.Process == "" || strings.ContainsRune(r.Process, 0) {
			v.add(at(p, "process"), "required: the process's name, as ps -o comm shows it, or its program's path")
		}
		d := TrackProcessDef{
			Name: r.Name, Process: r.Process,
			Quorum:    v.intIn(at(p, "quorum"), r.Quorum, 1, 1, 65535),
			QuorumMax: v.intIn(at(p, "quorum_max"), r.QuorumMax, 0, 0, 65535),
			Weight:    v.intIn(at(p, "weight"), r.Weight, 0, -254, 254),
			Delay:     v.duration(at(p, "delay"), r.Delay, 0, 0, time.Hour),
			Interval:  v.duration(at(p, "interval"), r.Interval, 200*time.Millisecond, 10*time.Millisecond, time.Minute),
		}
		if d.QuorumMax != 0 && d.QuorumMax < d.Quorum {
			v.add(at(p, "quorum_max"), "%d is below quorum %d", d.QuorumMax, d.Quorum)
		}
		out = append(out, d)
	}
	return out
}

// trackRefs resolves the instances' references (under key) to blocks of
// kind: weightOf is a block's weight by name (false: no such block); the
// resolved ones go where dst points.
func (v *validator) trackRefs(raws []rawVRRP, cfg *Config, key, kind string, refs func(rawVRRP) []rawTrackScript,
	weightOf func(name string) (int, bool), dst func(*VRRPInstance) *[]TrackScript) {
	for i, r := range raws {
		if i >= len(cfg.VRRP) {
			return
		}
		seen := map[string]bool{}
		for j, ref := range refs(r) {
			path := []any{"vrrp_instance", i, key, j}
			weight, ok := weightOf(ref.Name)
			switch {
			case !ok:
				v.add(path, "no [[%s]] is named %q", kind, ref.Name)
				continue
			case seen[ref.Name]:
				v.add(path, "%s is tracked twice", ref.Name)
				continue
			}
			seen[ref.Name] = true
			list := dst(&cfg.VRRP[i])
			*list = append(*list, TrackScript{Name: ref.Name, Weight: v.intIn(path, ref.Weight, weight, -254, 254), Reverse: ref.Reverse})
		}
	}
}

// trackProcessRefs resolves the instances' track_process entries.
func (v *validator) trackProcessRefs(raws []rawVRRP, cfg *Config) {
	v.trackRefs(raws, cfg, "track_process", "vrrp_track_process", func(r rawVRRP) []rawTrackScript { return r.TrackProcess },
		func(name string) (int, bool) {
			k := slices.IndexFunc(cfg.TrackProcesses, func(d TrackProcessDef) bool { return d.Name == name })
			if k < 0 {
				return 0, false
			}
			return cfg.TrackProcesses[k].Weight, true
		}, func(in *VRRPInstance) *[]TrackScript { return &in.TrackProcesses })
}

// trackFileRefs resolves the instances' track_file entries.
func (v *validator) trackFileRefs(raws []rawVRRP, cfg *Config) {
	v.trackRefs(raws, cfg, "track_file", "vrrp_track_file", func(r rawVRRP) []rawTrackScript { return r.TrackFileRef },
		func(name string) (int, bool) {
			k := slices.IndexFunc(cfg.TrackFiles, func(f TrackFileDef) bool { return f.Name == name })
			if k < 0 {
				return 0, false
			}
			return cfg.TrackFiles[k].Weight, true
		}, func(in *VRRPInstance) *[]TrackScript { return &in.TrackFiles })
}

// noCommands refuses programs inside virtual servers that the cluster
// replicates: a table that could carry a command would let whoever
// writes it run anything as root on every director.
func (v *validator) noCommands(raws []rawVS) {
	for i, r := range raws {
		if r.HealthCheck != nil {
			v.noCommandsIn([]any{"virtual_server", i, "health_check"}, r.HealthCheck)
		}
		for j, rs := range r.RealServer {
			for k := range rs.Check {
				v.noCommandsIn([]any{"virtual_server", i, "real_server", j, "check", k}, &rs.Check[k])
			}
		}
	}
}

func (v *validator) noCommandsIn(p []any, hc *rawHealthCheck) {
	if hc.Command != nil {
		v.add(at(p, "command"), "commands never travel through the cluster: define the program in this director's [[check_script]] and name it here with script = \"NAME\"")
	}
	for _, k := range []struct {
		key  string
		argv []string
	}{{"notify_up", hc.NotifyUp}, {"notify_down", hc.NotifyDown}} {
		if k.argv != nil {
			v.add(at(p, k.key), "commands never travel through the cluster: name a [[check_script]] of each director with %s_script = \"NAME\" instead", k.key)
		}
	}
}

func (v *validator) vrrp(raws []rawVRRP, scripts []VRRPScript) []VRRPInstance {
	type seen struct {
		name string
		path []any // where, for the line if it is named twice
	}
	names := map[string][]any{}
	vrids := map[string]seen{} // interface/family/vrid -> instance
	vips := map[netip.Addr]seen{}
	out := make([]VRRPInstance, 0, len(raws))
	for i, r := range raws {
		p := []any{"vrrp_instance", i}
		in := VRRPInstance{Name: r.Name, Interface: r.Interface}
		v.uniqueName(at(p, "name"), r.Name, "instance", names)
		if r.Interface == "" {
			v.add(at(p, "interface"), "required")
		} else {
			v.ifname(at(p, "interface"), r.Interface)
		}
		if r.VirtualRouterID == nil {
			v.add(at(p, "virtual_router_id"), "required (1-255)")
		} else {
			in.VRID = uint8(v.intIn(at(p, "virtual_router_id"), r.VirtualRouterID, 0, 1, 255))
		}
		in.Priority = uint8(v.intIn(at(p, "priority"), r.Priority, 100, 1, 255))
		in.Version = v.intIn(at(p, "version"), r.Version, 3, 2, 3)
		if in.Version == 2 {
			// RFC 3768 carries the interval in whole seconds.
			in.AdvertInt = v.duration(at(p, "advert_int"), r.AdvertInt, time.Second, time.Second, 255*time.Second)
			if in.AdvertInt%time.Second != 0 {
				v.add(at(p, "advert_int"), "%s: VRRP version 2 advertises whole seconds only (use version = 3 for shorter intervals)", in.AdvertInt)
			}
		} else {
			// RFC 5798 carries a 12-bit count of centiseconds.
			in.AdvertInt = v.duration(at(p, "advert_int"), r.AdvertInt, time.Second, 10*time.Millisecond, 4095*10*time.Millisecond)
			if in.AdvertInt%(10*time.Millisecond) != 0 {
				v.add(at(p, "advert_int"), "%s: VRRP version 3 advertises in steps of 10ms", in.AdvertInt)
			}
		}
		in.Preempt = r.Preempt == nil || *r.Preempt
		in.PreemptDelay = v.duration(at(p, "preempt_delay"), r.PreemptDelay, 0, 0, 1000*time.Second)

		if len(r.VirtualIPAddress) == 0 {
			v.add(at(p, "virtual_ipaddress"), "required: at least one address")
		}
		family := "" // of the first address, even one rejected below
		// The advertised addresses, then those held but not advertised:
		// one family, and no address twice anywhere.
		for _, list := range []struct {
			key string
			raw []string
			dst *[]netip.Prefix
		}{{"virtual_ipaddress", r.VirtualIPAddress, &in.VIPs}, {"virtual_ipaddress_excluded", r.VirtualIPExcluded, &in.Excluded}} {
			for j, s := range list.raw {
				vp := at(p, list.key, j)
				if family == "" {
					// From the text, so that a duplicate VRID is still found
					// when the address itself is malformed.
					family = map[bool]string{true: "IPv6", false: "IPv4"}[strings.Contains(s, ":")]
				}
				pfx, err := parseVIP(s)
				if err != nil {
					v.add(vp, "%v", err)
					continue
				}
				if len(in.VIPs) > 0 && pfx.Addr().Is4() != in.VIPs[0].Addr().Is4() {
					v.add(vp, "%s: an instance carries one address family; put IPv4 and IPv6 in separate instances", s)
					continue
				}
				if other, dup := vips[pfx.Addr()]; dup {
					if other.name == in.Name {
						v.add(vp, "%s is listed twice in this instance", pfx.Addr())
					} else {
						v.add(vp, "%s is already a virtual address of instance %q (line %d)", pfx.Addr(), other.name, v.pos.line(other.path...))
					}
					continue
				}
				vips[pfx.Addr()] = seen{name: in.Name, path: vp}
				*list.dst = append(*list.dst, pfx)
			}
		}
		if in.IPv6() && in.Version == 2 {
			v.add(at(p, "version"), "IPv6 virtual addresses need VRRP version 3")
		}
		if in.IPv6() && !in.VIPs[0].Addr().IsLinkLocalUnicast() {
			v.add(at(p, "virtual_ipaddress", 0), "%s: the first IPv6 virtual address must be link-local (RFC 9568 §5.2.9), such as \"fe80::%x/64\"; the global ones follow it",
				in.VIPs[0].Addr(), in.VRID)
		}
		in.InitialMaster = v.oneOf(at(p, "state"), strings.ToUpper(r.State), "BACKUP", "MASTER", "BACKUP") == "MASTER"
		in.DontTrackPrimary = r.DontTrackPrimary != nil && *r.DontTrackPrimary
		in.SkipCheckAdvAddr = r.SkipCheckAdvAddr != nil && *r.SkipCheckAdvAddr
		in.LowerPrioNoAdvert = r.LowerPrioNoAdvert != nil && *r.LowerPrioNoAdvert
		in.InitFail = r.InitFail != nil && *r.InitFail
		switch {
		case r.Accept != nil && r.NoAccept != nil && *r.Accept == *r.NoAccept:
			v.add(at(p, "no_accept"), "accept and no_accept say opposite things; give one")
		case r.NoAccept != nil:
			in.NoAccept = *r.NoAccept
		case r.Accept != nil:
			in.NoAccept = !*r.Accept
		}
		in.HigherPrioSendAdvert = r.HigherPrioAdvert == nil || *r.HigherPrioAdvert
		in.Strict = v.strict
		if r.StrictMode != nil {
			in.Strict = *r.StrictMode
		}
		if in.Strict {
			// keepalived's strict_mode: what the RFCs leave out is refused.
			switch {
			case len(r.UnicastPeer) > 0:
				v.add(at(p, "unicast_peer"), "strict_mode: VRRP is multicast (RFC 9568); unicast peers are not allowed")
			case r.AuthPass != "":
				v.add(at(p, "auth_pass"), "strict_mode: authentication is not allowed (RFC 3768 §5.3.6 leaves it out)")
			case in.PreemptDelay > 0:
				v.add(at(p, "preempt_delay"), "strict_mode: preempt_delay is not allowed")
			case r.Accept != nil && *r.Accept:
				v.add(at(p, "accept"), "strict_mode: a master does not accept packets to addresses it does not own (RFC 9568 §6.4.3); drop accept")
			}
			if r.Accept == nil && r.NoAccept == nil {
				in.NoAccept = true
			}
		}
		switch x := r.UseVMAC.(type) {
		case nil:
		case bool:
			if x {
				in.VMAC = fmt.Sprintf("vrrp.%d", in.VRID) // keepalived's default name
			}
		case string:
			if x == "" || len(x) > 15 || strings.ContainsAny(x, "/ \t") {
				v.add(at(p, "use_vmac"), "%q is not a valid interface name", x)
			}
			in.VMAC = x
		default:
			v.add(at(p, "use_vmac"), "want true or the VMAC interface's name")
		}
		in.VMACXmitBase = r.VMACXmitBase != nil && *r.VMACXmitBase
		switch {
		case in.VMACXmitBase && in.VMAC == "":
			v.add(at(p, "vmac_xmit_base"), "applies with use_vmac only")
		case in.VMAC != "" && in.IPv6():
			v.add(at(p, "use_vmac"), "directord makes VMACs for IPv4 instances only so far")
		case in.VMAC != "" && in.VMAC == in.Interface:
			v.add(at(p, "use_vmac"), "the VMAC needs a name other than the interface's")
		}
		for j, text := range r.VirtualRoutes {
			rt, err := route.Parse(text)
			switch {
			case err != nil:
				v.add(at(p, "virtual_routes", j), "%q: %v", text, err)
			case len(in.VIPs) > 0 && rt.Dst.Addr().Is4() != in.VIPs[0].Addr().Is4():
				v.add(at(p, "virtual_routes", j), "%q is not of the instance's address family", text)
			default:
				in.Routes = append(in.Routes, rt)
			}
		}
		for j, text := range r.VirtualRules {
			ru, err := route.ParseRule(text)
			switch {
			case err != nil:
				v.add(at(p, "virtual_rules", j), "%q: %v", text, err)
			case len(in.VIPs) > 0 && (ru.Family() == 4) != in.VIPs[0].Addr().Is4():
				v.add(at(p, "virtual_rules", j), "%q is not of the instance's address family", text)
			default:
				in.Rules = append(in.Rules, ru)
			}
		}
		in.GARPLowerPrioRepeat = v.intIn(at(p, "garp_lower_prio_repeat"), r.GARPLowerRepeat, 0, 0, 100)
		in.GARPLowerPrioDelay = v.duration(at(p, "garp_lower_prio_delay"), r.GARPLowerDelay, 0, 0, time.Hour)
		srcKey, srcText := "unicast_src_ip", r.UnicastSrcIP
		switch {
		case r.McastSrcIP != "" && r.UnicastSrcIP != "" && r.McastSrcIP != r.UnicastSrcIP:
			v.add(at(p, "mcast_src_ip"), "give one source: mcast_src_ip and unicast_src_ip differ")
		case r.McastSrcIP != "":
			srcKey, srcText = "mcast_src_ip", r.McastSrcIP // keepalived's name for the same source
		}
		if srcText != "" {
			r.UnicastSrcIP = srcText
			a, err := netip.ParseAddr(r.UnicastSrcIP)
			switch {
			case err != nil:
				v.add(at(p, srcKey), "%q is not an IP address", r.UnicastSrcIP)
			case len(in.VIPs) > 0 && a.Is4() != in.VIPs[0].Addr().Is4():
				v.add(at(p, srcKey), "%s is not of the instance's address family", a)
			case a.Zone() != "" && a.Zone() != in.Interface:
				v.add(at(p, srcKey), "%s: the zone must be the instance's interface, %s", a, in.Interface)
			default:
				in.UnicastSrc = a.WithZone("") // adverts come and go on the instance's interface
			}
		}
		peers := map[netip.Addr]bool{}
		for j, s := range r.UnicastPeer {
			pp := at(p, "unicast_peer", j)
			a, err := netip.ParseAddr(s)
			switch {
			case err != nil:
				v.add(pp, "%q is not an IP address", s)
			case len(in.VIPs) > 0 && a.Is4() != in.VIPs[0].Addr().Is4():
				v.add(pp, "%s is not of the instance's address family", a)
			case a.Zone() != "" && a.Zone() != in.Interface:
				v.add(pp, "%s: the zone must be the instance's interface, %s", a, in.Interface)
			case peers[a.WithZone("")]:
				v.add(pp, "%s is listed twice", a)
			default:
				// The zone says which link; the instance has one. Adverts
				// arrive without it, so it is dropped to compare.
				a = a.WithZone("")
				peers[a] = true
				in.UnicastPeers = append(in.UnicastPeers, a)
			}
		}
		if r.AuthPass != "" {
			switch {
			case in.Version != 2:
				v.add(at(p, "auth_pass"), "VRRP version 3 has no authentication (RFC 5798 removed it); use version = 2 or drop auth_pass")
			case len(r.AuthPass) > 8:
				v.add(at(p, "auth_pass"), "is %d bytes long; VRRPv2 carries at most 8", len(r.AuthPass))
			}
			in.AuthPass = r.AuthPass
		}
		in.V3ChecksumAsV2 = r.V3ChecksumAsV2
		if r.V3ChecksumAsV2 && in.Version != 3 {
			v.add(at(p, "v3_checksum_as_v2"), "applies to VRRP version 3 only")
		}
		in.GARPMasterDelay = v.duration(at(p, "garp_master_delay"), r.GARPMasterDelay, 5*time.Second, 0, 1000*time.Second)
		in.GARPMasterRepeat = v.intIn(at(p, "garp_master_repeat"), r.GARPMasterRepeat, 5, 1, 100)
		in.GARPMasterRefresh = v.duration(at(p, "garp_master_refresh"), r.GARPMasterRefresh, 0, 0, 24*time.Hour)
		if in.GARPMasterRefresh > 0 && in.GARPMasterRefresh < time.Second {
			v.add(at(p, "garp_master_refresh"), "%s: use 0 (off) or at least 1s", in.GARPMasterRefresh)
		}
		tracked := map[string]bool{}
		for j, ti := range r.TrackInterface {
			tp := at(p, "track_interface", j)
			switch {
			case ti.Name == "" || len(ti.Name) > 15 || strings.ContainsAny(ti.Name, "/ \t"):
				v.add(tp, "%q is not a valid interface name", ti.Name)
				continue
			case tracked[ti.Name]:
				v.add(tp, "%s is tracked twice", ti.Name)
				continue
			}
			tracked[ti.Name] = true
			in.TrackInterfaces = append(in.TrackInterfaces, TrackInterface{
				Interface: ti.Name,
				Weight:    v.intIn(tp, ti.Weight, 0, -253, 253),
				Reverse:   ti.Reverse,
			})
		}
		trackedScripts := map[string]bool{}
		for j, ts := range r.TrackScript {
			tp := at(p, "track_script", j)
			i := slices.IndexFunc(scripts, func(s VRRPScript) bool { return s.Name == ts.Name })
			switch {
			case i < 0:
				v.add(tp, "no [[vrrp_script]] is named %q", ts.Name)
				continue
			case trackedScripts[ts.Name]:
				v.add(tp, "%s is tracked twice", ts.Name)
				continue
			}
			trackedScripts[ts.Name] = true
			in.TrackScripts = append(in.TrackScripts, TrackScript{
				Name:    ts.Name,
				Weight:  v.intIn(tp, ts.Weight, scripts[i].Weight, -253, 253),
				Reverse: ts.Reverse,
			})
		}
		in.Notify = Notify{
			Master: v.argv(at(p, "notify_master"), r.NotifyMaster),
			Backup: v.argv(at(p, "notify_backup"), r.NotifyBackup),
			Fault:  v.argv(at(p, "notify_fault"), r.NotifyFault),
			Stop:   v.argv(at(p, "notify_stop"), r.NotifyStop),
			Any:    v.argv(at(p, "notify"), r.Notify),

			MasterRxLowerPri: v.argv(at(p, "notify_master_rx_lower_pri"), r.NotifyRxLowerPri),
			Timeout:          v.duration(at(p, "notify_timeout"), r.NotifyTimeout, 10*time.Second, 100*time.Millisecond, time.Hour),
		}
		if in.VRID != 0 && in.Interface != "" && family != "" {
			// VRRP for IPv4 and IPv6 are separate protocols, so one VRID may
			// serve both on one link.
			key := fmt.Sprintf("%s/%s/%d", in.Interface, family, in.VRID)
			if other, dup := vrids[key]; dup {
				v.add(at(p, "virtual_router_id"), "virtual_router_id %d is already used on interface %s by instance %q (line %d)", in.VRID, in.Interface, other.name, v.pos.line(other.path...))
			} else {
				vrids[key] = seen{name: in.Name, path: at(p, "virtual_router_id")}
			}
		}
		out = append(out, in)
	}
	return out
}

// argv checks a program to run without a shell: an absolute path and its
// arguments, as an array.
func (v *validator) argv(path []any, args []string) []string {
	if args == nil {
		return nil
	}
	if len(args) == 0 || !filepath.IsAbs(args[0]) {
		v.add(path, "give the program as an array starting with its absolute path, like [\"/usr/local/bin/notify\", \"arg\"]; no shell runs it")
		return args
	}
	if v.scriptSecurity {
		if who := changeable(args[0]); who != "" {
			v.add(path, "%s: a user other than root could change what directord runs; fix the owner and mode (or set [node] enable_script_security = false)", who)
		}
	}
	return args
}

// parseVIP accepts "192.0.2.1/24" or a bare address, which means a host route.
func parseVIP(s string) (netip.Prefix, error) {
	var pfx netip.Prefix
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return pfx, fmt.Errorf("%q is not an address in CIDR notation (like 192.0.2.100/24)", s)
		}
		pfx = p
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return pfx, fmt.Errorf("%q is not an IP address", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	a := pfx.Addr()
	if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return pfx, fmt.Errorf("%q cannot be a virtual address", s)
	}
	return pfx, nil
}

func (v *validator) addrPort(path []any, s string) (netip.AddrPort, bool) {
	if s == "" {
		v.add(path, "required (IP:port)")
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		v.add(path, "%q is not an IP:port address (IPv6 as [2001:db8::1]:80)", s)
		return ap, false
	}
	if ap.Port() == 0 {
		v.add(path, "%q: port 0 is not allowed", s)
		return ap, false
	}
	return ap, true
}

// SchedulerFlags lists ipvsadm's scheduler flags by name.
var SchedulerFlags = []string{"sh-fallback", "sh-port", "mh-fallback", "mh-port", "flag-1", "flag-2", "flag-3"}

func (v *validator) virtualServers(raws []rawVS) []VirtualServer {
	names := map[string][]any{}
	services := map[string][]any{}
	out := make([]VirtualServer, 0, len(raws))
	for i, r := range raws {
		p := []any{"virtual_server", i}
		vs := VirtualServer{Name: r.Name}
		v.uniqueName(at(p, "name"), r.Name, "virtual server", names)
		addrOK := false
		var key string
		switch {
		case r.FWMark != nil && r.Address != "":
			v.add(at(p, "fwmark"), "a virtual server has an address or a fwmark, not both")
		case r.FWMark != nil:
			vs.FWMark = uint32(v.intIn(at(p, "fwmark"), r.FWMark, 0, 1, 1<<32-1))
			vs.IPv6 = v.oneOf(at(p, "family"), r.Family, "ipv4", "ipv4", "ipv6") == "ipv6"
			if r.Protocol != "" {
				v.add(at(p, "protocol"), "a fwmark service balances every protocol the mark is set on; leave protocol out")
			}
			key = fmt.Sprintf("fwmark %d %v", vs.FWMark, vs.IPv6)
			addrOK = true
		default:
			vs.Address, addrOK = v.addrPort(at(p, "address"), r.Address)
			vs.IPv6 = vs.Address.Addr().Is6()
			vs.Protocol = v.oneOf(at(p, "protocol"), r.Protocol, "tcp", "tcp", "udp", "sctp")
			if r.Family != "" {
				v.add(at(p, "family"), "only fwmark services take a family; the address says it")
			}
			key = vs.Protocol + "/" + vs.Address.String()
		}
		vs.Scheduler = v.oneOf(at(p, "scheduler"), r.Scheduler, "wlc", Schedulers...)
		for j, f := range r.SchedulerFlags {
			fp := at(p, "scheduler_flags", j)
			switch {
			case !slices.Contains(SchedulerFlags, f):
				v.add(fp, "%q is not one of %s", f, strings.Join(SchedulerFlags, ", "))
			case strings.HasPrefix(f, "sh-") && vs.Scheduler != "sh", strings.HasPrefix(f, "mh-") && vs.Scheduler != "mh":
				v.add(fp, "%s is a flag of the %s scheduler, not of %s", f, f[:2], vs.Scheduler)
			default:
				vs.SchedulerFlags = append(vs.SchedulerFlags, f)
			}
		}
		vs.Forwarding = v.oneOf(at(p, "forwarding"), r.Forwarding, "nat", "nat", "dr", "tun")
		vs.PersistenceTimeout = v.duration(at(p, "persistence_timeout"), r.PersistenceTimeout, 0, 0, (1<<32-1)*time.Second)
		if vs.PersistenceTimeout%time.Second != 0 {
			v.add(at(p, "persistence_timeout"), "%s: the kernel keeps persistence in whole seconds", vs.PersistenceTimeout)
		}
		if r.PersistenceGranularity != nil {
			maxBits := 32
			if vs.IPv6 {
				maxBits = 128
			}
			vs.PersistenceBits = v.intIn(at(p, "persistence_granularity"), r.PersistenceGranularity, maxBits, 1, maxBits)
			if vs.PersistenceTimeout == 0 {
				v.add(at(p, "persistence_granularity"), "needs persistence_timeout")
			}
		}
		vs.OnePacket = r.OnePacket != nil && *r.OnePacket
		if vs.OnePacket && vs.Protocol != "udp" && vs.FWMark == 0 {
			v.add(at(p, "one_packet"), "one-packet scheduling is for udp services")
		}
		vs.Masquerade = r.Masquerade != nil && *r.Masquerade
		vs.Quorum = v.intIn(at(p, "quorum"), r.Quorum, 1, 1, 1<<31-1)
		vs.Hysteresis = v.intIn(at(p, "hysteresis"), r.Hysteresis, 0, 0, 1<<31-1)
		if vs.Hysteresis >= vs.Quorum && r.Hysteresis != nil {
			v.add(at(p, "hysteresis"), "must be below quorum (%d)", vs.Quorum)
		}
		vs.InhibitOnFailure = r.InhibitOnFailure != nil && *r.InhibitOnFailure
		vs.DrainTimeout = v.duration(at(p, "drain_timeout"), r.DrainTimeout, 5*time.Minute, 0, 24*time.Hour)
		vs.Announce = v.oneOf(at(p, "announce"), r.Announce, AnnounceVRRP, AnnounceVRRP, AnnounceBGP)
		if vs.Announce == AnnounceBGP && vs.FWMark != 0 {
			v.add(at(p, "announce"), "a fwmark service has no address to announce: announce the addresses its mark is set on")
		}
		if addrOK {
			if l, dup := services[key]; dup {
				v.add(at(p, "address"), "%s is already a virtual server (line %d)", strings.TrimPrefix(key, "/"), v.pos.line(l...))
			}
			services[key] = at(p, "address")
		}
		// A fwmark service's servers may leave out the port: they
		// then keep the client's destination port.
		rsAddr := func(path []any, s string) (netip.AddrPort, bool) {
			if vs.FWMark != 0 {
				if a, err := netip.ParseAddr(s); err == nil {
					if a.Is6() != vs.IPv6 {
						// The kernel would store it as an address of the
						// other family (2001:db8::11 became 32.1.13.184).
						v.add(path, "%s is not of the virtual server's family (family = %q)", a, map[bool]string{false: "ipv4", true: "ipv6"}[vs.IPv6])
						return netip.AddrPortFrom(a, 0), false
					}
					return netip.AddrPortFrom(a, 0), true
				}
			}
			a, ok := v.addrPort(path, s)
			if ok && addrOK && a.Addr().Is6() != vs.IPv6 {
				v.add(path, "%s is not of the virtual server's address family", a)
				return a, false
			}
			return a, ok
		}
		if r.SorryServer != "" {
			if a, ok := rsAddr(at(p, "sorry_server"), r.SorryServer); ok {
				vs.SorryServer = &a
			}
		}
		rs := map[netip.AddrPort][]any{}
		for j, rr := range r.RealServer {
			rp := at(p, "real_server", j)
			a, ok := rsAddr(at(rp, "address"), rr.Address)
			if !ok {
				continue
			}
			if l, dup := rs[a]; dup {
				v.add(at(rp, "address"), "real server %s is listed twice (also at line %d)", a, v.pos.line(l...))
				continue
			}
			rs[a] = at(rp, "address")
			rsv := RealServer{
				Address:        a,
				Weight:         v.intIn(at(rp, "weight"), rr.Weight, 1, 0, 65535),
				Forwarding:     v.oneOf(at(rp, "forwarding"), rr.Forwarding, vs.Forwarding, "nat", "dr", "tun"),
				UpperThreshold: v.intIn(at(rp, "upper_threshold"), rr.UpperThreshold, 0, 0, 1<<31-1),
				LowerThreshold: v.intIn(at(rp, "lower_threshold"), rr.LowerThreshold, 0, 0, 1<<31-1),
			}
			if (rsv.Forwarding == "dr" || rsv.Forwarding == "tun") && vs.FWMark == 0 && a.Port() != vs.Address.Port() {
				// IPVS does not rewrite the port on these: traffic would go
				// to the service's port while the check probes this one.
				v.add(at(rp, "address"), "%s forwarding keeps the destination port: give port %d (the service's), not %d",
					rsv.Forwarding, vs.Address.Port(), a.Port())
			}
			if rsv.UpperThreshold > 0 && rsv.LowerThreshold > rsv.UpperThreshold {
				v.add(at(rp, "lower_threshold"), "%d is above upper_threshold %d", rsv.LowerThreshold, rsv.UpperThreshold)
			}
			for k := range rr.Check {
				rsv.Checks = append(rsv.Checks, *v.healthCheck(at(rp, "check", k), &rr.Check[k]))
			}
			vs.RealServers = append(vs.RealServers, rsv)
		}
		if r.HealthCheck != nil {
			vs.HealthCheck = v.healthCheck(at(p, "health_check"), r.HealthCheck)
		}
		out = append(out, vs)
	}
	return out
}

// healthKeys says which check types take each type-specific key.
var healthKeys = map[string][]string{
	"method": {"http", "https"}, "path": {"http", "https"}, "host": {"http", "https"},
	"headers": {"http", "https"}, "status_codes": {"http", "https"}, "body_regex": {"http", "https"},
	"digest": {"http", "https"}, "sni": {"https", "tls"}, "verify_cert": {"https", "tls"},
	"warn_days": {"https", "tls"}, "payload": {"udp"}, "expect": {"udp", "dns"},
	"query_name": {"dns"}, "query_type": {"dns"}, "rcode": {"dns"}, "command": {"exec"}, "script": {"exec"}, "dynamic": {"exec"},
	"helo_name":  {"smtp"},
	"connect_ip": {"tcp", "http", "https", "tls", "udp", "dns", "icmp", "smtp"}, "connect_port": {"tcp", "http", "https", "tls", "udp", "dns", "smtp"},
	"bindto": {"tcp", "http", "https", "tls", "udp", "dns", "icmp", "smtp"},
}

func (v *validator) healthCheck(p []any, r *rawHealthCheck) *HealthCheck {
	hc := &HealthCheck{Type: r.Type}
	if r.Type == "" {
		v.add(at(p, "type"), "required: one of %s", strings.Join(HealthCheckTypes, ", "))
	} else if v.oneOf(at(p, "type"), r.Type, "", HealthCheckTypes...) == "" {
		return hc
	}
	set := map[string]bool{
		"method": r.Method != "", "path": r.Path != "", "host": r.Host != "", "headers": r.Headers != nil,
		"status_codes": r.StatusCodes != nil, "body_regex": r.BodyRegex != "", "digest": r.Digest != "",
		"sni": r.SNI != "", "verify_cert": r.VerifyCert != nil, "warn_days": r.WarnDays != nil,
		"payload": r.Payload != "", "expect": r.Expect != "", "query_name": r.QueryName != "",
		"query_type": r.QueryType != "", "rcode": r.Rcode != "", "command": r.Command != nil,
		"script": r.Script != "", "dynamic": r.Dynamic != nil, "connect_ip": r.ConnectIP != "", "connect_port": r.ConnectPort != nil,
		"bindto": r.BindTo != "", "helo_name": r.HeloName != "",
	}
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if set[k] && r.Type != "" && !slices.Contains(healthKeys[k], r.Type) {
			ts := healthKeys[k]
			list := strings.Join(ts, " and ")
			if len(ts) > 2 {
				list = strings.Join(ts[:len(ts)-1], ", ") + " and " + ts[len(ts)-1]
			}
			v.add(at(p, k), "only %s checks take %s", list, k)
		}
	}
	if r.ConnectIP != "" {
		a, err := netip.ParseAddr(r.ConnectIP)
		if err != nil {
			v.add(at(p, "connect_ip"), "%q is not an IP address", r.ConnectIP)
		}
		hc.ConnectIP = a
	}
	if r.ConnectPort != nil {
		hc.ConnectPort = uint16(v.intIn(at(p, "connect_port"), r.ConnectPort, 0, 1, 65535))
	}
	if r.BindTo != "" {
		a, err := netip.ParseAddr(r.BindTo)
		if err != nil {
			v.add(at(p, "bindto"), "%q is not an IP address", r.BindTo)
		}
		hc.BindTo = a
	}
	hc.Interval = v.duration(at(p, "interval"), r.Interval, 2*time.Second, 10*time.Millisecond, time.Hour)
	hc.Timeout = v.duration(at(p, "timeout"), r.Timeout, time.Second, time.Millisecond, time.Hour)
	if hc.Timeout > hc.Interval {
		v.add(at(p, "timeout"), "%s is longer than the interval %s", hc.Timeout, hc.Interval)
	}
	hc.Retry = v.intIn(at(p, "retry"), r.Retry, 0, 0, 100)
	hc.DelayBeforeRetry = v.duration(at(p, "delay_before_retry"), r.DelayBeforeRetry, time.Second, 0, time.Hour)
	hc.Warmup = v.duration(at(p, "warmup"), r.Warmup, hc.Interval, 0, time.Hour)
	hc.Rise = v.intIn(at(p, "rise"), r.Rise, 2, 1, 100)
	hc.Fall = v.intIn(at(p, "fall"), r.Fall, 2, 1, 100)
	hc.Alpha = r.Alpha != nil && *r.Alpha
	hc.LogAllFailures = r.LogAllFailures != nil && *r.LogAllFailures
	hc.NotifyUp = v.argv(at(p, "notify_up"), r.NotifyUp)
	hc.NotifyDown = v.argv(at(p, "notify_down"), r.NotifyDown)
	hc.NotifyUpScript = v.scriptName(at(p, "notify_up_script"), r.NotifyUpScript)
	hc.NotifyDownScript = v.scriptName(at(p, "notify_down_script"), r.NotifyDownScript)
	for _, k := range []struct {
		key      string
		set, alt bool
	}{{"notify_up_script", r.NotifyUpScript != "", r.NotifyUp != nil}, {"notify_down_script", r.NotifyDownScript != "", r.NotifyDown != nil}} {
		if k.set && k.alt {
			v.add(at(p, k.key), "give %s or %s, not both", strings.TrimSuffix(k.key, "_script"), k.key)
		}
	}

	hc.Method = strings.ToUpper(r.Method)
	if hc.Method != "" && !slices.Contains([]string{"GET", "HEAD", "POST", "OPTIONS"}, hc.Method) {
		v.add(at(p, "method"), "%q is not one of GET, HEAD, POST, OPTIONS", r.Method)
	}
	hc.Path, hc.Host, hc.Headers = r.Path, r.Host, r.Headers
	if hc.Type == "http" || hc.Type == "https" {
		if hc.Path == "" {
			hc.Path = "/"
		} else if !strings.HasPrefix(hc.Path, "/") {
			v.add(at(p, "path"), "%q must start with /", hc.Path)
		}
		if hc.Method == "" {
			hc.Method = "GET"
		}
	}
	for i, c := range r.StatusCodes {
		if _, _, err := StatusRange(c); err != nil {
			v.add(at(p, "status_codes", i), "%v", err)
		}
	}
	hc.StatusCodes = r.StatusCodes
	hc.BodyRegex, hc.Expect = r.BodyRegex, r.Expect
	for k, re := range map[string]string{"body_regex": r.BodyRegex, "expect": r.Expect} {
		if _, err := regexp.Compile(re); err != nil {
			v.add(at(p, k), "%v", err)
		}
	}
	hc.Digest = strings.ToLower(r.Digest)
	if hc.Digest != "" {
		if b, err := hex.DecodeString(hc.Digest); err != nil || len(b) != 16 {
			v.add(at(p, "digest"), "%q is not an MD5 digest in hex (32 digits, as genhash prints)", r.Digest)
		}
	}
	hc.SNI = r.SNI
	hc.VerifyCert = r.VerifyCert != nil && *r.VerifyCert
	hc.WarnDays = v.intIn(at(p, "warn_days"), r.WarnDays, 0, 0, 3650)
	hc.Payload = r.Payload
	hc.QueryName = r.QueryName
	if hc.Type == "dns" {
		hc.QueryType = v.oneOf(at(p, "query_type"), strings.ToUpper(r.QueryType), "SOA", healthcheck.DNSTypes...)
		hc.Rcode = v.oneOf(at(p, "rcode"), strings.ToUpper(r.Rcode), "NOERROR", healthcheck.DNSRcodes...)
		if hc.QueryName == "" {
			hc.QueryName = "."
		}
	}
	hc.HeloName = r.HeloName
	if strings.ContainsAny(hc.HeloName, " \t\r\n") {
		v.add(at(p, "helo_name"), "%q: a HELO name has no spaces or line breaks", hc.HeloName)
	}
	hc.Dynamic = r.Dynamic != nil && *r.Dynamic
	if hc.Type == "exec" {
		switch {
		case r.Command == nil && r.Script == "":
			v.add(at(p, "command"), "an exec check needs a command: [\"/usr/local/bin/check\", \"arg\"], or script = \"NAME\" of a [[check_script]]")
		case r.Command != nil && r.Script != "":
			v.add(at(p, "script"), "give command or script, not both")
		}
		hc.Command = v.argv(at(p, "command"), r.Command)
		hc.Script = v.scriptName(at(p, "script"), r.Script)
	}
	return hc
}

// StatusRange parses "200" or "200-299".
func StatusRange(s string) (from, to int, err error) {
	a, b, isRange := strings.Cut(s, "-")
	from, err1 := strconv.Atoi(strings.TrimSpace(a))
	to, err2 := from, error(nil)
	if isRange {
		to, err2 = strconv.Atoi(strings.TrimSpace(b))
	}
	if err1 != nil || err2 != nil || from < 100 || to > 599 || from > to {
		return 0, 0, fmt.Errorf("%q is not a status code or range (like \"200\" or \"200-299\", within 100-599)", s)
	}
	return from, to, nil
}

func (v *validator) syncDaemon(r *rawSyncDaemon, instances []VRRPInstance) *SyncDaemon {
	p := []any{"dataplane", "lvs_sync_daemon"}
	d := &SyncDaemon{Interface: r.Interface, Instance: r.Instance}
	if d.Interface == "" {
		v.add(at(p, "interface"), "required: the interface the sync traffic uses")
	}
	i := slices.IndexFunc(instances, func(in VRRPInstance) bool { return in.Name == r.Instance })
	if i < 0 {
		v.add(at(p, "instance"), "%q is not a [[vrrp_instance]]: the master daemon runs while it is MASTER", r.Instance)
	}
	def := 0
	if i >= 0 {
		def = int(instances[i].VRID) // keepalived's default sync id
	}
	d.SyncID = uint32(v.intIn(at(p, "sync_id"), r.SyncID, def, 0, 255))
	d.MaxLen = uint16(v.intIn(at(p, "maxlen"), r.MaxLen, 0, 0, 65535))
	d.Port = uint16(v.intIn(at(p, "port"), r.Port, 0, 0, 65535))
	d.TTL = uint8(v.intIn(at(p, "ttl"), r.TTL, 0, 0, 255))
	if r.Group != "" {
		a, err := netip.ParseAddr(r.Group)
		if err != nil || !a.IsMulticast() || a.Zone() != "" {
			v.add(at(p, "group"), "%q is not a multicast address (IPv4 or IPv6, without a zone: the interface is interface)", r.Group)
		}
		d.Group = a
	}
	return d
}

func (v *validator) cluster(r *rawCluster, self string) *Cluster {
	p := []any{"cluster"}
	c := &Cluster{}
	c.Bind, _ = v.addrPort(at(p, "bind"), r.Bind)
	c.RaftBind, _ = v.addrPort(at(p, "raft_bind"), r.RaftBind)
	if c.Bind.IsValid() && c.Bind == c.RaftBind {
		v.add(at(p, "raft_bind"), "must differ from bind (%s)", c.Bind)
	}
	seen := map[string]bool{}
	for i, s := range r.Peers {
		pp := at(p, "peers", i)
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" {
			v.add(pp, "%q is not a host:port address", s)
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			v.add(pp, "%q: bad port", s)
			continue
		}
		if seen[s] {
			v.add(pp, "%s is listed twice", s)
			continue
		}
		if s == c.Bind.String() {
			v.add(pp, "%s is this node's own bind address", s)
			continue
		}
		seen[s] = true
		c.Peers = append(c.Peers, s)
	}
	members := map[string][]any{}
	for i, m := range r.Members {
		v.uniqueName(at(p, "members", i), m, "member", members)
		c.Members = append(c.Members, m)
	}
	switch {
	case r.Members == nil:
		v.add(at(p, "members"), "required: the [node] name of every voter, this node's (%q) included; only they may vote or write", self)
	case self != "" && !slices.Contains(r.Members, self):
		v.add(at(p, "members"), "does not name this node, %q", self)
	}
	c.BootstrapExpect = v.intIn(at(p, "bootstrap_expect"), r.BootstrapExpect, max(len(c.Members), 1), 1, 9)
	if len(c.Members) > 0 && c.BootstrapExpect > len(c.Members) {
		v.add(at(p, "bootstrap_expect"), "%d is more than the %d members", c.BootstrapExpect, len(c.Members))
	}
	gossipKey := func(path []any, s string) []byte {
		k, err := base64.StdEncoding.DecodeString(s)
		if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			v.add(path, "must be 16, 24 or 32 bytes in base64 (head -c 32 /dev/urandom | base64)")
		}
		return k
	}
	if r.EncryptKey == "" {
		v.add(at(p, "encrypt_key"), "required: gossip must be encrypted and authenticated (head -c 32 /dev/urandom | base64)")
	} else {
		c.EncryptKey = gossipKey(at(p, "encrypt_key"), r.EncryptKey)
	}
	for i, k := range r.EncryptKeysOld {
		c.EncryptKeysOld = append(c.EncryptKeysOld, gossipKey(at(p, "encrypt_keys_old", i), k))
	}
	c.TLSCert, c.TLSKey, c.TLSCA = r.TLSCert, r.TLSKey, r.TLSCA
	for _, k := range []struct{ key, val string }{{"tls_cert", r.TLSCert}, {"tls_key", r.TLSKey}, {"tls_ca", r.TLSCA}} {
		if k.val == "" {
			v.add(at(p, k.key), "required: the cluster runs over mutual TLS only (directorctl cluster certs writes the files)")
		}
	}
	if r.TLSCert != "" && r.TLSKey != "" {
		if pair, err := tls.LoadX509KeyPair(r.TLSCert, r.TLSKey); err != nil {
			v.add(at(p, "tls_cert"), "%v", err)
		} else if leaf, err := x509.ParseCertificate(pair.Certificate[0]); err != nil {
			v.add(at(p, "tls_cert"), "%v", err)
		} else if self != "" && !slices.Contains(leaf.DNSNames, self) {
			v.add(at(p, "tls_cert"), "%s names %v, not this node %q: the peers would refuse it", r.TLSCert, leaf.DNSNames, self)
		}
	}
	if r.TLSCA != "" {
		if b, err := os.ReadFile(r.TLSCA); err != nil {
			v.add(at(p, "tls_ca"), "%v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
			v.add(at(p, "tls_ca"), "%s holds no PEM certificate", r.TLSCA)
		}
	}
	if c.Bind.IsValid() && c.Bind.Addr().IsUnspecified() {
		v.add(at(p, "bind"), "%s: give the address the peers reach this node at, not a wildcard", c.Bind)
	}
	if c.RaftBind.IsValid() && c.RaftBind.Addr().IsUnspecified() {
		v.add(at(p, "raft_bind"), "%s: give the address the peers reach this node at, not a wildcard", c.RaftBind)
	}
	return c
}

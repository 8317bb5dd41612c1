// Package config reads directord's TOML file strictly and turns it into a
// validated Config. Every problem is reported with the file, the line and
// the key, and all problems of a file are reported together.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/directord/directord/vrrp/route"
)

// Config is a validated configuration with every default filled in.
type Config struct {
	// File is the path the configuration was read from.
	File        string         `json:"file"`
	Node        Node           `json:"node"`
	Dataplane   Dataplane      `json:"dataplane"`
	VRRP        []VRRPInstance `json:"vrrp_instance"`
	VRRPScripts []VRRPScript   `json:"vrrp_script"`
	// CheckScripts are this director's own programs that exec health
	// checks name (script = "name"): a replicated table names them and
	// never carries a command.
	CheckScripts []CheckScript `json:"check_script"`
	// TrackFiles are files holding a number that instances track
	// (keepalived's vrrp_track_file).
	TrackFiles []TrackFileDef `json:"vrrp_track_file,omitempty"`
	// TrackProcesses are processes that instances track
	// ([[vrrp_track_process]]).
	TrackProcesses []TrackProcessDef `json:"vrrp_track_process,omitempty"`
	SyncGroups     []SyncGroup       `json:"vrrp_sync_group"`
	VirtualServers []VirtualServer   `json:"virtual_server"`
	// Cluster is nil when the file has no [cluster] section: a single
	// director with no peer.
	Cluster *Cluster `json:"cluster,omitempty"`
	// Sync is nil without a [sync] section.
	Sync *Sync `json:"sync,omitempty"`
	// BGP is nil without a [bgp] section.
	BGP *BGP `json:"bgp,omitempty"`

	pos *lazyPositions
}

type Node struct {
	Name          string `json:"name"`
	DataDir       string `json:"data_dir"`
	StatusSocket  string `json:"status_socket"`
	MetricsListen string `json:"metrics_listen,omitempty"`
	LogFormat     string `json:"log_format"`
	LogLevel      string `json:"log_level"`
	// Role is "director", or "witness": a Raft voter that runs neither
	// VRRP nor a data plane (the third voter of a pair).
	Role string `json:"role"`
	// ScriptUser runs track scripts, notify programs and exec checks
	// (keepalived's script_user); "" is root. ScriptUID and ScriptGID
	// are its ids, ScriptGroups its supplementary groups.
	ScriptUser   string   `json:"script_user,omitempty"`
	ScriptUID    uint32   `json:"-"`
	ScriptGID    uint32   `json:"-"`
	ScriptGroups []uint32 `json:"-"`
	// ScriptSecurity refuses a program that a user other than root could
	// change (keepalived's enable_script_security); on by default.
	ScriptSecurity bool `json:"enable_script_security"`
	// VRRPStartupDelay holds VRRP back after the daemon starts
	// (keepalived's vrrp_startup_delay).
	VRRPStartupDelay time.Duration `json:"vrrp_startup_delay,omitempty"`
	// RealtimePriority runs VRRP's threads under SCHED_RR at this
	// priority (keepalived's vrrp_rt_priority); 0: off.
	RealtimePriority int `json:"realtime_priority,omitempty"`
	// VRRPStrict is every instance's strict_mode default (keepalived's
	// vrrp_strict).
	VRRPStrict bool `json:"vrrp_strict,omitempty"`
	// NotifyFIFO receives a line per transition (keepalived's
	// notify_fifo / vrrp_notify_fifo).
	NotifyFIFO string `json:"notify_fifo,omitempty"`
}

type Dataplane struct {
	Kind              string        `json:"kind"`
	LVSFlush          bool          `json:"lvs_flush"`
	ReconcileInterval time.Duration `json:"reconcile_interval"`
	// DRInterface is the interface facing the router, where packets of
	// direct-routing services arrive (nftables).
	DRInterface string `json:"dr_interface,omitempty"`
	// LVSSyncDaemon runs the kernel's IPVS sync daemons (IPVS only).
	LVSSyncDaemon *SyncDaemon `json:"lvs_sync_daemon,omitempty"`
	// Timeouts are the load-balanced connections' idle timeouts (ipvsadm
	// --set tcp tcpfin udp); zero: the kernel's.
	Timeouts Timeouts `json:"timeouts,omitzero"`
}

// Timeouts are idle timeouts of load-balanced connections: established
// TCP, TCP after the first FIN, UDP.
type Timeouts struct {
	TCP    time.Duration `json:"tcp,omitempty"`
	TCPFin time.Duration `json:"tcpfin,omitempty"`
	UDP    time.Duration `json:"udp,omitempty"`
}

// SyncDaemon is keepalived's lvs_sync_daemon: a backup daemon always
// runs, the master daemon while Instance is MASTER.
type SyncDaemon struct {
	Interface string     `json:"interface"`
	Instance  string     `json:"instance"`
	SyncID    uint32     `json:"sync_id"`
	MaxLen    uint16     `json:"maxlen,omitempty"`
	Port      uint16     `json:"port,omitempty"`
	TTL       uint8      `json:"ttl,omitempty"`
	Group     netip.Addr `json:"group,omitzero"`
}

type VRRPInstance struct {
	Name         string         `json:"name"`
	Interface    string         `json:"interface"`
	VRID         uint8          `json:"virtual_router_id"`
	Priority     uint8          `json:"priority"`
	AdvertInt    time.Duration  `json:"advert_int"`
	Version      int            `json:"version"`
	Preempt      bool           `json:"preempt"`
	PreemptDelay time.Duration  `json:"preempt_delay"`
	VIPs         []netip.Prefix `json:"virtual_ipaddress"`
	// Excluded are held with the VIPs, never advertised (keepalived's
	// virtual_ipaddress_excluded).
	Excluded []netip.Prefix `json:"virtual_ipaddress_excluded,omitempty"`
	// UnicastSrc is the zero Addr when the interface's primary address is used.
	UnicastSrc   netip.Addr   `json:"unicast_src_ip,omitzero"`
	UnicastPeers []netip.Addr `json:"unicast_peer"`
	// AuthPass is VRRPv2's clear-text password; never shown or logged.
	AuthPass          string           `json:"-"`
	V3ChecksumAsV2    bool             `json:"v3_checksum_as_v2"`
	GARPMasterDelay   time.Duration    `json:"garp_master_delay"`
	GARPMasterRepeat  int              `json:"garp_master_repeat"`
	GARPMasterRefresh time.Duration    `json:"garp_master_refresh"`
	TrackInterfaces   []TrackInterface `json:"track_interface"`
	TrackScripts      []TrackScript    `json:"track_script"`
	TrackFiles        []TrackScript    `json:"track_file,omitempty"`    // names of [[vrrp_track_file]]s, with weights
	TrackProcesses    []TrackScript    `json:"track_process,omitempty"` // names of [[vrrp_track_process]]es, with weights
	Notify            Notify           `json:"notify"`
	// InitialMaster: keepalived's state MASTER, which takes over at start
	// without waiting for Master_Down_Interval.
	InitialMaster bool `json:"initial_master,omitempty"`
	// DontTrackPrimary: the instance's own interface going down does not
	// make it FAULT.
	DontTrackPrimary bool `json:"dont_track_primary,omitempty"`
	// SkipCheckAdvAddr: adverts' address lists are not compared.
	SkipCheckAdvAddr bool `json:"skip_check_adv_addr,omitempty"`
	// GARPLowerPrioRepeat and GARPLowerPrioDelay: the GARP bursts when a
	// master hears a lower priority (0: garp_master_repeat/_delay).
	GARPLowerPrioRepeat int           `json:"garp_lower_prio_repeat,omitempty"`
	GARPLowerPrioDelay  time.Duration `json:"garp_lower_prio_delay,omitempty"`
	// NoAccept: as master, packets to the VIPs are refused (keepalived's
	// no_accept; accept, the default, takes them).
	NoAccept bool `json:"no_accept,omitempty"`
	// InitFail: tracking not reported yet counts as down (start in FAULT).
	InitFail bool `json:"init_fail,omitempty"`
	// LowerPrioNoAdvert: a master hearing a lower priority sends no
	// advert in answer (the RFC's behaviour).
	LowerPrioNoAdvert bool `json:"lower_prio_no_advert,omitempty"`
	// HigherPrioSendAdvert: a master hearing a higher priority sends one
	// advert at its own before stepping down (on by default).
	HigherPrioSendAdvert bool `json:"higher_prio_send_advert"`
	// Strict: RFC compliance enforced (keepalived's strict_mode or
	// vrrp_strict): no unicast, no authentication, no preempt_delay, and
	// no_accept unless accept is given.
	Strict bool `json:"strict_mode,omitempty"`
	// VMAC is the macvlan interface of use_vmac; VMACXmitBase sends and
	// hears adverts on the base interface instead.
	VMAC         string `json:"use_vmac,omitempty"`
	VMACXmitBase bool   `json:"vmac_xmit_base,omitempty"`
	// Routes and Rules are present while master.
	Routes []route.Route `json:"virtual_routes,omitempty"`
	Rules  []route.Rule  `json:"virtual_rules,omitempty"`
}

// TrackInterface is another link the instance depends on: down means
// FAULT when Weight is 0, else the priority moves by Weight.
type TrackInterface struct {
	Interface string `json:"interface"`
	Weight    int    `json:"weight"`
	// Reverse inverts it: up counts as down (keepalived's "reverse").
	Reverse bool `json:"reverse,omitempty"`
}

// SyncGroup is a set of instances that change state together
// (keepalived's vrrp_sync_group).
type SyncGroup struct {
	Name    string   `json:"name"`
	Members []string `json:"group"`
}

// TrackScript names a vrrp_script the instance depends on, with the
// weight in force (the instance's, else the script's).
type TrackScript struct {
	Name   string `json:"name"`
	Weight int    `json:"weight"`
	// Reverse inverts it: success counts as failure.
	Reverse bool `json:"reverse,omitempty"`
}

// VRRPScript is a check program run periodically (keepalived's
// vrrp_script): exit 0 is success. After Fall failures in a row it is
// down, after Rise successes up again. Down means FAULT for instances
// tracking it with weight 0, else their priority moves by the weight.
type VRRPScript struct {
	Name     string        `json:"name"`
	Script   []string      `json:"script"`
	Interval time.Duration `json:"interval"`
	Timeout  time.Duration `json:"timeout"`
	Rise     int           `json:"rise"`
	Fall     int           `json:"fall"`
	Weight   int           `json:"weight"`
	// User runs it instead of [node] script_user (keepalived's per-script
	// user); UID, GID and Groups are its ids.
	User   string   `json:"user,omitempty"`
	UID    uint32   `json:"-"`
	GID    uint32   `json:"-"`
	Groups []uint32 `json:"-"`
}

// TrackProcessDef is a [[vrrp_track_process]]: up while between Quorum
// and QuorumMax processes of that name run.
type TrackProcessDef struct {
	Name      string        `json:"name"`
	Process   string        `json:"process"`
	Quorum    int           `json:"quorum"`
	QuorumMax int           `json:"quorum_max,omitempty"` // 0: no maximum
	Weight    int           `json:"weight"`
	Delay     time.Duration `json:"delay"`    // a fall is reported after this long
	Interval  time.Duration `json:"interval"` // how often /proc is read
}

// TrackFileDef is a [[vrrp_track_file]]: its file holds a number.
type TrackFileDef struct {
	Name   string `json:"name"`
	File   string `json:"file"`
	Weight int    `json:"weight"`
}

// CheckScript is a program an exec health check runs by name.
type CheckScript struct {
	Name    string   `json:"name"`
	Command []string `json:"command"`
}

// Notify holds the programs run on transitions, as argument vectors
// (no shell is involved).
type Notify struct {
	Master []string `json:"notify_master,omitempty"`
	Backup []string `json:"notify_backup,omitempty"`
	Fault  []string `json:"notify_fault,omitempty"`
	Stop   []string `json:"notify_stop,omitempty"`
	Any    []string `json:"notify,omitempty"`
	// MasterRxLowerPri runs when the master hears a lower priority
	// (keepalived's notify_master_rx_lower_pri).
	MasterRxLowerPri []string      `json:"notify_master_rx_lower_pri,omitempty"`
	Timeout          time.Duration `json:"notify_timeout"`
}

// IPv6 reports whether the instance carries IPv6 addresses.
func (v VRRPInstance) IPv6() bool { return len(v.VIPs) > 0 && v.VIPs[0].Addr().Is6() }

type VirtualServer struct {
	Name    string         `json:"name"`
	Address netip.AddrPort `json:"address,omitzero"`
	// FWMark is set instead of Address for a firewall-mark service;
	// IPv6 then says which family it balances.
	FWMark             uint32        `json:"fwmark,omitempty"`
	IPv6               bool          `json:"ipv6,omitempty"`
	Protocol           string        `json:"protocol,omitempty"`
	Scheduler          string        `json:"scheduler"`
	SchedulerFlags     []string      `json:"scheduler_flags,omitempty"`
	Forwarding         string        `json:"forwarding"`
	PersistenceTimeout time.Duration `json:"persistence_timeout"`
	// PersistenceBits is the client prefix persistence groups by; 0 is
	// a single address.
	PersistenceBits  int             `json:"persistence_granularity,omitempty"`
	OnePacket        bool            `json:"one_packet,omitempty"`
	Masquerade       bool            `json:"masquerade,omitempty"`
	Quorum           int             `json:"quorum"`
	Hysteresis       int             `json:"hysteresis,omitempty"`
	InhibitOnFailure bool            `json:"inhibit_on_failure,omitempty"`
	DrainTimeout     time.Duration   `json:"drain_timeout"`
	SorryServer      *netip.AddrPort `json:"sorry_server,omitempty"`
	// Announce says how the address reaches the clients: "vrrp" (a
	// VRRP instance holds it) or "bgp" (every director announces it).
	Announce    string       `json:"announce"`
	RealServers []RealServer `json:"real_server"`
	HealthCheck *HealthCheck `json:"health_check,omitempty"`
}

type RealServer struct {
	// Address has port 0 for fwmark services without a port.
	Address        netip.AddrPort `json:"address"`
	Weight         int            `json:"weight"`
	Forwarding     string         `json:"forwarding"`
	UpperThreshold int            `json:"upper_threshold,omitempty"`
	LowerThreshold int            `json:"lower_threshold,omitempty"`
	// Checks, when any, replace the virtual server's health_check for
	// this server: it is up while every one of them passes.
	Checks []HealthCheck `json:"check,omitempty"`
}

type HealthCheck struct {
	Type string `json:"type"`
	// ConnectIP and ConnectPort replace the real server's address or
	// port when set.
	ConnectIP        netip.Addr    `json:"connect_ip,omitzero"`
	ConnectPort      uint16        `json:"connect_port,omitempty"`
	BindTo           netip.Addr    `json:"bindto,omitzero"`
	Interval         time.Duration `json:"interval"`
	Timeout          time.Duration `json:"timeout"`
	Retry            int           `json:"retry"`
	DelayBeforeRetry time.Duration `json:"delay_before_retry"`
	Warmup           time.Duration `json:"warmup"`
	Rise             int           `json:"rise"`
	Fall             int           `json:"fall"`
	Alpha            bool          `json:"alpha"`
	LogAllFailures   bool          `json:"log_all_failures"`
	NotifyUp         []string      `json:"notify_up,omitempty"`
	NotifyDown       []string      `json:"notify_down,omitempty"`
	// NotifyUpScript and NotifyDownScript name [[check_script]]s of the
	// director: what a replicated virtual server uses instead.
	NotifyUpScript   string            `json:"notify_up_script,omitempty"`
	NotifyDownScript string            `json:"notify_down_script,omitempty"`
	Method           string            `json:"method,omitempty"`
	Path             string            `json:"path,omitempty"`
	Host             string            `json:"host,omitempty"`
	Headers          map[string]string `json:"headers,omitempty"`
	StatusCodes      []string          `json:"status_codes,omitempty"`
	BodyRegex        string            `json:"body_regex,omitempty"`
	Digest           string            `json:"digest,omitempty"`
	SNI              string            `json:"sni,omitempty"`
	VerifyCert       bool              `json:"verify_cert,omitempty"`
	WarnDays         int               `json:"warn_days,omitempty"`
	Payload          string            `json:"payload,omitempty"`
	Expect           string            `json:"expect,omitempty"`
	QueryName        string            `json:"query_name,omitempty"`
	QueryType        string            `json:"query_type,omitempty"`
	Rcode            string            `json:"rcode,omitempty"`
	HeloName         string            `json:"helo_name,omitempty"`
	Command          []string          `json:"command,omitempty"`
	// Script names a [[check_script]] of the director running the check.
	Script  string `json:"script,omitempty"`
	Dynamic bool   `json:"dynamic,omitempty"`
}

// BGP announces the addresses of the virtual servers with announce =
// "bgp" to the routers in front of several active directors.
type BGP struct {
	LocalAS  uint32     `json:"local_as"`
	RouterID netip.Addr `json:"router_id"`
	// Communities go with every announcement, as "ASN:VALUE".
	Communities []string `json:"communities,omitempty"`
	// ShutdownDelay is how long a stopping director announces with the
	// GRACEFUL_SHUTDOWN community before it withdraws (RFC 8326).
	ShutdownDelay time.Duration `json:"shutdown_delay"`
	Neighbors     []BGPNeighbor `json:"neighbor"`
}

// BGPNeighbor is a router the director peers with.
type BGPNeighbor struct {
	Address  netip.Addr    `json:"address"`
	PeerAS   uint32        `json:"peer_as"`
	Port     uint16        `json:"port"`
	Password string        `json:"-"` // TCP MD5 (RFC 2385)
	HoldTime time.Duration `json:"hold_time"`
}

// Announce values of a virtual server.
const (
	AnnounceVRRP = "vrrp"
	AnnounceBGP  = "bgp"
)

// Sync copies the conntrack entries of the flows to the VIPs to the peer
// while Instance is MASTER (nftables data plane).
type Sync struct {
	Listen   netip.AddrPort `json:"listen"`
	Peer     netip.AddrPort `json:"peer"`
	Key      []byte         `json:"-"`
	Instance string         `json:"instance"`
}

type Cluster struct {
	Bind     netip.AddrPort `json:"bind"`
	RaftBind netip.AddrPort `json:"raft_bind"`
	Peers    []string       `json:"peers"`
	// Members names every node that may vote, this one included.
	Members []string `json:"members"`
	// BootstrapExpect voters form the cluster the first time.
	BootstrapExpect int `json:"bootstrap_expect"`
	// EncryptKey encrypts and authenticates gossip; EncryptKeysOld are
	// still accepted during a rotation (never shown).
	EncryptKey     []byte   `json:"-"`
	EncryptKeysOld [][]byte `json:"-"`
	// TLS files for Raft's transport and forwarded commands: required.
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
	TLSCA   string `json:"tls_ca,omitempty"`
}

// Problem is one thing wrong with a file.
type Problem struct {
	File string
	Line int // 0 when the problem has no single line
	Key  string
	Msg  string
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Key != "" {
		b.WriteString(p.Key)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// Error lists every problem found in a file.
type Error struct {
	Problems []Problem
}

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// Parse validates data as if read from file. On failure the error is an
// *Error listing every problem.
func Parse(file string, data []byte) (*Config, error) {
	raw, md, mismatched, err := decodeAll(file, string(data))
	if err != nil {
		// A keepalived.conf fails as TOML at its first line; say what it is.
		if line, text := keepalivedLine(string(data)); line > 0 {
			return nil, &Error{Problems: []Problem{{File: file, Line: line,
				Msg: fmt.Sprintf("this looks like a keepalived.conf (%q), not directord's TOML: `directorctl convert %s` writes the equivalent", text, file)}}}
		}
		if e, ok := err.(*Error); ok {
			return nil, e
		}
		return nil, &Error{Problems: []Problem{decodeProblem(file, err)}}
	}
	v := &validator{file: file, pos: newLazyPositions(string(data))}
	v.unknownKeys(md.Undecoded())
	cfg := v.config(raw)
	if len(mismatched) > 0 {
		v.problems = withTypeProblems(mismatched, v.problems)
	}
	if len(v.problems) > 0 {
		return nil, &Error{Problems: v.problems}
	}
	cfg.File = file
	cfg.pos = v.pos
	return cfg, nil
}

// ProblemAt makes a Problem about a key of the file, such as
// ProblemAt("no such scheduler", "virtual_server", 2, "scheduler"), for
// checks made outside this package (what the data plane can do).
func (c *Config) ProblemAt(msg string, path ...any) Problem {
	p := Problem{File: c.File, Key: keyName(path), Msg: msg}
	if c.pos != nil {
		p.Line = c.pos.line(path...)
	}
	return p
}

var (
	mismatchTable = regexp.MustCompile(`^type mismatch for [\w.]+: expected table but found (\w+)`)
	mismatchValue = regexp.MustCompile(`^incompatible types: TOML value has type (\w+); destination has type (\w+)`)
)

// plainTypes says the toml decoder's type mismatches in TOML's words, not
// Go's ("type mismatch for config.rawNode").
func plainTypes(msg string) string {
	word := func(t string) string {
		switch {
		case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"), strings.HasPrefix(t, "float"):
			return "a number"
		case t == "string":
			return "a string"
		case t == "bool", t == "boolean":
			return "true or false"
		case t == "slice", t == "array", strings.HasPrefix(t, "[]"):
			return "an array"
		case t == "map", t == "struct", strings.HasPrefix(t, "map"), strings.HasPrefix(t, "config."):
			return "a table"
		case t == "datetime", strings.HasPrefix(t, "time."):
			return "a date"
		}
		return t
	}
	if m := mismatchTable.FindStringSubmatch(msg); m != nil {
		return "want a table, not " + word(m[1])
	}
	if m := mismatchValue.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("want %s, not %s", word(m[2]), word(m[1]))
	}
	return msg
}

// decodeAll decodes data, reporting every value of the wrong type rather
// than only the first: the decoder stops at the first, so its line is
// blanked (line numbers stay) and the rest decoded again. err is a syntax
// error, or a mismatch whose line cannot be blanked.
func decodeAll(file, data string) (*rawConfig, toml.MetaData, []Problem, error) {
	var mismatched []Problem
	for {
		var raw rawConfig
		md, err := toml.Decode(data, &raw)
		if err == nil {
			return &raw, md, mismatched, nil
		}
		p := decodeProblem(file, err)
		var pe toml.ParseError
		lines := strings.SplitAfter(data, "\n")
		if errors.As(err, &pe) || p.Line < 1 || p.Line > len(lines) || len(mismatched) >= 100 {
			if len(mismatched) == 0 {
				return nil, md, nil, err
			}
			// Blanking a line of a value written over several lines
			// breaks the syntax: say the mismatches found so far.
			if !errors.As(err, &pe) {
				mismatched = append(mismatched, p)
			}
			return nil, md, nil, &Error{Problems: mismatched}
		}
		mismatched = append(mismatched, p)
		lines[p.Line-1] = "\n"
		data = strings.Join(lines, "")
	}
}

// withTypeProblems puts the type mismatches among the validator's
// problems, minus what the validator says of those keys because their
// values were taken away ("name is required").
func withTypeProblems(mismatched, problems []Problem) []Problem {
	gone := map[string]bool{}
	for _, p := range mismatched {
		gone[p.Key] = true
	}
	out := slices.Clone(mismatched)
	for _, p := range problems {
		if !gone[indexes.ReplaceAllString(p.Key, "")] {
			out = append(out, p)
		}
	}
	slices.SortStableFunc(out, func(a, b Problem) int { return a.Line - b.Line })
	return out
}

var indexes = regexp.MustCompile(`\[[^\]]*\]`)

var lineInText = regexp.MustCompile(`^toml: line (\d+)(?: \(last key "([^"]*)"\))?: (.*)$`)

// decodeProblem turns a toml error into a Problem. Syntax errors come as
// ParseError with a position; type mismatches only carry the line in text.
func decodeProblem(file string, err error) Problem {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		return Problem{File: file, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
	}
	if m := lineInText.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		return Problem{File: file, Line: line, Key: m[2], Msg: plainTypes(m[3])}
	}
	return Problem{File: file, Msg: err.Error()}
}

// Package api is the contract between directord and its clients: the
// documents of the status socket's JSON API (/v1/...), as plain types.
//
// It imports nothing but the standard library, so that directorctl and
// other clients link none of the daemon's kernel, Raft or metrics code.
// The daemon turns its subsystems' own types into these; a change of a
// field here is a change of the API and needs a new Version.
package api

import (
	"encoding/json"
	"net/netip"
	"time"
)

// Version is the version of the JSON documents; it appears in their paths
// (/v1/...) and in every status document.
const Version = 1

// Section names of the status document, as in GET /v1/status/{section}.
const (
	SectionNode    = "node"
	SectionConfig  = "config"
	SectionVRRP    = "vrrp"
	SectionLVS     = "lvs"
	SectionHealth  = "health"
	SectionCluster = "cluster"
	SectionSync    = "sync"
	SectionDrills  = "drills"
	SectionBGP     = "bgp"
)

// Sections lists every section name, in the document's order.
var Sections = []string{SectionNode, SectionConfig, SectionVRRP, SectionLVS, SectionHealth,
	SectionCluster, SectionSync, SectionDrills, SectionBGP}

// Document is the status document (GET /v1/status). A section a daemon
// does not have (no [cluster], no connection sync) is absent.
type Document struct {
	APIVersion int            `json:"api_version"`
	Node       *NodeStatus    `json:"node,omitempty"`
	Config     *ConfigStatus  `json:"config,omitempty"`
	VRRP       *VRRPStatus    `json:"vrrp,omitempty"`
	LVS        *LVSStatus     `json:"lvs,omitempty"`
	Health     *HealthStatus  `json:"health,omitempty"`
	Cluster    *ClusterStatus `json:"cluster,omitempty"`
	Sync       *SyncStatus    `json:"sync,omitempty"`
	Drills     *DrillsStatus  `json:"drills,omitempty"`
	BGP        *BGPStatus     `json:"bgp,omitempty"`
}

// BGPStatus is the "bgp" section: the sessions with the routers and the
// addresses announced to them.
type BGPStatus struct {
	LocalAS  uint32      `json:"local_as"`
	RouterID string      `json:"router_id"`
	Peers    []BGPPeer   `json:"peers"`
	Prefixes []BGPPrefix `json:"prefixes"`
	// ShuttingDown: routes carry GRACEFUL_SHUTDOWN, the withdrawal follows.
	ShuttingDown bool   `json:"shutting_down,omitempty"`
	Error        string `json:"error,omitempty"`
}

// BGPPeer is one session.
type BGPPeer struct {
	Address string    `json:"address"`
	PeerAS  uint32    `json:"peer_as"`
	State   string    `json:"state"` // idle, connect, active, opensent, openconfirm, established
	Since   time.Time `json:"since,omitzero"`
}

// BGPPrefix is an address of virtual servers with announce = "bgp".
type BGPPrefix struct {
	Prefix    string   `json:"prefix"`
	Services  []string `json:"services"`
	Announced bool     `json:"announced"`
	// Reason says why it is not announced.
	Reason string `json:"reason,omitempty"`
}

// BGPHold is POST /v1/bgp/withdraw and /v1/bgp/announce: an operator's
// withdrawal of a virtual server's address, or its end.
type BGPHold struct {
	Service string `json:"service"`
}

// Section returns the section called name, and false when the document
// has no such section.
func (d *Document) Section(name string) (any, bool) {
	var v any
	ok := false
	switch name {
	case SectionNode:
		v, ok = d.Node, d.Node != nil
	case SectionConfig:
		v, ok = d.Config, d.Config != nil
	case SectionVRRP:
		v, ok = d.VRRP, d.VRRP != nil
	case SectionLVS:
		v, ok = d.LVS, d.LVS != nil
	case SectionHealth:
		v, ok = d.Health, d.Health != nil
	case SectionCluster:
		v, ok = d.Cluster, d.Cluster != nil
	case SectionSync:
		v, ok = d.Sync, d.Sync != nil
	case SectionDrills:
		v, ok = d.Drills, d.Drills != nil
	case SectionBGP:
		v, ok = d.BGP, d.BGP != nil
	}
	return v, ok
}

// ErrorBody is the JSON answer of a failed request.
type ErrorBody struct {
	Error   string   `json:"error"`
	Details []string `json:"details,omitempty"`
}

// NodeStatus is the "node" section.
type NodeStatus struct {
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	PID       int       `json:"pid"`
	StartedAt time.Time `json:"started_at"`
	Uptime    string    `json:"uptime"`
}

// ConfigStatus is the "config" section.
type ConfigStatus struct {
	File           string        `json:"file"`
	LoadedAt       time.Time     `json:"loaded_at"`
	Generation     int           `json:"generation"`
	ReloadsOK      int           `json:"reloads_ok"`
	ReloadsFailed  int           `json:"reloads_failed"`
	LastReload     *ReloadResult `json:"last_reload,omitempty"`
	Dataplane      string        `json:"dataplane"`
	VRRPInstances  int           `json:"vrrp_instances"`
	VirtualServers int           `json:"virtual_servers"`
	Cluster        bool          `json:"cluster"`
}

// ReloadResult answers POST /v1/reload and is kept for status.
type ReloadResult struct {
	At       time.Time `json:"at"`
	OK       bool      `json:"ok"`
	Problems []string  `json:"problems,omitempty"`
	Changes  *Changes  `json:"changes,omitempty"`
	// VRRPStarted lists the instances (re)started by the reload: new
	// ones and those whose identity (interface, VRID, addresses) changed.
	VRRPStarted []string `json:"vrrp_started,omitempty"`
	// VRRPInPlace lists the instances whose settings changed in place,
	// without a transition.
	VRRPInPlace []string `json:"vrrp_in_place,omitempty"`
}

// Changes is what a reload changed.
type Changes struct {
	VRRP           Delta `json:"vrrp_instance"`
	VirtualServers Delta `json:"virtual_server"`
	// Live lists node settings applied without a restart.
	Live []string `json:"live,omitempty"`
	// Restart lists settings that only take effect after a restart.
	Restart []string `json:"restart,omitempty"`
}

// Delta names the added, removed and changed entries of a named list.
type Delta struct {
	Added   []string `json:"added,omitempty"`
	Removed []string `json:"removed,omitempty"`
	Changed []string `json:"changed,omitempty"`
}

// Empty reports whether d names nothing.
func (d Delta) Empty() bool { return len(d.Added)+len(d.Removed)+len(d.Changed) == 0 }

// Empty reports whether the reload changes nothing.
func (c Changes) Empty() bool {
	return c.VRRP.Empty() && c.VirtualServers.Empty() && len(c.Live)+len(c.Restart) == 0
}

// VRRPStatus is the "vrrp" section.
type VRRPStatus struct {
	Instances []VRRPInstance `json:"instances"`
	Scripts   []ScriptStatus `json:"scripts,omitempty"`
	// UnattributedDrops counts, by interface and reason, packets that no
	// configured instance could be charged with (mostly foreign VRIDs).
	UnattributedDrops map[string]map[string]uint64 `json:"unattributed_drops,omitempty"`
}

// VRRP states as the documents spell them.
const (
	StateInit   = "INIT"
	StateBackup = "BACKUP"
	StateMaster = "MASTER"
	StateFault  = "FAULT"
)

// VRRPInstance is one VRRP instance.
type VRRPInstance struct {
	Name      string   `json:"name"`
	Interface string   `json:"interface"`
	VRID      uint8    `json:"virtual_router_id"`
	Version   int      `json:"version"`
	VIPs      []string `json:"virtual_ipaddress"`
	Source    string   `json:"source,omitempty"`
	// State is one of the State constants.
	State           string          `json:"state"`
	Priority        uint8           `json:"priority"` // effective
	Master          string          `json:"master,omitempty"`
	MasterPriority  uint8           `json:"master_priority,omitempty"`
	AdvertInt       time.Duration   `json:"advert_int_ns"`
	MasterAdverInt  time.Duration   `json:"master_advert_int_ns"`
	LastTransition  *VRRPTransition `json:"last_transition,omitempty"`
	AdvertsSent     uint64          `json:"adverts_sent"`
	AdvertsReceived uint64          `json:"adverts_received"`
	Transitions     uint64          `json:"transitions"`
	// Drops counts dropped packets by reason.
	Drops map[string]uint64 `json:"drops"`
	// AddrListMismatches counts v3 adverts accepted although they list
	// other virtual addresses (RFC 9568 §7.1; each logged, once a minute).
	AddrListMismatches uint64 `json:"addr_list_mismatches,omitempty"`
	Error              string `json:"error,omitempty"`
}

// VRRPTransition is a change of an instance's state.
type VRRPTransition struct {
	From     string    `json:"from"`
	To       string    `json:"to"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
	Priority uint8     `json:"priority"` // effective, at the transition
}

// ScriptStatus is one vrrp_script.
type ScriptStatus struct {
	Name    string    `json:"name"`
	OK      bool      `json:"ok"`
	Runs    uint64    `json:"runs"`
	LastRun time.Time `json:"last_run,omitzero"`
	// LastResult is "ok", "exit status N", "timed out" and the like.
	LastResult string `json:"last_result,omitempty"`
	// InARow counts the latest results that disagree with OK (towards
	// rise or fall).
	InARow int `json:"in_a_row"`
}

// FailoverRequest is the body of POST /v1/vrrp/{instance}/failover.
type FailoverRequest struct {
	// Hold is how long this director stays backup (a Go duration); empty
	// means the instance's preempt_delay.
	Hold string `json:"hold,omitempty"`
	// Force hands over even when no other director takes over (the
	// addresses then go unserved for the hold).
	Force bool `json:"force,omitempty"`
}

// FailoverResult answers it.
type FailoverResult struct {
	Instance string       `json:"instance"`
	Hold     string       `json:"hold"`
	Now      VRRPInstance `json:"now"`
	// Warning says when this director will take the addresses back.
	Warning string `json:"warning,omitempty"`
}

// HealthStatus is the "health" section.
type HealthStatus struct {
	Checks []CheckStatus `json:"checks"`
}

// CheckID names a check of a real server of a virtual server.
type CheckID struct {
	Service string         `json:"service"`
	Real    netip.AddrPort `json:"real_server"`
	Check   string         `json:"check,omitempty"` // tcp, http, http#2...
}

// CheckStatus is one real server's health.
type CheckStatus struct {
	ID          CheckID   `json:"id"`
	Check       string    `json:"check"`
	Up          bool      `json:"up"`
	Weight      int       `json:"weight"` // -1: the configured weight
	Since       time.Time `json:"since"`
	Transitions int       `json:"transitions"`
	Checks      uint64    `json:"checks"`
	Failures    uint64    `json:"failures"`
	LastAt      time.Time `json:"last_at,omitzero"`
	LastOK      bool      `json:"last_ok"`
	LastError   string    `json:"last_error,omitempty"`
	Latency     string    `json:"latency"`
	LatencySecs float64   `json:"latency_seconds"`
	// Missed counts checks that started later than one interval after
	// the previous one was due.
	Missed uint64 `json:"missed"`
}

// SyncStatus is the "sync" section: the conntrack sync channel.
type SyncStatus struct {
	Role      string `json:"role"` // master (sending) or backup (receiving)
	Peer      string `json:"peer"`
	Connected bool   `json:"connected"`
	// TLS: the sync runs over the cluster's mutual TLS too.
	TLS      bool   `json:"tls"`
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Applied  uint64 `json:"applied"`
	Failed   uint64 `json:"failed"`
	Dropped  uint64 `json:"dropped"`
	Refused  uint64 `json:"refused"` // connections or messages failing authentication
	// Rejected counts what a backup refused, by reason: flows for what is
	// not one of its virtual servers or real servers, replays, failed
	// authentication, connections from elsewhere than the peer.
	Rejected   map[string]uint64 `json:"rejected,omitempty"`
	LastResync time.Time         `json:"last_resync,omitzero"`
	// LagMillis is the lag of the last message applied: for events, from
	// the master's conntrack event to the backup's write.
	LagMillis float64 `json:"lag_ms"`
}

// ClusterStatus is the "cluster" section.
type ClusterStatus struct {
	ID          string          `json:"id"`
	Role        string          `json:"role"` // director or witness
	RaftState   string          `json:"raft_state"`
	Leader      string          `json:"leader"`
	Term        string          `json:"term"`
	CommitIndex string          `json:"commit_index"`
	Applied     uint64          `json:"applied_index"`
	LastContact string          `json:"last_contact"`
	RaftTLS     bool            `json:"raft_tls"`
	Gossip      string          `json:"gossip_encryption"` // "aes" or "none"
	Members     []ClusterMember `json:"members"`
	StateIndex  uint64          `json:"state_index"`
	Seeded      bool            `json:"seeded"`
	// FileDiffers lists the virtual servers where this node's file and
	// the replicated table disagree.
	FileDiffers []string `json:"file_differs,omitempty"`
	// Refused are virtual servers a committed command carried that failed
	// validation here, with why: they are not programmed.
	Refused map[string]string `json:"refused,omitempty"`
	// Error says why the cluster could not start (VRRP and the load
	// balancer run without it); the rest is then empty.
	Error string `json:"error,omitempty"`
	// ProgrammedIndex is the Raft index of the table the kernel holds here
	// (StateIndex is the committed one); TableError says why the committed
	// table is not in force, CacheError why it was not saved.
	ProgrammedIndex uint64 `json:"programmed_index"`
	TableError      string `json:"table_error,omitempty"`
	CacheError      string `json:"cache_error,omitempty"`
	// ClusterID names the cluster (committed by its first leader).
	ClusterID string `json:"cluster_id,omitempty"`
	// Left: this node ran directorctl cluster leave and has not rejoined;
	// its VRRP instances are held in FAULT.
	Left bool `json:"left,omitempty"`
	// Conflicts name members that belong to another cluster.
	Conflicts []string `json:"conflicts,omitempty"`
	// RefusedConnections counts connections to the Raft port that
	// failed authentication or found no room.
	RefusedConnections uint64 `json:"refused_connections"`
}

// ClusterMember is one member as the gossip sees it.
type ClusterMember struct {
	Name   string `json:"name"`
	Gossip string `json:"gossip"`
	Raft   string `json:"raft"`
	State  string `json:"state"`
	Role   string `json:"role"`
	// App is the member's application metadata as last gossiped.
	App json.RawMessage `json:"app,omitempty"`
}

// Cluster operations of ClusterRequest.Op.
const (
	OpApply     = "apply"
	OpRSDrain   = "rs.drain"
	OpRSEnable  = "rs.enable"
	OpRSDisable = "rs.disable"
	OpRSWeight  = "rs.weight"
	OpVSPut     = "vs.put"
	OpVSDel     = "vs.del"
)

// ClusterRequest is a change sent with POST /v1/cluster.
type ClusterRequest struct {
	Op       string                     `json:"op"` // one of the Op constants
	Services map[string]json.RawMessage `json:"services,omitempty"`
	Service  string                     `json:"service,omitempty"`
	Document json.RawMessage            `json:"document,omitempty"` // vs.put
	Real     string                     `json:"real,omitempty"`
	Weight   int                        `json:"weight,omitempty"`
	DryRun   bool                       `json:"dry_run,omitempty"`
}

// ClusterResult answers a ClusterRequest.
type ClusterResult struct {
	Changed []string `json:"changed"` // apply: virtual servers added, removed or changed
	Applied bool     `json:"applied"`
}

// LeaveResult answers POST /v1/cluster/leave.
type LeaveResult struct {
	Left string `json:"left"`
}

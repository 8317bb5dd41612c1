package api

import (
	"fmt"
	"net/netip"
	"time"
)

// LVSStatus is the "lvs" section: the kernel's load-balancer table.
type LVSStatus struct {
	Dataplane string `json:"dataplane"`
	Reason    string `json:"reason"`
	// Capabilities is what this node's data plane can carry out.
	Capabilities  *Capabilities `json:"capabilities,omitempty"`
	Sysctls       []Sysctl      `json:"sysctls"`
	LastReconcile Reconcile     `json:"last_reconcile"`
	// Timeouts are the connections' idle timeouts in force (IPVS: the
	// kernel's; nftables: those set, "0s" for the kernel's own).
	Timeouts *Timeouts    `json:"timeouts,omitempty"`
	Services []LVSService `json:"services"`
	// SyncDaemons are the kernel's IPVS sync daemons (lvs_sync_daemon).
	SyncDaemons []SyncDaemon `json:"sync_daemons,omitempty"`
	// Overrides are the real servers changed by hand (directorctl rs) on a
	// director without [cluster]: virtual server, then real server, then
	// "drain", "disabled" or "weight N".
	Overrides map[string]map[string]string `json:"overrides,omitempty"`
	Error     string                       `json:"error,omitempty"`
}

// Capabilities are what a data plane supports.
type Capabilities struct {
	Schedulers []string `json:"schedulers"`
	Forwarding []string `json:"forwarding"`
	// Features are the optional features it carries out: "one_packet",
	// "thresholds", "masquerade", "port_zero", "sync_daemon",
	// "conntrack_sync".
	Features []string `json:"features"`
}

// Sysctl is a kernel setting the data plane needs.
type Sysctl struct {
	Key  string `json:"key"`
	Want string `json:"want"`
	Was  string `json:"was,omitempty"`
	Err  string `json:"error,omitempty"`
	Why  string `json:"why"`
}

// Timeouts are idle timeouts as Go durations, like ipvsadm -L --timeout.
type Timeouts struct {
	TCP    string `json:"tcp"`
	TCPFin string `json:"tcpfin"`
	UDP    string `json:"udp"`
}

// Reconcile is the outcome of the last reconcile.
type Reconcile struct {
	Ops      int       `json:"ops"`
	At       time.Time `json:"at"`
	Duration string    `json:"duration"`
	Err      string    `json:"error,omitempty"`
	// Refused are the services the kernel refused, by key, with its
	// error; the others were programmed.
	Refused map[string]string `json:"refused,omitempty"`
}

// Forwarding methods as the documents spell them.
const (
	ForwardNAT    = "nat"
	ForwardDR     = "dr"
	ForwardTunnel = "tun"
)

// Scheduler flag bits of LVSService.Flags (IPVS's IP_VS_SVC_F_SCHED1..3);
// for sh and mh, 1 is fallback and 2 is port.
const (
	FlagSched1 uint32 = 0x8
	FlagSched2 uint32 = 0x10
	FlagSched3 uint32 = 0x20
)

// LVSKey identifies a virtual service: protocol, address and port, or a
// firewall mark with its address family.
type LVSKey struct {
	Protocol string         `json:"protocol,omitempty"`
	Addr     netip.AddrPort `json:"address,omitzero"`
	FWMark   uint32         `json:"fwmark,omitempty"`
	IPv6     bool           `json:"ipv6,omitempty"` // fwmark services only
}

// LVSService is one virtual service as the kernel has it.
type LVSService struct {
	Name string `json:"name,omitempty"` // "" for a service directord does not manage
	LVSKey
	Scheduler       string        `json:"scheduler"`
	Flags           uint32        `json:"flags,omitempty"` // FlagSched bits
	OnePacket       bool          `json:"ops,omitempty"`
	Persistence     time.Duration `json:"persistence_timeout,omitempty"`
	PersistenceBits int           `json:"persistence_granularity,omitempty"`
	Masquerade      bool          `json:"masquerade,omitempty"`
	Reals           []LVSReal     `json:"real_servers"`
	Stats           LVSStats      `json:"stats"`
	QuorumUp        bool          `json:"quorum_up"`
	// Draining lists the real servers at weight 0 waiting to be removed.
	Draining []netip.AddrPort `json:"draining,omitempty"`
}

// LVSReal is a real server as the kernel has it, with its counters.
type LVSReal struct {
	Addr     netip.AddrPort `json:"address"`
	Weight   int            `json:"weight"`
	Method   string         `json:"forwarding"` // one of the Forward constants
	Upper    uint32         `json:"upper_threshold,omitempty"`
	Lower    uint32         `json:"lower_threshold,omitempty"`
	Active   int            `json:"active_connections"`
	Inactive int            `json:"inactive_connections"`
	Stats    LVSStats       `json:"stats"`
}

// LVSStats are the counters of a service or a real server. A data plane
// that cannot count something leaves it zero.
type LVSStats struct {
	Connections uint64 `json:"connections"`
	PacketsIn   uint64 `json:"packets_in"`
	PacketsOut  uint64 `json:"packets_out"`
	BytesIn     uint64 `json:"bytes_in"`
	BytesOut    uint64 `json:"bytes_out"`
	// Rates per second, as the kernel estimates them (IPVS only).
	CPS    uint64 `json:"cps"`
	PPSIn  uint64 `json:"pps_in"`
	PPSOut uint64 `json:"pps_out"`
	BPSIn  uint64 `json:"bps_in"`
	BPSOut uint64 `json:"bps_out"`
}

// SyncDaemon is one of the kernel's IPVS sync daemons.
type SyncDaemon struct {
	State     SyncDaemonState `json:"state"`
	Interface string          `json:"interface"`
	SyncID    uint32          `json:"sync_id"`
	MaxLen    uint16          `json:"maxlen,omitempty"` // 0: the kernel's default
	Group     netip.Addr      `json:"group,omitzero"`   // zero: 224.0.0.81
	Port      uint16          `json:"port,omitempty"`   // 0: 8848
	TTL       uint8           `json:"ttl,omitempty"`    // 0: 1
}

// SyncDaemonState is 1 for a master (sending) and 2 for a backup.
type SyncDaemonState uint32

func (s SyncDaemonState) String() string {
	switch s {
	case 1:
		return "master"
	case 2:
		return "backup"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// LVSFlows are the connections and persistence templates of the virtual
// services (GET /v1/lvs/flows), as ipvsadm -Lnc lists them.
type LVSFlows struct {
	Dataplane string    `json:"dataplane"`
	Flows     []LVSFlow `json:"flows"`
}

// LVSFlow is one connection, or one template (a client pinned to a real
// server by persistence).
type LVSFlow struct {
	Protocol string         `json:"protocol,omitempty"` // "" for a firewall mark's template
	Client   netip.AddrPort `json:"client"`             // a template's: port 0
	Service  LVSKey         `json:"service"`
	Real     netip.AddrPort `json:"real_server"`
	State    string         `json:"state"`
	Expires  string         `json:"expires"` // time left, as a Go duration
	Template bool           `json:"template,omitempty"`
}

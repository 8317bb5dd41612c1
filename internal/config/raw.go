package config

import "fmt"

// The raw structs mirror the TOML file one to one. Everything that can be
// wrong in a way worth a line number (addresses, durations, enumerations) is
// decoded as a string and checked in validate, so that one run reports every
// problem instead of stopping at the first.

type rawConfig struct {
	Node          *rawNode         `toml:"node"`
	Dataplane     rawDataplane     `toml:"dataplane"`
	VRRPInstance  []rawVRRP        `toml:"vrrp_instance"`
	VRRPScript    []rawScript      `toml:"vrrp_script"`
	CheckScript   []rawCheckScript `toml:"check_script"`
	TrackFile     []rawTrackFile   `toml:"vrrp_track_file"`
	TrackProcess  []rawTrackProc   `toml:"vrrp_track_process"`
	VRRPSyncGroup []rawSyncGroup   `toml:"vrrp_sync_group"`
	VirtualServer []rawVS          `toml:"virtual_server"`
	Cluster       *rawCluster      `toml:"cluster"`
	Sync          *rawSync         `toml:"sync"`
	BGP           *rawBGP          `toml:"bgp"`
}

type rawBGP struct {
	LocalAS       *int64           `toml:"local_as"`
	RouterID      string           `toml:"router_id"`
	Communities   []string         `toml:"communities"`
	ShutdownDelay string           `toml:"shutdown_delay"`
	Neighbor      []rawBGPNeighbor `toml:"neighbor"`
}

type rawBGPNeighbor struct {
	Address  string `toml:"address"`
	PeerAS   *int64 `toml:"peer_as"`
	Port     *int   `toml:"port"`
	Password string `toml:"password"`
	HoldTime string `toml:"hold_time"`
}

type rawSync struct {
	Listen   string `toml:"listen"`
	Peer     string `toml:"peer"`
	Key      string `toml:"key"`
	Instance string `toml:"instance"`
}

type rawNode struct {
	Name          string `toml:"name"`
	DataDir       string `toml:"data_dir"`
	StatusSocket  string `toml:"status_socket"`
	MetricsListen string `toml:"metrics_listen"`
	LogFormat     string `toml:"log_format"`
	LogLevel      string `toml:"log_level"`
	Role          string `toml:"role"`
	ScriptUser    string `toml:"script_user"`
	ScriptSecure  *bool  `toml:"enable_script_security"`
	VRRPStartup   string `toml:"vrrp_startup_delay"`
	Realtime      *int   `toml:"realtime_priority"`
	VRRPStrict    *bool  `toml:"vrrp_strict"`
	NotifyFIFO    string `toml:"notify_fifo"`
}

type rawDataplane struct {
	Kind              string         `toml:"kind"`
	LVSFlush          *bool          `toml:"lvs_flush"`
	ReconcileInterval string         `toml:"reconcile_interval"`
	DRInterface       string         `toml:"dr_interface"`
	LVSSyncDaemon     *rawSyncDaemon `toml:"lvs_sync_daemon"`
	Timeouts          *rawTimeouts   `toml:"timeouts"`
}

type rawTimeouts struct {
	TCP    string `toml:"tcp"`
	TCPFin string `toml:"tcpfin"`
	UDP    string `toml:"udp"`
}

type rawSyncDaemon struct {
	Interface string `toml:"interface"`
	Instance  string `toml:"instance"`
	SyncID    *int   `toml:"sync_id"`
	MaxLen    *int   `toml:"maxlen"`
	Port      *int   `toml:"port"`
	TTL       *int   `toml:"ttl"`
	Group     string `toml:"group"`
}

type rawVRRP struct {
	Name              string           `toml:"name"`
	Interface         string           `toml:"interface"`
	VirtualRouterID   *int             `toml:"virtual_router_id"`
	Priority          *int             `toml:"priority"`
	AdvertInt         string           `toml:"advert_int"`
	Version           *int             `toml:"version"`
	Preempt           *bool            `toml:"preempt"`
	PreemptDelay      string           `toml:"preempt_delay"`
	VirtualIPAddress  []string         `toml:"virtual_ipaddress"`
	VirtualIPExcluded []string         `toml:"virtual_ipaddress_excluded"`
	UnicastSrcIP      string           `toml:"unicast_src_ip"`
	UnicastPeer       []string         `toml:"unicast_peer"`
	AuthPass          string           `toml:"auth_pass"`
	V3ChecksumAsV2    bool             `toml:"v3_checksum_as_v2"`
	GARPMasterDelay   string           `toml:"garp_master_delay"`
	GARPMasterRepeat  *int             `toml:"garp_master_repeat"`
	GARPMasterRefresh string           `toml:"garp_master_refresh"`
	TrackInterface    []rawTrackIf     `toml:"track_interface"`
	TrackScript       []rawTrackScript `toml:"track_script"`
	TrackFileRef      []rawTrackScript `toml:"track_file"`
	NotifyMaster      []string         `toml:"notify_master"`
	NotifyBackup      []string         `toml:"notify_backup"`
	NotifyFault       []string         `toml:"notify_fault"`
	NotifyStop        []string         `toml:"notify_stop"`
	Notify            []string         `toml:"notify"`
	NotifyRxLowerPri  []string         `toml:"notify_master_rx_lower_pri"`
	NotifyTimeout     string           `toml:"notify_timeout"`
	State             string           `toml:"state"`
	McastSrcIP        string           `toml:"mcast_src_ip"`
	DontTrackPrimary  *bool            `toml:"dont_track_primary"`
	SkipCheckAdvAddr  *bool            `toml:"skip_check_adv_addr"`
	LowerPrioNoAdvert *bool            `toml:"lower_prio_no_advert"`
	InitFail          *bool            `toml:"init_fail"`
	Accept            *bool            `toml:"accept"`
	NoAccept          *bool            `toml:"no_accept"`
	GARPLowerRepeat   *int             `toml:"garp_lower_prio_repeat"`
	GARPLowerDelay    string           `toml:"garp_lower_prio_delay"`
	HigherPrioAdvert  *bool            `toml:"higher_prio_send_advert"`
	StrictMode        *bool            `toml:"strict_mode"`
	UseVMAC           any              `toml:"use_vmac"`
	VMACXmitBase      *bool            `toml:"vmac_xmit_base"`
	VirtualRoutes     []string         `toml:"virtual_routes"`
	VirtualRules      []string         `toml:"virtual_rules"`
	TrackProcess      []rawTrackScript `toml:"track_process"`
}

// rawTrack is a tracked interface or script: "eth1" or
// { interface = "eth1", weight = -10 } (track_script: { name = ..., weight = ... }).
type rawTrack struct {
	Name    string
	Weight  *int
	Reverse bool
}

// rawTrackIf and rawTrackScript differ only in the key naming the target.
type (
	rawTrackIf     struct{ rawTrack }
	rawTrackScript struct{ rawTrack }
)

func (t *rawTrackIf) UnmarshalTOML(v any) error     { return t.decode(v, "interface") }
func (t *rawTrackScript) UnmarshalTOML(v any) error { return t.decode(v, "name") }

// decode accepts both spellings; an error carries the line (toml adds it).
func (t *rawTrack) decode(v any, key string) error {
	switch x := v.(type) {
	case string:
		t.Name = x
	case map[string]any:
		for k, val := range x {
			switch k {
			case key:
				s, ok := val.(string)
				if !ok {
					return fmt.Errorf("%s must be a string", key)
				}
				t.Name = s
			case "weight":
				n, ok := val.(int64)
				if !ok {
					return fmt.Errorf("weight must be an integer")
				}
				w := int(n)
				t.Weight = &w
			case "reverse":
				b, ok := val.(bool)
				if !ok {
					return fmt.Errorf("reverse must be true or false")
				}
				t.Reverse = b
			default:
				return fmt.Errorf("unknown key %q (use %s, weight and reverse)", k, key)
			}
		}
	default:
		return fmt.Errorf("want \"NAME\" or { %s = \"NAME\", weight = N }", key)
	}
	return nil
}

// rawSyncGroup is keepalived's vrrp_sync_group.
type rawSyncGroup struct {
	Name  string   `toml:"name"`
	Group []string `toml:"group"`
}

// rawScript is keepalived's vrrp_script.
type rawTrackProc struct {
	Name      string `toml:"name"`
	Process   string `toml:"process"`
	Param     string `toml:"param_match"`
	Quorum    *int   `toml:"quorum"`
	QuorumMax *int   `toml:"quorum_max"`
	Weight    *int   `toml:"weight"`
	Delay     string `toml:"delay"`
	Interval  string `toml:"interval"`
}

type rawScript struct {
	Name     string   `toml:"name"`
	Script   []string `toml:"script"`
	Interval string   `toml:"interval"`
	Timeout  string   `toml:"timeout"`
	Rise     *int     `toml:"rise"`
	Fall     *int     `toml:"fall"`
	Weight   *int     `toml:"weight"`
	User     string   `toml:"user"`
}
type rawVS struct {
	Name                   string          `toml:"name"`
	Address                string          `toml:"address"`
	FWMark                 *int            `toml:"fwmark"`
	Family                 string          `toml:"family"`
	Protocol               string          `toml:"protocol"`
	Scheduler              string          `toml:"scheduler"`
	SchedulerFlags         []string        `toml:"scheduler_flags"`
	Forwarding             string          `toml:"forwarding"`
	PersistenceTimeout     string          `toml:"persistence_timeout"`
	PersistenceGranularity *int            `toml:"persistence_granularity"`
	OnePacket              *bool           `toml:"one_packet"`
	Masquerade             *bool           `toml:"masquerade"`
	Quorum                 *int            `toml:"quorum"`
	Hysteresis             *int            `toml:"hysteresis"`
	InhibitOnFailure       *bool           `toml:"inhibit_on_failure"`
	DrainTimeout           string          `toml:"drain_timeout"`
	SorryServer            string          `toml:"sorry_server"`
	Announce               string          `toml:"announce"`
	RealServer             []rawRS         `toml:"real_server"`
	HealthCheck            *rawHealthCheck `toml:"health_check"`
}

type rawRS struct {
	Address        string `toml:"address"`
	Weight         *int   `toml:"weight"`
	Forwarding     string `toml:"forwarding"`
	UpperThreshold *int   `toml:"upper_threshold"`
	LowerThreshold *int   `toml:"lower_threshold"`
	// Check lists the server's own checks, in place of the virtual
	// server's health_check.
	Check []rawHealthCheck `toml:"check"`
}

type rawHealthCheck struct {
	Type             string            `toml:"type"`
	ConnectIP        string            `toml:"connect_ip"`
	ConnectPort      *int              `toml:"connect_port"`
	BindTo           string            `toml:"bindto"`
	Interval         string            `toml:"interval"`
	Timeout          string            `toml:"timeout"`
	Retry            *int              `toml:"retry"`
	DelayBeforeRetry string            `toml:"delay_before_retry"`
	Warmup           string            `toml:"warmup"`
	Rise             *int              `toml:"rise"`
	Fall             *int              `toml:"fall"`
	Alpha            *bool             `toml:"alpha"`
	LogAllFailures   *bool             `toml:"log_all_failures"`
	NotifyUp         []string          `toml:"notify_up"`
	NotifyDown       []string          `toml:"notify_down"`
	NotifyUpScript   string            `toml:"notify_up_script"`
	NotifyDownScript string            `toml:"notify_down_script"`
	Method           string            `toml:"method"`
	Path             string            `toml:"path"`
	Host             string            `toml:"host"`
	Headers          map[string]string `toml:"headers"`
	StatusCodes      []string          `toml:"status_codes"`
	BodyRegex        string            `toml:"body_regex"`
	Digest           string            `toml:"digest"`
	SNI              string            `toml:"sni"`
	VerifyCert       *bool             `toml:"verify_cert"`
	WarnDays         *int              `toml:"warn_days"`
	Payload          string            `toml:"payload"`
	Expect           string            `toml:"expect"`
	QueryName        string            `toml:"query_name"`
	QueryType        string            `toml:"query_type"`
	Rcode            string            `toml:"rcode"`
	HeloName         string            `toml:"helo_name"`
	Command          []string          `toml:"command"`
	Script           string            `toml:"script"`
	Dynamic          *bool             `toml:"dynamic"`
}

type rawTrackFile struct {
	Name   string `toml:"name"`
	File   string `toml:"file"`
	Weight *int   `toml:"weight"`
}

type rawCheckScript struct {
	Name    string   `toml:"name"`
	Command []string `toml:"command"`
}

type rawCluster struct {
	Bind            string   `toml:"bind"`
	RaftBind        string   `toml:"raft_bind"`
	Peers           []string `toml:"peers"`
	Members         []string `toml:"members"`
	BootstrapExpect *int     `toml:"bootstrap_expect"`
	EncryptKey      string   `toml:"encrypt_key"`
	EncryptKeysOld  []string `toml:"encrypt_keys_old"`
	TLSCert         string   `toml:"tls_cert"`
	TLSKey          string   `toml:"tls_key"`
	TLSCA           string   `toml:"tls_ca"`
}

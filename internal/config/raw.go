package config

// The raw structs mirror the TOML file one to one. Everything that can be
// wrong in a way worth a line number (addresses, durations, enumerations) is
// decoded as a string and checked in validate, so that one run reports every
// problem instead of stopping at the first.

type rawConfig struct {
	Node          *rawNode     `toml:"node"`
	Dataplane     rawDataplane `toml:"dataplane"`
	VRRPInstance  []rawVRRP    `toml:"vrrp_instance"`
	VirtualServer []rawVS      `toml:"virtual_server"`
	Cluster       *rawCluster  `toml:"cluster"`
}

type rawNode struct {
	Name          string `toml:"name"`
	DataDir       string `toml:"data_dir"`
	StatusSocket  string `toml:"status_socket"`
	MetricsListen string `toml:"metrics_listen"`
	LogFormat     string `toml:"log_format"`
	LogLevel      string `toml:"log_level"`
}

type rawDataplane struct {
	Kind string `toml:"kind"`
}

type rawVRRP struct {
	Name             string   `toml:"name"`
	Interface        string   `toml:"interface"`
	VirtualRouterID  *int     `toml:"virtual_router_id"`
	Priority         *int     `toml:"priority"`
	AdvertInt        string   `toml:"advert_int"`
	Version          *int     `toml:"version"`
	Preempt          *bool    `toml:"preempt"`
	PreemptDelay     string   `toml:"preempt_delay"`
	VirtualIPAddress []string `toml:"virtual_ipaddress"`
	UnicastSrcIP     string   `toml:"unicast_src_ip"`
	UnicastPeer      []string `toml:"unicast_peer"`
}

type rawVS struct {
	Name               string          `toml:"name"`
	Address            string          `toml:"address"`
	Protocol           string          `toml:"protocol"`
	Scheduler          string          `toml:"scheduler"`
	Forwarding         string          `toml:"forwarding"`
	PersistenceTimeout string          `toml:"persistence_timeout"`
	RealServer         []rawRS         `toml:"real_server"`
	HealthCheck        *rawHealthCheck `toml:"health_check"`
}

type rawRS struct {
	Address string `toml:"address"`
	Weight  *int   `toml:"weight"`
}

type rawHealthCheck struct {
	Type     string `toml:"type"`
	Path     string `toml:"path"`
	Interval string `toml:"interval"`
	Timeout  string `toml:"timeout"`
	Rise     *int   `toml:"rise"`
	Fall     *int   `toml:"fall"`
}

type rawCluster struct {
	Bind     string   `toml:"bind"`
	RaftBind string   `toml:"raft_bind"`
	Peers    []string `toml:"peers"`
}

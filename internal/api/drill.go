package api

import "time"

// DrillRequest is the body of POST /v1/drill.
type DrillRequest struct {
	// Instance is the VRRP instance to move; "" for the only instance
	// mastered here.
	Instance string `json:"instance,omitempty"`
	// Probe is ADDR (ICMP echo) or ADDR:PORT (TCP connections); "" for
	// ICMP to the instance's first IPv4 address.
	Probe string `json:"probe,omitempty"`
	// Back hands the instance back once the peer has taken it.
	Back bool `json:"back,omitempty"`
	// Hold is how long this director stays backup without Back (a Go
	// duration; default DefaultDrillHold).
	Hold string `json:"hold,omitempty"`
}

// DefaultDrillHold keeps a drilled director backup long enough for the
// operator to look around; --back or a restart ends it sooner.
const DefaultDrillHold = time.Hour

// DrillCheck is one of the checks made before a handover.
type DrillCheck struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// DrillLeg is one handover as measured from this host.
type DrillLeg struct {
	// Gap is the longest time between two answered probes.
	Gap   string  `json:"gap"`
	GapMS float64 `json:"gap_ms"`
	// Unanswered is when the longest gap began and ended, counted from
	// the start of the handover.
	Unanswered string `json:"unanswered"`
	// Took is the time until the new master was seen here.
	Took       string `json:"took"`
	Master     string `json:"master"`                // its address
	MasterNode string `json:"master_node,omitempty"` // its name, from the cluster
}

// DrillResult is what a drill did; status keeps the last few.
type DrillResult struct {
	Number   int       `json:"number"`
	Instance string    `json:"instance"`
	Node     string    `json:"node"`
	Peer     string    `json:"peer,omitempty"`
	Started  time.Time `json:"started"`
	Duration string    `json:"duration"`
	// OK: the peer took over (and, with back, handed back).
	OK bool `json:"ok"`
	// Refused says why the drill did not start; nothing moved.
	Refused string       `json:"refused,omitempty"`
	Error   string       `json:"error,omitempty"`
	Checks  []DrillCheck `json:"checks"`
	Probe   string       `json:"probe,omitempty"`
	// AdvertInt is the instance's advertisement interval, the scale of
	// the gap.
	AdvertInt string    `json:"advert_int"`
	Handover  *DrillLeg `json:"handover,omitempty"`
	Back      *DrillLeg `json:"back,omitempty"`
	// Moved lists the instances (the drilled one and its sync group)
	// that left this director, with their addresses.
	Moved []string `json:"moved,omitempty"`
	Hold  string   `json:"hold,omitempty"`
}

// DrillsStatus is the "drills" section.
type DrillsStatus struct {
	Drills []DrillResult `json:"drills"`
}

// BGPDrillRequest is POST /v1/bgp/drill: withdraw a virtual server's
// address from the routers here, measure how long the routers take to
// move its traffic to the other directors, and announce it again.
type BGPDrillRequest struct {
	Service string `json:"service"`
	// Force drills without seeing another director announce the
	// address (no [cluster] to see it through).
	Force bool `json:"force,omitempty"`
}

// BGPDrillResult is a BGP drill's outcome. The director keeps forwarding
// what still reaches it while the routers move the traffic, so clients
// see no gap unless no other director takes it.
type BGPDrillResult struct {
	Service string       `json:"service"`
	Prefix  string       `json:"prefix"`
	Checks  []DrillCheck `json:"checks"`
	Refused string       `json:"refused,omitempty"`
	// PacketsPerSecond reached this director for the service before the
	// withdrawal.
	PacketsPerSecond uint64 `json:"packets_per_second"`
	// MovedAfter: the last packet arrived this long after the withdrawal
	// (the routers' convergence, seen from here); Moved is false when
	// packets still arrived at the time limit.
	MovedAfter   string `json:"moved_after,omitempty"`
	Moved        bool   `json:"moved"`
	PacketsAfter uint64 `json:"packets_after_withdrawal"`
	BackAfter    string `json:"back_after,omitempty"`
	Back         bool   `json:"back"`
	OK           bool   `json:"ok"`
	Error        string `json:"error,omitempty"`
}

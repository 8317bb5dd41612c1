package daemon

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/vrrp"
)

// vrrpConfigs turns the file's instances into the vrrp package's own type.
func vrrpConfigs(cfg *config.Config) []vrrp.Config {
	out := make([]vrrp.Config, 0, len(cfg.VRRP))
	for _, in := range cfg.VRRP {
		out = append(out, vrrp.Config{
			Name:         in.Name,
			Interface:    in.Interface,
			VRID:         in.VRID,
			Priority:     in.Priority,
			Version:      in.Version,
			AdvertInt:    in.AdvertInt,
			Preempt:      in.Preempt,
			PreemptDelay: in.PreemptDelay,
			VIPs:         in.VIPs,
			UnicastPeers: in.UnicastPeers,
			UnicastSrc:   in.UnicastSrc,
			AuthPass:     in.AuthPass,
			ChecksumAsV2: in.V3ChecksumAsV2,
			Track:        tracks(in.TrackInterfaces),
			GARPRepeat:   in.GARPMasterRepeat,
			GARPDelay:    in.GARPMasterDelay,
			GARPRefresh:  in.GARPMasterRefresh,
		})
	}
	return out
}

func tracks(ts []config.TrackInterface) []vrrp.Track {
	var out []vrrp.Track
	for _, t := range ts {
		out = append(out, vrrp.Track{Interface: t.Interface, Weight: t.Weight})
	}
	return out
}

// VRRPStatus is the "vrrp" section of the status document.
type VRRPStatus struct {
	Instances []vrrp.InstanceStatus `json:"instances"`
	// UnattributedDrops counts, by interface and reason, packets that no
	// configured instance could be charged with (mostly foreign VRIDs).
	UnattributedDrops map[string]map[vrrp.DropReason]uint64 `json:"unattributed_drops,omitempty"`
}

func vrrpStatus(g *vrrp.Group) func() any {
	return func() any {
		return VRRPStatus{Instances: g.Status(), UnattributedDrops: g.UnattributedDrops()}
	}
}

// vrrpCollector exports the group's status as metrics when scraped.
type vrrpCollector struct {
	g                             *vrrp.Group
	state, prio, sent, recv, drop *prometheus.Desc
	trans                         *prometheus.Desc
}

func newVRRPCollector(g *vrrp.Group) *vrrpCollector {
	l := []string{"instance"}
	return &vrrpCollector{
		g:     g,
		state: prometheus.NewDesc("directord_vrrp_state", "VRRP state: 0 init, 1 backup, 2 master, 3 fault.", l, nil),
		prio:  prometheus.NewDesc("directord_vrrp_priority", "Effective VRRP priority.", l, nil),
		sent:  prometheus.NewDesc("directord_vrrp_adverts_sent_total", "VRRP advertisements sent.", l, nil),
		recv:  prometheus.NewDesc("directord_vrrp_adverts_received_total", "VRRP advertisements received and accepted.", l, nil),
		drop:  prometheus.NewDesc("directord_vrrp_drops_total", "VRRP packets dropped, by reason.", []string{"instance", "reason"}, nil),
		trans: prometheus.NewDesc("directord_vrrp_transitions_total", "VRRP state transitions.", l, nil),
	}
}

func (c *vrrpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.prio, c.sent, c.recv, c.drop, c.trans} {
		ch <- d
	}
}

func (c *vrrpCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.g.Status() {
		ch <- prometheus.MustNewConstMetric(c.state, prometheus.GaugeValue, float64(s.State), s.Name)
		ch <- prometheus.MustNewConstMetric(c.prio, prometheus.GaugeValue, float64(s.Priority), s.Name)
		ch <- prometheus.MustNewConstMetric(c.sent, prometheus.CounterValue, float64(s.AdvertsSent), s.Name)
		ch <- prometheus.MustNewConstMetric(c.recv, prometheus.CounterValue, float64(s.AdvertsReceived), s.Name)
		ch <- prometheus.MustNewConstMetric(c.trans, prometheus.CounterValue, float64(s.Transitions), s.Name)
		for reason, n := range s.Drops {
			ch <- prometheus.MustNewConstMetric(c.drop, prometheus.CounterValue, float64(n), s.Name, string(reason))
		}
	}
}

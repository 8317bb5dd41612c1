package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/vrrp"
)

// vrrpConfigs turns the file's instances into the vrrp package's own type.
func vrrpConfigs(cfg *config.Config) []vrrp.Config {
	groupOf := map[string]string{}
	for _, g := range cfg.SyncGroups {
		for _, m := range g.Members {
			groupOf[m] = g.Name
		}
	}
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
			Excluded:     in.Excluded,

			UnicastPeers: in.UnicastPeers,
			UnicastSrc:   in.UnicastSrc,
			AuthPass:     in.AuthPass,
			ChecksumAsV2: in.V3ChecksumAsV2,
			Track:        tracks(in.TrackInterfaces),
			TrackScripts: append(trackScripts(in.TrackScripts), processTracks(in.TrackProcesses)...),
			TrackFiles:   trackFiles(in.TrackFiles),
			SyncGroup:    groupOf[in.Name],
			GARPRepeat:   in.GARPMasterRepeat,
			GARPDelay:    in.GARPMasterDelay,
			GARPRefresh:  in.GARPMasterRefresh,

			InitialMaster:     in.InitialMaster,
			DontTrackPrimary:  in.DontTrackPrimary,
			SkipCheckAdvAddr:  in.SkipCheckAdvAddr,
			LowerPrioNoAdvert: in.LowerPrioNoAdvert,
			InitFail:          in.InitFail,
			NoAccept:          in.NoAccept,

			GARPLowerPrioRepeat: in.GARPLowerPrioRepeat,
			GARPLowerPrioDelay:  in.GARPLowerPrioDelay,

			HigherPrioNoAdvert: !in.HigherPrioSendAdvert,
			VMAC:               in.VMAC,
			VMACXmitBase:       in.VMACXmitBase,
			Routes:             in.Routes,
			Rules:              in.Rules,
		})
	}
	return out
}

func tracks(ts []config.TrackInterface) []vrrp.Track {
	var out []vrrp.Track
	for _, t := range ts {
		out = append(out, vrrp.Track{Interface: t.Interface, Weight: t.Weight, Reverse: t.Reverse})
	}
	return out
}

func trackFiles(ts []config.TrackScript) []vrrp.TrackFile {
	var out []vrrp.TrackFile
	for _, t := range ts {
		out = append(out, vrrp.TrackFile{Name: t.Name, Weight: t.Weight, Reverse: t.Reverse})
	}
	return out
}

func trackScripts(ts []config.TrackScript) []vrrp.TrackScript {
	var out []vrrp.TrackScript
	for _, t := range ts {
		out = append(out, vrrp.TrackScript{Name: t.Name, Weight: t.Weight, Reverse: t.Reverse})
	}
	return out
}

// processTracks are the tracked processes, reported among the scripts.
func processTracks(ts []config.TrackScript) []vrrp.TrackScript {
	var out []vrrp.TrackScript
	for _, t := range ts {
		out = append(out, vrrp.TrackScript{Name: processTrack(t.Name), Weight: t.Weight, Reverse: t.Reverse})
	}
	return out
}

func vrrpStatus(g *vrrp.Group, scripts *scriptRunner) *api.VRRPStatus {
	st := &api.VRRPStatus{Scripts: scripts.Status()}
	for _, in := range g.Status() {
		st.Instances = append(st.Instances, apiInstance(in))
	}
	if st.Instances == nil {
		st.Instances = []api.VRRPInstance{}
	}
	for ifname, drops := range g.UnattributedDrops() {
		if st.UnattributedDrops == nil {
			st.UnattributedDrops = map[string]map[string]uint64{}
		}
		st.UnattributedDrops[ifname] = apiDrops(drops)
	}
	return st
}

// apiInstance is an instance's status as the API has it.
func apiInstance(in vrrp.InstanceStatus) api.VRRPInstance {
	out := api.VRRPInstance{
		Name: in.Name, Interface: in.Interface, VRID: in.VRID, Version: in.Version, VIPs: in.VIPs, Source: in.Source,
		State: in.State.String(), Priority: in.Priority, Master: in.Master, MasterPriority: in.MasterPriority,
		AdvertInt: in.AdvertInt, MasterAdverInt: in.MasterAdverInt,
		AdvertsSent: in.AdvertsSent, AdvertsReceived: in.AdvertsReceived, Transitions: in.Transitions,
		Drops: apiDrops(in.Drops), AddrListMismatches: in.AddrListMismatches, Error: in.Error,
	}
	if t := in.LastTransition; t != nil {
		out.LastTransition = &api.VRRPTransition{From: t.From.String(), To: t.To.String(), Reason: t.Reason, At: t.At, Priority: t.Priority}
	}
	return out
}

func apiDrops(drops map[vrrp.DropReason]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(drops))
	for r, n := range drops {
		out[string(r)] = n
	}
	return out
}

// vrrpCollector exports the group's status as metrics when scraped.
type vrrpCollector struct {
	g                             *vrrp.Group
	state, prio, sent, recv, drop *prometheus.Desc
	trans, mismatch               *prometheus.Desc
}

func newVRRPCollector(g *vrrp.Group) *vrrpCollector {
	l := []string{"vrrp_instance"}
	return &vrrpCollector{
		g:     g,
		state: prometheus.NewDesc("directord_vrrp_state", "VRRP state: 0 init, 1 backup, 2 master, 3 fault.", l, nil),
		prio:  prometheus.NewDesc("directord_vrrp_priority", "Effective VRRP priority.", l, nil),
		sent:  prometheus.NewDesc("directord_vrrp_adverts_sent_total", "VRRP advertisements sent.", l, nil),
		recv:  prometheus.NewDesc("directord_vrrp_adverts_received_total", "VRRP advertisements received and accepted.", l, nil),
		drop:  prometheus.NewDesc("directord_vrrp_drops_total", "VRRP packets dropped, by reason.", []string{"vrrp_instance", "reason"}, nil),
		trans: prometheus.NewDesc("directord_vrrp_transitions_total", "VRRP state transitions.", l, nil),
		mismatch: prometheus.NewDesc("directord_vrrp_addr_list_mismatches_total",
			"VRRPv3 advertisements accepted although they list other virtual addresses than this instance.", l, nil),
	}
}

func (c *vrrpCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.state, c.prio, c.sent, c.recv, c.drop, c.trans, c.mismatch} {
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
		ch <- prometheus.MustNewConstMetric(c.mismatch, prometheus.CounterValue, float64(s.AddrListMismatches), s.Name)
		for reason, n := range s.Drops {
			ch <- prometheus.MustNewConstMetric(c.drop, prometheus.CounterValue, float64(n), s.Name, string(reason))
		}
	}
}

// awaitOtherMaster waits until the named instance, here a backup, hears
// another director as master.
func (d *Daemon) awaitOtherMaster(ctx context.Context, name string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		st := d.instanceStatus(name)
		if st.State == vrrp.Backup && st.Master != "" && st.Master != st.Source {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no other master within %s", wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (d *Daemon) handleFailover(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("instance")
	var req api.FailoverRequest
	if r.ContentLength != 0 {
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			status.WriteError(w, http.StatusBadRequest, fmt.Errorf("bad request: %w", err))
			return
		}
	}
	inst, ok := findInstance(d.config(), name)
	if !ok {
		status.WriteError(w, http.StatusNotFound, fmt.Errorf("no VRRP instance %q", name))
		return
	}
	hold := inst.PreemptDelay
	if req.Hold != "" {
		h, err := time.ParseDuration(req.Hold)
		if err != nil || h < 0 {
			status.WriteError(w, http.StatusBadRequest, fmt.Errorf("hold %q is not a duration", req.Hold))
			return
		}
		hold = h
	}
	if err := d.vrrp.Failover(r.Context(), name, hold); err != nil {
		status.WriteError(w, http.StatusConflict, fmt.Errorf("failover of %s: %w", name, err))
		return
	}
	// A backup hears the resignation and takes over within its skew
	// time; one whose advert interval differs learns ours first. Nobody
	// at all within that means nobody will: take the addresses back
	// rather than leave them unserved for the hold.
	if wait := 3*inst.AdvertInt + time.Second; !req.Force {
		if err := d.awaitOtherMaster(r.Context(), name, wait); err != nil {
			if err := d.vrrp.EndHold(context.WithoutCancel(r.Context()), name); err != nil {
				d.log.Error("failover: taking the instance back failed", "instance", name, "err", err)
			}
			d.log.Warn("planned failover undone: no other director took over", "instance", name, "waited", wait)
			status.WriteError(w, http.StatusConflict, fmt.Errorf("failover of %s: no other director took over within %s, so this one takes the addresses back (--force hands over anyway)", name, wait))
			return
		}
	}
	d.log.Info("planned failover", "instance", name, "hold", hold, "forced", req.Force)
	res := api.FailoverResult{Instance: name, Hold: hold.String(), Now: apiInstance(d.instanceStatus(name))}
	if inst.Preempt {
		res.Warning = fmt.Sprintf("preempt is on: if this director still has the higher priority it takes %s back after %s", name, hold)
	}
	status.WriteJSON(w, http.StatusOK, res)
}

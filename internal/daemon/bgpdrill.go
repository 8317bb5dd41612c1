package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/lvs"
)

// A BGP drill withdraws a virtual server's address here and watches the
// service's packet counter: how long packets still arrive is how long the
// routers took to move the traffic to the other directors. This director
// keeps forwarding meanwhile, so the clients see no gap as long as another
// director announces the address, which the gate checks through the
// cluster's gossip. Then it announces again and waits for traffic to come
// back.

// bgpDrillLimit bounds each wait of the drill.
const bgpDrillLimit = 30 * time.Second

// bgpDrillQuiet is how long no packet must arrive for the traffic to count
// as moved (longer for light traffic).
const bgpDrillQuiet = time.Second

// bgpDrillFacts is what the gate decides on.
type bgpDrillFacts struct {
	Prefix      string
	Announced   string // "" announced here, else why not
	Established int    // sessions up
	Clustered   bool
	Self        string
	Members     []gateMember
	Force       bool
}

// bgpDrillGate: the address is announced here over a session that is up,
// and another director announces it too (seen in the gossip), or --force.
func bgpDrillGate(f bgpDrillFacts) ([]api.DrillCheck, string) {
	var checks []api.DrillCheck
	add := func(name string, ok bool, detail string) {
		checks = append(checks, api.DrillCheck{Name: name, OK: ok, Detail: detail})
	}
	if f.Announced == "" {
		add("announced", true, f.Prefix+" is announced here")
	} else {
		add("announced", false, fmt.Sprintf("%s is not announced here (%s): nothing to withdraw", f.Prefix, f.Announced))
	}
	add("session", f.Established > 0, fmt.Sprintf("%d BGP session(s) established", f.Established))
	switch {
	case f.Clustered:
		var others []string
		for _, m := range f.Members {
			if m.Name != f.Self && m.State == "alive" && m.Told && slices.Contains(m.Info.BGP, f.Prefix) {
				others = append(others, m.Name)
			}
		}
		if len(others) > 0 {
			add("others", true, "also announced by "+strings.Join(others, ", "))
		} else if f.Force {
			add("others", true, "no other director announces "+f.Prefix+" in the gossip; --force")
		} else {
			add("others", false, "no other director announces "+f.Prefix+" (cluster gossip): withdrawing it here would leave it unserved")
		}
	case f.Force:
		add("others", true, "not checked: without [cluster] the other directors cannot be seen (--force)")
	default:
		add("others", false, "without [cluster] directord cannot see whether another director announces "+f.Prefix+
			": check that the routers have other paths, then run with --force")
	}
	return checks, refusal(checks)
}

func (d *Daemon) handleBGPDrill(w http.ResponseWriter, r *http.Request) {
	var req api.BGPDrillRequest
	if !d.startDrill(w, r, &req) {
		return
	}
	defer d.drillMu.Unlock()
	// Finished even if directorctl goes away: left half-way, the address
	// would stay withdrawn here.
	res, err := d.bgpDrill(context.WithoutCancel(r.Context()), req)
	if err != nil {
		status.WriteError(w, http.StatusNotFound, err)
		return
	}
	outcome := "ok"
	switch {
	case res.Refused != "":
		outcome = "refused"
		d.log.Warn("BGP drill refused: nothing withdrawn", "virtual_server", res.Service, "reason", res.Refused)
	case !res.OK:
		outcome = "failed"
		d.log.Error("BGP drill failed", "virtual_server", res.Service, "err", res.Error)
	default:
		d.log.Info("BGP drill done", "virtual_server", res.Service, "prefix", res.Prefix, "moved_after", res.MovedAfter,
			"packets_after_withdrawal", res.PacketsAfter, "back_after", res.BackAfter)
	}
	d.mDrills.WithLabelValues(outcome).Inc()
	status.WriteJSON(w, http.StatusOK, res)
}

func (d *Daemon) bgpDrill(ctx context.Context, req api.BGPDrillRequest) (api.BGPDrillResult, error) {
	res := api.BGPDrillResult{Service: req.Service, Checks: []api.DrillCheck{}}
	cfg := d.config()
	i := slices.IndexFunc(cfg.VirtualServers, func(vs config.VirtualServer) bool {
		return vs.Name == req.Service && vs.Announce == config.AnnounceBGP
	})
	if i < 0 {
		return res, fmt.Errorf("no virtual server %q with announce = \"bgp\"", req.Service)
	}
	vs := cfg.VirtualServers[i]
	res.Prefix = hostPrefix(vs).String()

	f := bgpDrillFacts{Prefix: res.Prefix, Announced: "not decided yet", Force: req.Force}
	st := d.bgp.status(ctx)
	for _, bp := range st.Prefixes {
		if bp.Prefix == res.Prefix {
			f.Announced = bp.Reason
			if bp.Announced {
				f.Announced = ""
			}
		}
	}
	for _, peer := range st.Peers {
		if peer.State == "established" {
			f.Established++
		}
	}
	if d.cluster != nil {
		f.Clustered = true
		f.Self, _, f.Members = d.gateMembers()
	}
	if res.Checks, res.Refused = bgpDrillGate(f); res.Refused != "" {
		return res, nil
	}
	if d.lvs == nil || d.lvs.dp == nil {
		res.Refused = "no data plane here: nothing to measure"
		return res, nil
	}
	key := lvsKey(vs)
	counter := func() (uint64, error) {
		es, err := lvs.ListWithStats(d.lvs.dp)
		if err != nil {
			return 0, err
		}
		for _, e := range es {
			if e.Service.Key == key {
				return e.Stats.PacketsIn, nil
			}
		}
		return 0, fmt.Errorf("%s is not in the data plane", key)
	}
	return d.bgp.drill(ctx, res, counter), nil
}

// drill measures, with the gate passed: traffic before, withdrawal, how
// long packets still arrive, announcement, how long until they arrive
// again.
func (b *bgpManager) drill(ctx context.Context, res api.BGPDrillResult, counter func() (uint64, error)) api.BGPDrillResult {
	fail := func(err error) api.BGPDrillResult {
		res.Error = err.Error()
		return res
	}
	c0, err := counter()
	if err != nil {
		return fail(err)
	}
	time.Sleep(time.Second)
	c1, err := counter()
	if err != nil {
		return fail(err)
	}
	if res.PacketsPerSecond = c1 - c0; c1 <= c0 {
		res.Refused = "no packet for " + res.Service + " reached this director in a second: nothing to measure"
		return res
	}
	if !b.setHold(ctx, res.Service, true, "a drill") {
		return fail(errors.New("the virtual server is gone"))
	}
	// Whatever happens from here, the address is announced again.
	held := true
	defer func() {
		if held {
			b.setHold(ctx, res.Service, false, "the drill's end")
		}
	}()
	// Quiet for a second, or for ten packets' time of light traffic.
	quiet := max(bgpDrillQuiet, 10*time.Second/time.Duration(res.PacketsPerSecond))
	t0 := time.Now()
	last, changed := c1, t0
	for time.Since(changed) < quiet && time.Since(t0) < bgpDrillLimit {
		time.Sleep(20 * time.Millisecond)
		c, err := counter()
		if err != nil {
			return fail(err)
		}
		if c > last {
			last, changed = c, time.Now()
		}
	}
	res.Moved = time.Since(changed) >= quiet
	res.MovedAfter = changed.Sub(t0).Round(time.Millisecond).String()
	res.PacketsAfter = last - c1
	if !res.Moved {
		return fail(fmt.Errorf("packets still arrive %s after the withdrawal: the routers did not move the traffic", bgpDrillLimit))
	}
	b.setHold(ctx, res.Service, false, "the drill")
	held = false
	t1 := time.Now()
	for time.Since(t1) < bgpDrillLimit {
		time.Sleep(20 * time.Millisecond)
		c, err := counter()
		if err != nil {
			return fail(err)
		}
		if c > last {
			res.Back, res.BackAfter = true, time.Since(t1).Round(time.Millisecond).String()
			break
		}
	}
	if !res.Back {
		return fail(fmt.Errorf("no packet came back %s after announcing again", bgpDrillLimit))
	}
	res.OK = true
	return res
}

package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/status"
)

// errDrill makes directorctl exit 1 after a refused or failed drill whose
// result it has printed.
var errDrill = errors.New("the drill did not complete")

func runDrill(ctx context.Context, c *status.Client, o opts) error {
	if len(o.args) != 0 {
		return usageError("usage: directorctl drill [--instance VI] [--probe ADDR|ADDR:PORT] [--back] [--hold D] [--json] | drill --bgp VS [--force] [--json]")
	}
	if o.bgpDrill != "" {
		if o.drill != (api.DrillRequest{}) {
			return usageError("usage: directorctl drill --bgp VS [--force] [--json]: --instance, --probe, --back and --hold are VRRP drills' flags")
		}
		return runBGPDrill(ctx, c, o)
	}
	if o.force {
		return usageError("usage: --force goes with drill --bgp VS")
	}
	var res api.DrillResult
	return postDrill(ctx, c, o, "/v1/drill", o.drill, &res, renderDrill, func(r *api.DrillResult) bool { return r.OK })
}

// postDrill asks the daemon for a drill and prints its result (as JSON,
// or with render); a refused or failed drill is errDrill.
func postDrill[T any](ctx context.Context, c *status.Client, o opts, path string, req any, res *T, render func(io.Writer, *T), ok func(*T) bool) error {
	if err := c.Post(ctx, path, req, res); err != nil {
		return err
	}
	if o.json {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := printJSON(o.out, append(b, '\n')); err != nil {
			return err
		}
	} else {
		render(o.out, res)
	}
	if !ok(res) {
		return errDrill
	}
	return nil
}

func renderDrill(w io.Writer, r *api.DrillResult) {
	fmt.Fprintf(w, "drill %d of %s on %s (advert_int %s)\n", r.Number, r.Instance, r.Node, r.AdvertInt)
	renderChecks(w, r.Checks, 6)
	if r.Refused != "" {
		fmt.Fprintf(w, "refused, nothing moved: %s\n", r.Refused)
		return
	}
	if r.Probe != "" {
		fmt.Fprintf(w, "probe: %s\n", r.Probe)
	}
	leg := func(what string, l *api.DrillLeg) {
		node := ""
		if l.MasterNode != "" {
			node = " (" + l.MasterNode + ")"
		}
		fmt.Fprintf(w, "%s: the probe went unanswered for %s at most; master %s%s seen here after %s\n", what, l.Gap, l.Master, node, l.Took)
	}
	if r.Handover != nil {
		leg("handover", r.Handover)
	}
	for _, m := range r.Moved {
		fmt.Fprintf(w, "moved: %s\n", m)
	}
	if r.Back != nil {
		leg("back", r.Back)
	} else if r.Hold != "" && r.OK {
		fmt.Fprintf(w, "this director stays backup for %s (directorctl drill --back hands back at once)\n", r.Hold)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "FAILED: %s\n", r.Error)
	}
	fmt.Fprintf(w, "took %s\n", r.Duration)
}

// renderChecks lists a drill's gate, the names padded to width.
func renderChecks(w io.Writer, checks []api.DrillCheck, width int) {
	if len(checks) == 0 {
		return
	}
	fmt.Fprintln(w, "checks:")
	for _, c := range checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %-*s %s\n", mark, width, c.Name, c.Detail)
	}
}

// renderDrills lists the drills run here, newest last.
func renderDrills(w io.Writer, ds *api.DrillsStatus) {
	fmt.Fprintf(w, "\ndrills (last %d):\n", len(ds.Drills))
	for _, r := range ds.Drills {
		var what string
		switch {
		case r.Refused != "":
			what = "refused: " + r.Refused
		case !r.OK:
			what = "FAILED: " + r.Error
		default:
			what = fmt.Sprintf("to %s, gap %s", orAddr(r.Handover), r.Handover.Gap)
			if r.Back != nil {
				what += fmt.Sprintf(", back with gap %s", r.Back.Gap)
			}
		}
		fmt.Fprintf(w, "  #%d %s %s: %s\n", r.Number, r.Started.Local().Format(time.DateTime), r.Instance, what)
	}
}

func orAddr(l *api.DrillLeg) string {
	if l.MasterNode != "" {
		return l.MasterNode
	}
	return l.Master
}

func runBGPDrill(ctx context.Context, c *status.Client, o opts) error {
	var res api.BGPDrillResult
	return postDrill(ctx, c, o, "/v1/bgp/drill", api.BGPDrillRequest{Service: o.bgpDrill, Force: o.force}, &res, renderBGPDrill,
		func(r *api.BGPDrillResult) bool { return r.OK })
}

func renderBGPDrill(w io.Writer, r *api.BGPDrillResult) {
	fmt.Fprintf(w, "BGP drill of %s (%s)\n", r.Service, r.Prefix)
	renderChecks(w, r.Checks, 9)
	if r.Refused != "" {
		fmt.Fprintf(w, "refused, nothing withdrawn: %s\n", r.Refused)
		return
	}
	fmt.Fprintf(w, "before: %d packets a second reached this director\n", r.PacketsPerSecond)
	if r.MovedAfter != "" {
		fmt.Fprintf(w, "withdrawn: the routers moved the traffic away after %s (%d packets arrived meanwhile, all forwarded)\n", r.MovedAfter, r.PacketsAfter)
	}
	if r.BackAfter != "" {
		fmt.Fprintf(w, "announced again: traffic back after %s\n", r.BackAfter)
	}
	if r.Error != "" {
		fmt.Fprintf(w, "FAILED: %s\n", r.Error)
	}
}

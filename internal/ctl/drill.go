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
		return usageError("usage: directorctl drill [--instance VI] [--probe ADDR|ADDR:PORT] [--back] [--hold D] [--json]")
	}
	var res api.DrillResult
	if err := c.Post(ctx, "/v1/drill", o.drill, &res); err != nil {
		return err
	}
	if o.json {
		b, _ := json.MarshalIndent(res, "", "  ")
		if err := printJSON(o.out, append(b, '\n')); err != nil {
			return err
		}
	} else {
		renderDrill(o.out, &res)
	}
	if !res.OK {
		return errDrill
	}
	return nil
}

func renderDrill(w io.Writer, r *api.DrillResult) {
	fmt.Fprintf(w, "drill %d of %s on %s (advert_int %s)\n", r.Number, r.Instance, r.Node, r.AdvertInt)
	if len(r.Checks) > 0 {
		fmt.Fprintln(w, "checks:")
		for _, c := range r.Checks {
			mark := "ok  "
			if !c.OK {
				mark = "FAIL"
			}
			fmt.Fprintf(w, "  %s %-6s %s\n", mark, c.Name, c.Detail)
		}
	}
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

package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/status"
)

// runBGP shows the BGP sessions and announcements, or withdraws a
// virtual server's address for maintenance (announce undoes it).
func runBGP(ctx context.Context, c *status.Client, o opts) error {
	var st api.BGPStatus
	switch {
	case len(o.args) == 2 && (o.args[0] == "withdraw" || o.args[0] == "announce"):
		if err := c.Post(ctx, "/v1/bgp/"+o.args[0], api.BGPHold{Service: o.args[1]}, &st); err != nil {
			return err
		}
		if o.json {
			return json.NewEncoder(o.out).Encode(st)
		}
		fmt.Fprintf(o.out, "%s: %s by hand\n", o.args[1], map[string]string{"withdraw": "withdrawn", "announce": "announced again"}[o.args[0]])
		renderBGP(o.out, &st, o.now())
		return nil
	case len(o.args) > 0:
		return usageError("usage: directorctl bgp [withdraw VS | announce VS]")
	}
	raw, err := c.Raw(ctx, "/v1/status/bgp")
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(o.out, raw)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("decode bgp status: %w", err)
	}
	renderBGP(o.out, &st, o.now())
	return nil
}

func renderBGP(w io.Writer, st *api.BGPStatus, now time.Time) {
	fmt.Fprintf(w, "BGP AS %d, router id %s", st.LocalAS, st.RouterID)
	if st.ShuttingDown {
		fmt.Fprint(w, ", shutting down (routes marked GRACEFUL_SHUTDOWN)")
	}
	fmt.Fprintln(w)
	if st.Error != "" {
		fmt.Fprintln(w, "error:", st.Error)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NEIGHBOR\tAS\tSTATE\tUP FOR")
	for _, p := range st.Peers {
		up := "-"
		if !p.Since.IsZero() {
			up = now.Sub(p.Since).Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", p.Address, p.PeerAS, p.State, up)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tANNOUNCED\tVIRTUAL SERVERS\tWHY NOT")
	for _, p := range st.Prefixes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", p.Prefix, map[bool]string{true: "yes", false: "NO"}[p.Announced], strings.Join(p.Services, ","), p.Reason)
	}
	tw.Flush()
}

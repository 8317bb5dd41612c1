package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
)

// runApply makes a file's virtual servers the cluster's table.
func runApply(ctx context.Context, c *status.Client, o opts) error {
	if o.file == "" || len(o.args) > 0 {
		return fmt.Errorf("usage: directorctl apply -f FILE [--dry-run]")
	}
	cfg, err := config.Load(o.file)
	if err != nil {
		return err
	}
	req := api.ClusterRequest{Op: "apply", Services: config.Documents(cfg.VirtualServers), DryRun: o.dryRun}
	var res api.ClusterResult
	if err := c.Post(ctx, "/v1/cluster", req, &res); err != nil {
		return err
	}
	if o.json {
		b, _ := json.MarshalIndent(res, "", "  ")
		return printJSON(o.out, append(b, '\n'))
	}
	switch {
	case len(res.Changed) == 0:
		fmt.Fprintln(o.out, "no change: the cluster's virtual servers are the file's")
	case o.dryRun:
		fmt.Fprintf(o.out, "would change %d virtual server(s): %s\n", len(res.Changed), strings.Join(res.Changed, ", "))
	default:
		fmt.Fprintf(o.out, "committed: %d virtual server(s) changed: %s\n", len(res.Changed), strings.Join(res.Changed, ", "))
	}
	return nil
}

// runRS changes a real server by hand: drain, enable, disable, weight.
func runRS(ctx context.Context, c *status.Client, o opts) error {
	usage := fmt.Errorf("usage: directorctl rs drain|enable|disable VS RS | rs weight VS RS N")
	if len(o.args) < 3 {
		return usage
	}
	req := api.ClusterRequest{Op: "rs." + o.args[0], Service: o.args[1], Real: o.args[2]}
	switch o.args[0] {
	case "drain", "enable", "disable":
		if len(o.args) != 3 {
			return usage
		}
	case "weight":
		if len(o.args) != 4 {
			return usage
		}
		w, err := strconv.Atoi(o.args[3])
		if err != nil {
			return fmt.Errorf("weight %q is not a number", o.args[3])
		}
		req.Weight = w
	default:
		return usage
	}
	if err := c.Post(ctx, "/v1/cluster", req, &api.ClusterResult{}); err != nil {
		return err
	}
	fmt.Fprintf(o.out, "committed: %s %s %s\n", o.args[0], o.args[1], o.args[2])
	return nil
}

// runVS adds (or replaces) one virtual server from a file, or removes one.
func runVS(ctx context.Context, c *status.Client, o opts) error {
	usage := fmt.Errorf("usage: directorctl vs add -f FILE VS | vs del VS")
	switch {
	case len(o.args) == 2 && o.args[0] == "del":
		if err := c.Post(ctx, "/v1/cluster", api.ClusterRequest{Op: "vs.del", Service: o.args[1]}, &api.ClusterResult{}); err != nil {
			return err
		}
		fmt.Fprintf(o.out, "committed: %s removed\n", o.args[1])
		return nil
	case len(o.args) == 2 && o.args[0] == "add" && o.file != "":
		cfg, err := config.Load(o.file)
		if err != nil {
			return err
		}
		docs := config.Documents(cfg.VirtualServers)
		doc, ok := docs[o.args[1]]
		if !ok {
			return fmt.Errorf("%s has no virtual server %q", o.file, o.args[1])
		}
		if err := c.Post(ctx, "/v1/cluster", api.ClusterRequest{Op: "vs.put", Service: o.args[1], Document: doc}, &api.ClusterResult{}); err != nil {
			return err
		}
		fmt.Fprintf(o.out, "committed: %s added or replaced\n", o.args[1])
		return nil
	}
	return usage
}

func runCluster(ctx context.Context, c *status.Client, o opts) error {
	if len(o.args) == 1 && o.args[0] == "leave" {
		var res api.LeaveResult
		if err := c.Post(ctx, "/v1/cluster/leave", struct{}{}, &res); err != nil {
			return err
		}
		fmt.Fprintf(o.out, "%s left the cluster: stop its directord, or remove [cluster] from its file\n", res.Left)
		return nil
	}
	if len(o.args) > 0 {
		return fmt.Errorf("usage: directorctl cluster [leave]")
	}
	raw, err := c.Raw(ctx, "/v1/status/cluster")
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(o.out, raw)
	}
	var st api.ClusterStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("decode cluster status: %w", err)
	}
	return renderCluster(o.out, &st)
}

// renderCluster prints the cluster section for people.
func renderCluster(w io.Writer, st *api.ClusterStatus) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "node\t%s (%s), raft %s\n", st.ID, st.Role, st.RaftState)
	fmt.Fprintf(tw, "leader\t%s\n", orNone(st.Leader))
	fmt.Fprintf(tw, "term\t%s, commit index %s, applied %d, last contact %s\n", st.Term, st.CommitIndex, st.Applied, st.LastContact)
	fmt.Fprintf(tw, "table\tindex %d, seeded %v\n", st.StateIndex, st.Seeded)
	fmt.Fprintf(tw, "security\traft TLS %v, gossip encryption %s\n", st.RaftTLS, st.Gossip)
	for _, name := range slices.Sorted(maps.Keys(st.Refused)) {
		fmt.Fprintf(tw, "refused\t%s: %s\n", name, st.Refused[name])
	}
	if len(st.FileDiffers) > 0 {
		fmt.Fprintf(tw, "file differs\t%s (the cluster's are in force; directorctl apply -f FILE)\n", strings.Join(st.FileDiffers, ", "))
	}
	tw.Flush()
	fmt.Fprintln(w, "\nMEMBERS")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tSTATE\tGOSSIP\tRAFT")
	for _, m := range st.Members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, m.Role, m.State, m.Gossip, m.Raft)
	}
	return tw.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

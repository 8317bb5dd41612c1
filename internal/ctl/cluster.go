package ctl

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/directord/directord/cluster/pki"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
)

// runApply makes a file's virtual servers the cluster's table.
func runApply(ctx context.Context, c *status.Client, o opts) error {
	if o.file == "" || len(o.args) > 0 {
		return usageError("usage: directorctl apply -f FILE [--dry-run]")
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
	usage := usageError("usage: directorctl rs drain|enable|disable VS RS | rs weight VS RS N")
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
	usage := usageError("usage: directorctl vs add -f FILE VS | vs del VS")
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
	switch {
	case len(o.args) >= 1 && o.args[0] == "certs":
		return runCerts(o)
	case len(o.args) == 1 && (o.args[0] == "leave" || o.args[0] == "rejoin"):
		var res api.LeaveResult
		if err := c.Post(ctx, "/v1/cluster/"+o.args[0], struct{}{}, &res); err != nil {
			return err
		}
		done := map[string]string{
			"leave":  "left the cluster: no leader will add it back; its VRRP instances are held in FAULT until directorctl cluster rejoin",
			"rejoin": "rejoined the cluster: the leader adds it back as a voter",
		}
		fmt.Fprintf(o.out, "%s %s\n", res.Left, done[o.args[0]])
		return nil
	case len(o.args) > 0:
		return usageError("usage: directorctl cluster [leave | rejoin | certs --out DIR NAME=IP...]")
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

// runCerts writes a CA (or uses the one in --out) and a key pair per
// member, plus a fresh gossip key, and prints each member's lines.
func runCerts(o opts) error {
	usage := usageError("usage: directorctl cluster certs --out DIR NAME=IP[,IP]... (every member: directors and witness)")
	if o.outDir == "" || len(o.args) < 2 {
		return usage
	}
	dir, err := filepath.Abs(o.outDir)
	if err != nil {
		return err
	}
	var members []pki.Member
	var names []string
	for _, a := range o.args[1:] {
		name, ips, ok := strings.Cut(a, "=")
		if !ok || name == "" {
			return fmt.Errorf("%q: give NAME=IP, the member's [node] name and the address its peers reach it at", a)
		}
		m := pki.Member{Name: name}
		for _, s := range strings.Split(ips, ",") {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("%q: %q is not an IP address", a, s)
			}
			m.IPs = append(m.IPs, ip)
		}
		if slices.Contains(names, name) {
			return fmt.Errorf("%s is given twice", name)
		}
		names = append(names, name)
		members = append(members, m)
	}
	const validity = 5 * 365 * 24 * time.Hour
	ca, err := pki.LoadCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"))
	reused := err == nil
	if errors.Is(err, os.ErrNotExist) {
		ca, err = pki.NewCA("directord cluster CA", validity)
	}
	if err != nil {
		return err
	}
	files, err := pki.WriteAll(dir, ca, members, validity)
	if err != nil {
		return fmt.Errorf("write %s: %w", dir, err)
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	if reused {
		fmt.Fprintf(o.out, "# signed with the CA in %s\n", dir)
	} else {
		fmt.Fprintf(o.out, "# a new CA: %s (its key %s stays on this host, off the directors)\n", files.CA, files.CAKey)
	}
	fmt.Fprintf(o.out, "# copy each member its own pair and the CA certificate, and paste its lines into its [cluster]\n")
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = strconv.Quote(n)
	}
	for _, m := range members {
		fmt.Fprintf(o.out, "\n# %s\nmembers = [%s]\nencrypt_key = %q\ntls_cert = %q\ntls_key = %q\ntls_ca = %q\n",
			m.Name, strings.Join(quoted, ", "), base64.StdEncoding.EncodeToString(key), files.Cert[m.Name], files.Key[m.Name], files.CA)
	}
	return nil
}

// renderCluster prints the cluster section for people.
func renderCluster(w io.Writer, st *api.ClusterStatus) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if st.Error != "" {
		fmt.Fprintf(tw, "node\t%s\n", st.ID)
		fmt.Fprintf(tw, "error\tthe cluster is not running: %s (VRRP and the load balancer run on the last committed table)\n", st.Error)
		return tw.Flush()
	}
	fmt.Fprintf(tw, "node\t%s (%s), raft %s\n", st.ID, st.Role, st.RaftState)
	if st.Left {
		fmt.Fprintf(tw, "left\tthis node left the cluster: not a voter, VRRP held in FAULT (directorctl cluster rejoin)\n")
	}
	for _, c := range st.Conflicts {
		fmt.Fprintf(tw, "conflict\t%s\n", c)
	}
	fmt.Fprintf(tw, "leader\t%s\n", orNone(st.Leader))
	fmt.Fprintf(tw, "term\t%s, commit index %s, applied %d, last contact %s\n", st.Term, st.CommitIndex, st.Applied, st.LastContact)
	fmt.Fprintf(tw, "table\tcommitted index %d, programmed %d, seeded %v, cluster %s\n", st.StateIndex, st.ProgrammedIndex, st.Seeded, orNone(st.ClusterID))
	if st.TableError != "" {
		fmt.Fprintf(tw, "table error\t%s\n", st.TableError)
	}
	if st.CacheError != "" {
		fmt.Fprintf(tw, "cache error\t%s\n", st.CacheError)
	}
	fmt.Fprintf(tw, "security\traft TLS %v, gossip encryption %s, refused connections %d\n", st.RaftTLS, st.Gossip, st.RefusedConnections)
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

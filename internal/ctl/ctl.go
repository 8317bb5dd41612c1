// Package ctl is directorctl: commands that read and steer a running
// directord through its status socket.
package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/status"
)

const usage = `usage: directorctl [--socket PATH] COMMAND [ARGS] [--json]
       directorctl --version | --help | COMMAND --help

exit status: 0 done, 1 refused or failed, 2 usage, 3 directord not reachable

commands:
  status                       what the daemon is doing (--json: the raw status document)
  reload                       re-read the configuration file, like SIGHUP, and show the result
  config                       print the running configuration as JSON
  lvs [--rate]                 the load balancer's table with counters, like ipvsadm -Ln --stats
                               (--rate: per second, like ipvsadm -Ln --rate)
  lvs save                     the table as ipvsadm -S -n prints it (to compare with, or to
                               load with ipvsadm -R)
  lvs --conns [VIP:PORT|MARK]  the connections, as ipvsadm -Lnc (conntrack on nftables)
  lvs --persistence [VIP:PORT|MARK]
                               the persistence templates: clients pinned to real servers
  lvs --zero                   set the counters to zero, as ipvsadm -Z
  cluster                      members, Raft role, leader, term, indexes
  cluster leave                retire this node: the leader takes it out of Raft for good (its
                               VRRP instances are held in FAULT until it rejoins)
  cluster rejoin               undo cluster leave
  cluster certs --out DIR NAME=IP[,IP]...
                               write a CA (or use DIR's) and a key pair per member, and a gossip
                               key, and print each member's [cluster] lines; no daemon needed
  apply -f FILE [--dry-run]    make FILE's virtual servers the cluster's table (any node)
  rs drain|enable|disable VS RS  a real server by hand, on every director
  rs weight VS RS N            set a real server's weight by hand, on every director
  vs add -f FILE VS            add or replace one virtual server of FILE in the cluster's table
  vs del VS                    remove a virtual server from the cluster's table
  failover INSTANCE [--hold D] [--force]
                               planned handover of a VRRP instance mastered here: send
                               priority 0 and stay backup for D (default: its preempt_delay);
                               when no other director takes over, take it back and fail
                               (--force: hand over anyway)
  drill --bgp VS [--force]     withdraw VS's address here (BGP), measure how long the routers take
                               to move its traffic to the other directors (this one forwards
                               meanwhile), announce it again; refused unless another director
                               announces it (cluster gossip) or --force
  drill [--instance VI] [--probe ADDR|ADDR:PORT] [--back] [--hold D]
                               failover drill from this master: check that the peer is ready
                               (VRRP backup, Raft caught up, same table, sync connected), hand
                               over, measure the gap from here; --back hands back at once,
                               else this director stays backup for D (default 1h)
  bgp                          the BGP sessions with the routers, and each address announced
                               (or why not)
  bgp withdraw|announce VS     take a virtual server's address back from the routers for
                               maintenance, or announce it again
  convert [--config-id ID] FILE
                               print a keepalived.conf (with its includes) as directord's
                               TOML; what has no equivalent, or only an approximate one, goes
                               to stderr as FILE:LINE: keyword: what happened. Exit 0 when the
                               printed file passes directord -t, 1 when it needs work (no
                               daemon needed; --config-id: keepalived's -i for @ID lines)
  completion bash|zsh          print the shell's completion script (no daemon needed)
`

// Usage is directorctl's usage text (its manual page is made of it).
func Usage() string { return usage }

type command struct {
	run func(ctx context.Context, c *status.Client, o opts) error
	// flags are the command's own flags (besides --socket).
	flags []string
}

// Exit codes: 0 done, 1 refused or failed, 2 usage, 3 directord not
// reachable.
const (
	exitFailed     = 1
	exitUsage      = 2
	exitNotRunning = 3
)

// usageErr is a command used wrongly (exit 2).
type usageErr string

func (e usageErr) Error() string { return string(e) }

func usageError(msg string) error { return usageErr(msg) }

type opts struct {
	json        bool
	now         func() time.Time // the clock for ages in what is printed
	dryRun      bool
	file        string
	outDir      string
	rate        bool
	conns       bool
	persistence bool
	zero        bool
	hold        string
	force       bool
	drill       api.DrillRequest
	bgpDrill    string // drill --bgp VS
	configID    string
	args        []string
	out         io.Writer
	errOut      io.Writer
}

var commands = map[string]command{
	"status":   {runStatus, []string{"json"}},
	"reload":   {runReload, []string{"json"}},
	"config":   {runConfig, nil},
	"failover": {runFailover, []string{"hold", "force", "json"}},
	"lvs":      {runLVS, []string{"json", "rate", "conns", "persistence", "zero"}},
	"cluster":  {runCluster, []string{"json", "out"}},
	"apply":    {runApply, []string{"f", "dry-run", "json"}},
	"rs":       {runRS, nil},
	"vs":       {runVS, []string{"f"}},
	"drill":    {runDrill, []string{"instance", "probe", "back", "hold", "bgp", "force", "json"}},
	"convert":  {runConvert, []string{"config-id"}},
	"bgp":      {runBGP, []string{"json"}},
}

// Main runs directorctl with args and returns its exit code.
func Main(version string, args []string, stdout, stderr io.Writer) int {
	return run(args, stdout, stderr, env{now: time.Now, version: version})
}

// env is what a run depends on besides its arguments.
type env struct {
	now     func() time.Time // the clock for ages in what is printed
	version string
}

func run(args []string, stdout, stderr io.Writer, e env) int {
	global := flag.NewFlagSet("directorctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	socket := global.String("socket", config.DefaultStatusSocket, "status socket `path`")
	version := global.Bool("version", false, "print the version")
	if err := global.Parse(args); errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage)
		return 0
	} else if err != nil {
		fmt.Fprintf(stderr, "directorctl: %v\n%s", err, usage)
		return exitUsage
	}
	if *version {
		fmt.Fprintf(stdout, "directorctl %s\n", e.version)
		return 0
	}
	if global.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	name := global.Arg(0)
	if name == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if name == "completion" {
		script, err := completion(global.Arg(1))
		if err != nil || global.NArg() != 2 {
			fmt.Fprintln(stderr, "usage: directorctl completion bash|zsh")
			return exitUsage
		}
		fmt.Fprint(stdout, script)
		return 0
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "directorctl: unknown command %q\n%s", name, usage)
		return exitUsage
	}
	sub := flag.NewFlagSet("directorctl "+name, flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	sub.StringVar(socket, "socket", *socket, "status socket `path`")
	asJSON := sub.Bool("json", false, "print JSON")
	hold := sub.String("hold", "", "failover: how long to stay backup (Go duration)")
	force := sub.Bool("force", false, "failover: hand over even when no other director takes over; drill --bgp: withdraw without seeing another director announce the address")
	bgpVS := sub.String("bgp", "", "drill: the virtual server (announce = \"bgp\") whose address to withdraw here, measure and announce again")
	file := sub.String("f", "", "apply: the configuration `file` whose virtual servers to apply")
	dryRun := sub.Bool("dry-run", false, "apply: show what would change")
	instance := sub.String("instance", "", "drill: the VRRP instance (default: the one mastered here)")
	probeAt := sub.String("probe", "", "drill: ADDR to ping or ADDR:PORT to connect to (default: the instance's first IPv4 address)")
	back := sub.Bool("back", false, "drill: hand back once the peer has taken over")
	outDir := sub.String("out", "", "cluster certs: the `dir`ectory to write the CA and the key pairs into")
	rate := sub.Bool("rate", false, "lvs: rates per second (connections, packets, bytes) instead of totals, as ipvsadm -Ln --rate")
	conns := sub.Bool("conns", false, "lvs: the connections, as ipvsadm -Lnc (IPVS's table, or conntrack on nftables)")
	persistence := sub.Bool("persistence", false, "lvs: the persistence templates: which client is pinned to which real server")
	zero := sub.Bool("zero", false, "lvs: set the counters to zero, as ipvsadm -Z")
	configID := sub.String("config-id", "", "convert: the `id` @ID lines are for (keepalived's -i; default: the host's short name)")
	// Flags may come before or after the positional arguments.
	var positional []string
	rest := global.Args()[1:]
	for {
		if err := sub.Parse(rest); errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, commandHelp(name, cmd, sub))
			return 0
		} else if err != nil {
			fmt.Fprintf(stderr, "directorctl %s: %v\n%s", name, err, commandHelp(name, cmd, sub))
			return exitUsage
		}
		if sub.NArg() == 0 {
			break
		}
		positional = append(positional, sub.Arg(0))
		rest = sub.Args()[1:]
	}
	// Each command takes only its own flags: a flag of another is a
	// mistake, not something to ignore.
	var foreign []string
	sub.Visit(func(f *flag.Flag) {
		if f.Name != "socket" && !slices.Contains(cmd.flags, f.Name) {
			foreign = append(foreign, "--"+f.Name)
		}
	})
	if len(foreign) > 0 {
		fmt.Fprintf(stderr, "directorctl %s: %s: not a flag of %s\n%s", name, strings.Join(foreign, ", "), name, commandHelp(name, cmd, sub))
		return exitUsage
	}
	timeout := 30 * time.Second
	if name == "drill" {
		timeout = 3 * time.Minute // two handovers at long advert intervals
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	o := opts{json: *asJSON, now: e.now, hold: *hold, force: *force, file: *file, outDir: *outDir, dryRun: *dryRun, rate: *rate, conns: *conns, persistence: *persistence, zero: *zero, configID: *configID, args: positional, out: stdout, errOut: stderr,
		drill: api.DrillRequest{Instance: *instance, Probe: *probeAt, Back: *back, Hold: *hold}, bgpDrill: *bgpVS}
	if err := cmd.run(ctx, status.NewClient(*socket), o); err != nil {
		fmt.Fprintln(stderr, "directorctl:", err)
		var ue usageErr
		switch {
		case errors.As(err, &ue):
			return exitUsage
		case errors.Is(err, status.ErrNotRunning):
			return exitNotRunning
		}
		return exitFailed
	}
	return 0
}

// commandHelp is a command's lines of the usage and its own flags.
func commandHelp(name string, cmd command, fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage of directorctl %s:\n", name)
	lines := strings.Split(usage, "\n")
	for i, l := range lines {
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			b.WriteString(l + "\n")
			// Continuation lines are indented further than commands.
			for _, c := range lines[i+1:] {
				if !strings.HasPrefix(c, "                               ") {
					break
				}
				b.WriteString(c + "\n")
			}
		}
	}
	if len(cmd.flags) > 0 {
		b.WriteString("flags:\n")
		for _, n := range cmd.flags {
			if f := fs.Lookup(n); f != nil {
				fmt.Fprintf(&b, "  --%s  %s\n", n, f.Usage)
			}
		}
	}
	b.WriteString("  --socket PATH  the status socket\n")
	return b.String()
}

// printJSON prints a JSON document indented, ending with a newline.
func printJSON(w io.Writer, raw []byte) error {
	var b bytes.Buffer
	if err := json.Indent(&b, bytes.TrimSpace(raw), "", "  "); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}

func runConfig(ctx context.Context, c *status.Client, o opts) error {
	raw, err := c.Raw(ctx, "/v1/config")
	if err != nil {
		return err
	}
	return printJSON(o.out, raw)
}

func runFailover(ctx context.Context, c *status.Client, o opts) error {
	if len(o.args) != 1 {
		return usageError("usage: directorctl failover INSTANCE [--hold DURATION] [--force]")
	}
	var res api.FailoverResult
	if err := c.Post(ctx, "/v1/vrrp/"+o.args[0]+"/failover", api.FailoverRequest{Hold: o.hold, Force: o.force}, &res); err != nil {
		return err
	}
	if o.json {
		b, _ := json.MarshalIndent(res, "", "  ")
		return printJSON(o.out, append(b, '\n'))
	}
	fmt.Fprintf(o.out, "%s: sent priority 0 and is now %s here; staying backup for %s\n", res.Instance, res.Now.State, res.Hold)
	if res.Warning != "" {
		fmt.Fprintln(o.out, "note:", res.Warning)
	}
	return nil
}

func runReload(ctx context.Context, c *status.Client, o opts) error {
	var res api.ReloadResult
	if err := c.Post(ctx, "/v1/reload", nil, &res); err != nil {
		return err
	}
	if o.json {
		b, _ := json.MarshalIndent(res, "", "  ")
		return printJSON(o.out, append(b, '\n'))
	}
	fmt.Fprintln(o.out, "reloaded:", describeChanges(res.Changes))
	return nil
}

func describeChanges(c *config.Changes) string {
	if c == nil || c.Empty() {
		return "no change"
	}
	var parts []string
	for _, d := range []struct {
		what  string
		delta config.Delta
	}{{"vrrp_instance", c.VRRP}, {"virtual_server", c.VirtualServers}} {
		for _, e := range []struct {
			verb  string
			names []string
		}{{"added", d.delta.Added}, {"removed", d.delta.Removed}, {"changed", d.delta.Changed}} {
			if len(e.names) > 0 {
				parts = append(parts, fmt.Sprintf("%s %s %s", d.what, e.verb, strings.Join(e.names, ",")))
			}
		}
	}
	if len(c.Live) > 0 {
		parts = append(parts, "applied "+strings.Join(c.Live, ","))
	}
	if len(c.Restart) > 0 {
		parts = append(parts, "needs a restart for "+strings.Join(c.Restart, ","))
	}
	return strings.Join(parts, "; ")
}

// statusDoc is the part of the status document directorctl renders itself;
// sections it does not know are listed by name.
type statusDoc struct {
	api.Document
	raw map[string]json.RawMessage
}

func runStatus(ctx context.Context, c *status.Client, o opts) error {
	raw, err := c.Raw(ctx, "/v1/status")
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(o.out, raw)
	}
	var doc statusDoc
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("decode status: %w", err)
	}
	if err := json.Unmarshal(raw, &doc.raw); err != nil {
		return fmt.Errorf("decode status: %w", err)
	}
	if doc.APIVersion != api.Version {
		return fmt.Errorf("the daemon speaks status API v%d, this directorctl v%d: use the directorctl of the same release", doc.APIVersion, api.Version)
	}
	renderStatus(o.out, &doc, o.now())
	return nil
}

// renderStatus prints the status document for people; now is when it was
// read, for the ages it shows.
func renderStatus(w io.Writer, doc *statusDoc, now time.Time) {
	var n api.NodeStatus
	var cs api.ConfigStatus
	if doc.Node != nil {
		n = *doc.Node
	}
	if doc.Config != nil {
		cs = *doc.Config
	}
	fmt.Fprintf(w, "directord %s  pid %d  version %s  up %s\n\n", n.Name, n.PID, n.Version, n.Uptime)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "config\t%s (generation %d, loaded %s)\n", cs.File, cs.Generation, cs.LoadedAt.Local().Format(time.DateTime))
	fmt.Fprintf(tw, "reloads\t%d ok, %d failed\n", cs.ReloadsOK, cs.ReloadsFailed)
	if lr := cs.LastReload; lr != nil {
		if lr.OK {
			fmt.Fprintf(tw, "last reload\t%s ok: %s\n", lr.At.Local().Format(time.TimeOnly), describeChanges(lr.Changes))
		} else {
			fmt.Fprintf(tw, "last reload\t%s REJECTED (running configuration unchanged):\n", lr.At.Local().Format(time.TimeOnly))
			for _, p := range lr.Problems {
				fmt.Fprintf(tw, "\t  %s\n", p)
			}
		}
	}
	fmt.Fprintf(tw, "dataplane\t%s\n", cs.Dataplane)
	fmt.Fprintf(tw, "configured\t%d vrrp instance(s), %d virtual server(s), cluster %s\n",
		cs.VRRPInstances, cs.VirtualServers, map[bool]string{true: "configured", false: "none"}[cs.Cluster])
	tw.Flush()

	if doc.VRRP != nil && len(doc.VRRP.Instances) > 0 {
		renderVRRP(w, doc.VRRP)
	}

	if doc.LVS != nil {
		fmt.Fprintf(w, "\nload balancer: %s, %d virtual service(s) in the kernel (directorctl lvs)\n", doc.LVS.Dataplane, len(doc.LVS.Services))
	}

	if doc.Health != nil && len(doc.Health.Checks) > 0 {
		renderHealth(w, doc.Health, now)
	}

	if doc.Drills != nil && len(doc.Drills.Drills) > 0 {
		renderDrills(w, doc.Drills)
	}

	known := []string{"api_version", "node", "config", "vrrp", "lvs", "health", "drills"}
	var other []string
	for k := range doc.raw {
		if !slices.Contains(known, k) {
			other = append(other, k)
		}
	}
	if len(other) > 0 {
		sort.Strings(other)
		fmt.Fprintf(w, "\nother sections (see --json): %s\n", strings.Join(other, ", "))
	}
}

func renderVRRP(w io.Writer, v *api.VRRPStatus) {
	fmt.Fprintln(w, "\nVRRP")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tINTERFACE\tVRID\tSTATE\tPRIO\tMASTER\tADVERT\tSENT\tRECV\tDROPS\tLAST TRANSITION")
	for _, in := range v.Instances {
		master := in.Master
		if master == "" {
			master = "-"
		} else if in.State == api.StateMaster {
			master += " (us)"
		}
		var drops uint64
		var reasons []string
		for r, n := range in.Drops {
			drops += n
			reasons = append(reasons, fmt.Sprintf("%s=%d", r, n))
		}
		sort.Strings(reasons)
		dropText := fmt.Sprint(drops)
		if len(reasons) > 0 {
			dropText += " (" + strings.Join(reasons, ",") + ")"
		}
		last := "-"
		if t := in.LastTransition; t != nil {
			last = fmt.Sprintf("%s %s->%s: %s", t.At.Local().Format(time.TimeOnly), t.From, t.To, t.Reason)
		}
		interval := in.MasterAdverInt
		if interval == 0 {
			interval = in.AdvertInt
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\t%d\t%d\t%s\t%s\n", in.Name, in.Interface, in.VRID, in.State,
			in.Priority, master, interval, in.AdvertsSent, in.AdvertsReceived, dropText, last)
		if in.Error != "" {
			fmt.Fprintf(tw, "\t  error: %s\n", in.Error)
		}
	}
	tw.Flush()
	if len(v.Scripts) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VRRP_SCRIPT\tVERDICT\tRUNS\tLAST RESULT")
	for _, sc := range v.Scripts {
		verdict := "passing"
		if !sc.OK {
			verdict = "FAILED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", sc.Name, verdict, sc.Runs, sc.LastResult)
	}
	tw.Flush()
}

func renderHealth(w io.Writer, h *api.HealthStatus, now time.Time) {
	fmt.Fprintln(w, "\nHEALTH CHECKS")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tREAL SERVER\tSTATE\tFOR\tCHECK\tLAST\tLATENCY\tTRANSITIONS\tLAST ERROR")
	for _, c := range h.Checks {
		state := "up"
		if !c.Up {
			state = "DOWN"
		}
		if c.Up && c.Weight >= 0 {
			state = fmt.Sprintf("up (weight %d)", c.Weight)
		}
		last := "-"
		if !c.LastAt.IsZero() {
			last = map[bool]string{true: "ok", false: "failed"}[c.LastOK]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", c.ID.Service, c.ID.Real, state,
			now.Sub(c.Since).Round(time.Second), c.Check, last, c.Latency, c.Transitions, c.LastError)
	}
	tw.Flush()
}

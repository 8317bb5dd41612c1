package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/status"
)

func runLVS(ctx context.Context, c *status.Client, o opts) error {
	if o.conns || o.persistence {
		return runFlows(ctx, c, o)
	}
	if o.zero {
		if err := c.Post(ctx, "/v1/lvs/zero", nil, &struct{}{}); err != nil {
			return err
		}
		fmt.Fprintln(o.out, "counters zeroed")
		return nil
	}
	raw, err := c.Raw(ctx, "/v1/status/lvs")
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(o.out, raw)
	}
	var st api.LVSStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("decode lvs status: %w", err)
	}
	switch {
	case len(o.args) == 1 && o.args[0] == "save":
		renderSave(o.out, &st)
	case len(o.args) == 0:
		renderLVS(o.out, &st, o.rate)
	default:
		return usageErr(fmt.Sprintf("lvs: unknown argument %q (lvs [--rate] | lvs save)", strings.Join(o.args, " ")))
	}
	return nil
}

var forwardNames = map[string]string{api.ForwardNAT: "Masq", api.ForwardDR: "Route", api.ForwardTunnel: "Tunnel"}

// renderLVS prints the table in the spirit of ipvsadm -Ln --stats (with
// rates, -Ln --rate), with ipvsadm's forwarding names.
func renderLVS(w io.Writer, st *api.LVSStatus, rates bool) {
	fmt.Fprintf(w, "dataplane %s (%s)\n", st.Dataplane, st.Reason)
	if c := st.Capabilities; c != nil {
		fmt.Fprintf(w, "capabilities: schedulers %s; forwarding %s; features %s\n", strings.Join(c.Schedulers, ","),
			strings.Join(c.Forwarding, ","), strings.Join(c.Features, ","))
	}
	for _, s := range st.Sysctls {
		note := ""
		switch {
		case s.Err != "":
			note = "  NOT SET: " + s.Err
		case s.Was != "" && s.Was != s.Want:
			note = fmt.Sprintf("  (was %s)", s.Was)
		}
		fmt.Fprintf(w, "sysctl %s = %s%s\n", s.Key, s.Want, note)
	}
	if t := st.Timeouts; t != nil {
		fmt.Fprintf(w, "timeouts tcp %s tcpfin %s udp %s\n", t.TCP, t.TCPFin, t.UDP)
	}
	lr := st.LastReconcile
	if !lr.At.IsZero() {
		fmt.Fprintf(w, "last reconcile %s: %d operation(s) in %s", lr.At.Local().Format(time.TimeOnly), lr.Ops, lr.Duration)
		if lr.Err != "" {
			fmt.Fprintf(w, ", FAILED: %s", lr.Err)
		}
		fmt.Fprintln(w)
		for _, k := range slices.Sorted(maps.Keys(lr.Refused)) {
			fmt.Fprintf(w, "REFUSED by the kernel, not programmed: %s: %s\n", k, lr.Refused[k])
		}
	}
	for _, d := range st.SyncDaemons {
		fmt.Fprintf(w, "sync daemon %s on %s, sync id %d\n", d.State, d.Interface, d.SyncID)
	}
	if st.Error != "" {
		fmt.Fprintf(w, "cannot read the kernel's table: %s\n", st.Error)
	}
	fmt.Fprintln(w)
	// Names left, numbers right, as ipvsadm prints them.
	type row struct{ name, fwd, weight, active, inactive string }
	var rows []row
	var counts []api.LVSStats
	rows = append(rows, row{"Prot LocalAddress:Port Scheduler Flags", "", "", "", ""}, row{"  -> RemoteAddress:Port", "Forward", "Weight", "ActiveConn", "InActConn"})
	counts = append(counts, api.LVSStats{}, api.LVSStats{})
	for _, s := range st.Services {
		rows = append(rows, row{name: serviceLine(s)})
		counts = append(counts, s.Stats)
		for _, r := range s.Reals {
			mark := ""
			if r.Upper != 0 || r.Lower != 0 {
				mark = fmt.Sprintf(" (thresholds %d/%d)", r.Upper, r.Lower) // ipvsadm -Ln --thresholds: upper, lower
			}
			if slices.Contains(s.Draining, r.Addr) {
				mark += " (draining)"
			}
			rows = append(rows, row{"  -> " + r.Addr.String() + mark, forwardNames[r.Method], fmt.Sprint(r.Weight), fmt.Sprint(r.Active), fmt.Sprint(r.Inactive)})
			counts = append(counts, r.Stats)
		}
	}
	width := 0
	for _, r := range rows {
		width = max(width, len(r.name))
	}
	for i, r := range rows {
		fmt.Fprintf(w, "%-*s %-7s %6s %10s %9s", width, r.name, r.fwd, r.weight, r.active, r.inactive)
		c := counts[i]
		switch {
		case i == 0 && rates:
			fmt.Fprintf(w, " %10s %10s %10s %12s %12s\n", "CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
		case i == 0:
			fmt.Fprintf(w, " %10s %10s %10s %12s %12s\n", "Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
		case i == 1:
			fmt.Fprintln(w)
		case rates:
			fmt.Fprintf(w, " %10d %10d %10d %12d %12d\n", c.CPS, c.PPSIn, c.PPSOut, c.BPSIn, c.BPSOut)
		default:
			fmt.Fprintf(w, " %10d %10d %10d %12d %12d\n", c.Connections, c.PacketsIn, c.PacketsOut, c.BytesIn, c.BytesOut)
		}
	}
}

func serviceLine(s api.LVSService) string {
	var b strings.Builder
	if s.FWMark != 0 {
		fam := "IPv4"
		if s.IPv6 {
			fam = "IPv6"
		}
		fmt.Fprintf(&b, "FWM  %d %s %s", s.FWMark, fam, s.Scheduler)
	} else {
		fmt.Fprintf(&b, "%-4s %s %s", strings.ToUpper(string(s.Protocol)), s.Addr, s.Scheduler)
	}
	var flags []string
	for i, bit := range []uint32{api.FlagSched1, api.FlagSched2, api.FlagSched3} {
		if s.Flags&bit != 0 {
			flags = append(flags, schedFlagName(s.Scheduler, fmt.Sprintf("flag-%d", i+1)))
		}
	}
	if s.OnePacket {
		flags = append(flags, "ops")
	}
	if s.Persistence > 0 {
		flags = append(flags, fmt.Sprintf("persistent %d", int(s.Persistence.Seconds())))
		if s.PersistenceBits != 0 && s.PersistenceBits != 32 && s.PersistenceBits != 128 {
			flags = append(flags, fmt.Sprintf("mask /%d", s.PersistenceBits))
		}
	}
	if len(flags) > 0 {
		b.WriteString(" " + strings.Join(flags, " "))
	}
	if s.Name != "" {
		fmt.Fprintf(&b, " (%s", s.Name)
		if !s.QuorumUp {
			b.WriteString(", QUORUM LOST")
		}
		b.WriteString(")")
	}
	return b.String()
}

func schedFlagName(sched, flag string) string {
	if sched == "sh" || sched == "mh" {
		switch flag {
		case "flag-1":
			return sched + "-fallback"
		case "flag-2":
			return sched + "-port"
		}
	}
	return flag
}

// renderSave prints the table as ipvsadm -S -n does (ipvsadm -R reads
// it back), so that it can be compared with a keepalived director's.
func renderSave(w io.Writer, st *api.LVSStatus) {
	for _, s := range st.Services {
		svc := saveService(s.LVSKey)
		fmt.Fprintf(w, "-A %s -s %s", svc, s.Scheduler)
		if s.Persistence > 0 {
			fmt.Fprintf(w, " -p %d", int(s.Persistence.Seconds()))
			switch bits := s.PersistenceBits; {
			case bits == 0:
			case !saveIPv6(s.LVSKey) && bits < 32:
				fmt.Fprintf(w, " -M %s", net.IP(net.CIDRMask(bits, 32)))
			case saveIPv6(s.LVSKey) && bits < 128:
				fmt.Fprintf(w, " -M %d", bits)
			}
		}
		if s.OnePacket {
			fmt.Fprint(w, " -o")
		}
		var flags []string
		for i, bit := range []uint32{api.FlagSched1, api.FlagSched2, api.FlagSched3} {
			if s.Flags&bit != 0 {
				flags = append(flags, schedFlagName(s.Scheduler, fmt.Sprintf("flag-%d", i+1)))
			}
		}
		if len(flags) > 0 {
			fmt.Fprintf(w, " -b %s", strings.Join(flags, ","))
		}
		fmt.Fprintln(w)
		// Thresholds are not in ipvsadm's rules (ipvsadm -Ln --thresholds
		// shows them, as does directorctl lvs).
		for _, r := range s.Reals {
			fmt.Fprintf(w, "-a %s -r %s %s -w %d", svc, r.Addr, saveForward[r.Method], r.Weight)
			if r.Method == api.ForwardTunnel {
				fmt.Fprint(w, " --tun-type ipip")
			}
			fmt.Fprintln(w)
		}
	}
}

// saveForward are ipvsadm's switches for the forwarding methods.
var saveForward = map[string]string{api.ForwardNAT: "-m", api.ForwardDR: "-g", api.ForwardTunnel: "-i"}

func saveIPv6(k api.LVSKey) bool { return k.IPv6 || k.Addr.Addr().Is6() }

// saveService is a service as ipvsadm's rules name it: -t, -u, --sctp-service
// or -f with the address in ipvsadm's spelling.
func saveService(k api.LVSKey) string {
	if k.FWMark != 0 {
		if k.IPv6 {
			return fmt.Sprintf("-f %d -6", k.FWMark)
		}
		return fmt.Sprintf("-f %d", k.FWMark)
	}
	sw := map[string]string{"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}[k.Protocol]
	return sw + " " + k.Addr.String()
}

// runFlows lists the connections (--conns) or the persistence templates
// (--persistence) as ipvsadm -Lnc does, of one service when an argument
// (VIP:PORT, or a firewall mark's number) names it.
func runFlows(ctx context.Context, c *status.Client, o opts) error {
	if len(o.args) > 1 {
		return usageErr("lvs --conns|--persistence [VIP:PORT|FWMARK]")
	}
	raw, err := c.Raw(ctx, "/v1/lvs/flows")
	if err != nil {
		return err
	}
	var fl api.LVSFlows
	if err := json.Unmarshal(raw, &fl); err != nil {
		return fmt.Errorf("decode flows: %w", err)
	}
	keep := func(f api.LVSFlow) bool {
		if f.Template != o.persistence {
			return false
		}
		if len(o.args) == 0 {
			return true
		}
		return o.args[0] == f.Service.Addr.String() || o.args[0] == fmt.Sprint(f.Service.FWMark)
	}
	fl.Flows = slices.DeleteFunc(fl.Flows, func(f api.LVSFlow) bool { return !keep(f) })
	if o.json {
		return json.NewEncoder(o.out).Encode(fl)
	}
	from := "the kernel's IPVS table"
	switch {
	case fl.Dataplane == "nftables" && o.persistence:
		from = "the persistence sets"
	case fl.Dataplane == "nftables":
		from = "conntrack"
	}
	what := "connection entries"
	if o.persistence {
		what = "persistence templates"
	}
	fmt.Fprintf(o.out, "%s %s (%s)\n", fl.Dataplane, what, from)
	rows := [][6]string{{"pro", "expire", "state", "source", "virtual", "destination"}}
	for _, f := range fl.Flows {
		pro, virt := strings.ToUpper(f.Protocol), f.Service.Addr.String()
		if f.Service.FWMark != 0 {
			pro, virt = "IP", fmt.Sprintf("fwmark %d", f.Service.FWMark)
		}
		left := "?"
		if d, err := time.ParseDuration(f.Expires); err == nil {
			left = fmt.Sprintf("%02d:%02d", int(d.Minutes()), int(d.Seconds())%60)
		}
		rows = append(rows, [6]string{pro, left, f.State, f.Client.String(), virt, f.Real.String()})
	}
	var width [6]int
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c))
		}
	}
	for _, r := range rows {
		for i, c := range r[:5] {
			fmt.Fprintf(o.out, "%-*s ", width[i], c)
		}
		fmt.Fprintln(o.out, r[5])
	}
	return nil
}

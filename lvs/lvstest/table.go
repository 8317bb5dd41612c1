package lvstest

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/directord/directord/lvs"
)

// SyntheticTable is a table of n lvs.TCP wrr services (192.0.2.100, ports
// from 10000) with m lvs.NAT real servers each (203.0.113.11 on, weights 1..m),
// for benchmarks.
func SyntheticTable(n, m int) []lvs.VirtualServer {
	vss := make([]lvs.VirtualServer, n)
	for i := range vss {
		vs := lvs.VirtualServer{Name: fmt.Sprintf("s%d", i),
			Service: lvs.Service{Key: lvs.Key{Protocol: lvs.TCP, Addr: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.100"), uint16(10000+i))}, Scheduler: "wrr"}}
		for j := range m {
			vs.Reals = append(vs.Reals, lvs.Real{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(11 + j)}), 8080), Weight: j + 1, Method: lvs.NAT})
		}
		vss[i] = vs
	}
	return vss
}

// Step is one measured reconcile.
type Step struct {
	Name     string
	Ops      int
	Duration time.Duration
}

// The steps MeasureReconcile times, in order.
const (
	StepFull     = "full table from empty"
	StepSettle   = "no change, right after the full table"
	StepChange   = "one weight change"
	StepNoChange = "no change"
)

// MeasureReconcile reconciles vss into an empty data plane, then with no
// change (as the daemon's next reconcile, within its interval, does), then
// after one weight change, then with no change again, and times each.
func MeasureReconcile(r *lvs.Reconciler, vss []lvs.VirtualServer) ([]Step, error) {
	var steps []Step
	step := func(name string) error {
		start := time.Now()
		n, err := r.Reconcile()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		steps = append(steps, Step{name, n, time.Since(start)})
		return nil
	}
	if err := r.Set(vss); err != nil {
		return nil, err
	}
	if err := step(StepFull); err != nil {
		return nil, err
	}
	if err := step(StepSettle); err != nil {
		return nil, err
	}
	changed := make([]lvs.VirtualServer, len(vss))
	copy(changed, vss)
	mid := len(vss) / 2
	changed[mid].Reals = append([]lvs.Real(nil), vss[mid].Reals...)
	changed[mid].Reals[0].Weight += 5
	if err := r.Set(changed); err != nil {
		return nil, err
	}
	if err := step(StepChange); err != nil {
		return nil, err
	}
	if err := step(StepNoChange); err != nil {
		return nil, err
	}
	return steps, nil
}

// Bench sizes: make bench-lvs's table, on nftables on the host and on
// IPVS in the guest.
const (
	BenchServices = 10000
	BenchReals    = 10
)

// IPVSADMRestore is a SyntheticTable as ipvsadm -R reads it (TCP wrr
// services with NAT real servers), the anchor of make bench-lvs on IPVS.
func IPVSADMRestore(vss []lvs.VirtualServer) string {
	var b strings.Builder
	for _, vs := range vss {
		fmt.Fprintf(&b, "-A -t %s -s %s\n", vs.Key.Addr, vs.Scheduler)
		for _, r := range vs.Reals {
			fmt.Fprintf(&b, "-a -t %s -r %s -m -w %d\n", vs.Key.Addr, r.Addr, r.Weight)
		}
	}
	return b.String()
}

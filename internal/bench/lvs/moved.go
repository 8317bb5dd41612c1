package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/directord/directord/lvs"
)

// The flows-moved measure: real connections through nftables in a lab
// scene, from movedClients IPv6 client addresses to an sh or mh service
// of movedServers real servers, before and after one of them leaves.
const (
	movedServers = 10
	movedClients = 1000
	// movedPrefix holds the client addresses; the client binds any of
	// them (a local route and ip_nonlocal_bind), so the director needs
	// one neighbour, not a thousand.
	movedPrefix = "2001:db8:c::/64"
)

// How a server leaves.
const (
	leaveDrain  = "drains (weight 0)"
	leaveRemove = "is removed"
)

// movedRow is one scheduler and one way of leaving: of flows, own were on
// the server that left (all of them must move) and others moved though
// their server stayed.
type movedRow struct {
	Sched, How          string
	Flows, Own, Others  int
	StayedOnLeft, Fails int
}

// withinBound is the bound: when one of N servers leaves, at most
// 1/N + 1 % of the flows move, so besides its own, at most 1 % of them.
// The server must have had flows, or the row measures nothing.
func (r movedRow) withinBound() bool {
	return r.Own > 0 && r.StayedOnLeft == 0 && r.Fails == 0 && r.Others*100 <= r.Flows
}

// bounded says whether the bound applies. A removed sh server changes
// the layout of the buckets (IPVS's sh deals its 256 buckets out again
// over the servers left too), so only a drained one keeps the others in
// place; mh's table moves little either way.
func (r movedRow) bounded() bool { return r.Sched == "mh" || r.How == leaveDrain }

// movedText is the flows moved, in all and by kind.
func (r movedRow) movedText() string {
	text := fmt.Sprintf("%d (%.1f %%: %d of its own, %d of the others)", r.Own+r.Others, 100*float64(r.Own+r.Others)/float64(r.Flows), r.Own, r.Others)
	if r.StayedOnLeft > 0 || r.Fails > 0 {
		text += fmt.Sprintf("; %d stayed on the server that left, %d failed", r.StayedOnLeft, r.Fails)
	}
	return text
}

// writeMoved is the flows-moved part of the report.
func writeMoved(b *strings.Builder, rows []movedRow) {
	fmt.Fprintf(b, "\nFlows moved when a server leaves: one sh and one mh TCP service of %d NAT real servers on\n", movedServers)
	fmt.Fprintf(b, "nftables, in a lab namespace; one connection from each of %d client addresses before and after\n", movedClients)
	fmt.Fprintf(b, "the first server (in address order) leaves. The tables depend only on the servers, so this is one\n")
	fmt.Fprintf(b, "run (another gives the same numbers). The bound is the issue's: at most 1/N + 1 %% of the flows\n")
	fmt.Fprintf(b, "move, the leaving server's own and at most 1 %% of the others. A removed sh server lays the\n")
	fmt.Fprintf(b, "256 buckets out again over the servers left, as IPVS's sh does, so it has no bound; drain it\n")
	fmt.Fprintf(b, "first (weight 0, as directord does for a server taken out of the file) to keep clients in place.\n\n")
	fmt.Fprintf(b, "| scheduler | the server | flows | moved |\n|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(b, "| %s | %s | %d | %s |\n", r.Sched, r.How, r.Flows, r.movedText())
	}
}

// movedRun measures, for sh and mh, the flows that move when a server
// drains and when it is removed. The tables depend only on the servers,
// so one run is the measure (a second gives the same numbers).
func movedRun() (rows []movedRow, err error) {
	defer lab.Recover(&err)
	l := lab.Open(func(string, ...any) {})
	defer l.Close()
	s := scene.NewLVS(l, movedServers)
	s.AddIPv6()
	s.Client.IP("-6", "route", "add", "local", movedPrefix, "dev", "lo")
	s.Sysctl(s.Client, "net/ipv6/ip_nonlocal_bind", "1")
	s.Director.IP("-6", "route", "add", movedPrefix, "via", scene.ClientIP6)
	err = onHost(s.Director, func(_ *os.File, dp *lvs.NFT, r *lvs.Reconciler) error {
		rows, err = movedFlows(s, dp, r)
		return err
	})
	return rows, err
}

// movedFlows is movedRun's measure, on its scene's data plane.
func movedFlows(s *scene.LVS, dp *lvs.NFT, r *lvs.Reconciler) (rows []movedRow, err error) {
	vip := netip.AddrPortFrom(netip.MustParseAddr(scene.VIP6), 80)
	for i, sched := range []string{"sh", "mh"} {
		key := lvs.Key{Protocol: lvs.TCP, Addr: netip.AddrPortFrom(vip.Addr(), vip.Port()+uint16(i))}
		service := func(reals []lvs.Real) []lvs.VirtualServer {
			// A removed server is deleted at the reconcile after it went
			// to weight 0, not when its closed connections leave conntrack.
			return []lvs.VirtualServer{{Name: sched, Service: lvs.Service{Key: key, Scheduler: sched},
				Reals: reals, DrainTimeout: time.Nanosecond}}
		}
		var reals []lvs.Real
		for j := range movedServers {
			reals = append(reals, lvs.Real{Addr: netip.AddrPortFrom(netip.MustParseAddr(scene.RealAddr6(j)), scene.TCPPort), Weight: 1, Method: lvs.NAT})
		}
		if err := apply(r, service(reals)); err != nil {
			return nil, err
		}
		before, fails := flows(s, key.Addr)
		if fails > 0 {
			return nil, fmt.Errorf("%s: %d of %d flows failed with every server up", sched, fails, movedClients)
		}
		// The first server in address order leaves: for sh the one whose
		// buckets come first, so a layout made anew would shift the rest.
		left := "rs1"
		drained := slices.Clone(reals)
		drained[0].Weight = 0
		for _, step := range []struct {
			how   string
			reals []lvs.Real
		}{{leaveDrain, drained}, {leaveRemove, reals[1:]}} {
			if err := apply(r, service(step.reals)); err != nil {
				return nil, err
			}
			if step.how == leaveRemove {
				if err := gone(r, dp, key, reals[0].Addr); err != nil {
					return nil, err
				}
			}
			after, fails := flows(s, key.Addr)
			row := movedRow{Sched: sched, How: step.how, Flows: len(before), Fails: fails}
			for src, was := range before {
				now, ok := after[src]
				switch {
				case !ok:
				case was == left && now == left:
					row.StayedOnLeft++
				case was == left:
					row.Own++
				case now != was:
					row.Others++
				}
			}
			fmt.Printf("flows moved: %s, a server %s: %s of %d\n", sched, step.how, row.movedText(), row.Flows)
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// gone reconciles until the kernel no longer holds addr in key's service.
func gone(r *lvs.Reconciler, dp lvs.Dataplane, key lvs.Key, addr netip.AddrPort) error {
	return lab.Eventually(10*time.Second, func() error {
		if _, err := r.Reconcile(); err != nil {
			return err
		}
		vss, err := dp.List()
		if err != nil {
			return err
		}
		for _, vs := range vss {
			if vs.Key == key && slices.ContainsFunc(vs.Reals, func(x lvs.RealState) bool { return x.Addr == addr }) {
				return errors.New("the removed server is still in the kernel")
			}
		}
		return nil
	})
}

// flows opens one connection from each client address to vip and returns
// the server each reached, and how many failed.
func flows(s *scene.LVS, vip netip.AddrPort) (on map[string]string, fails int) {
	on = map[string]string{}
	for i := range movedClients {
		src := fmt.Sprintf("2001:db8:c::%x", i+1)
		name, err := s.Ask(src, vip.String())
		if err != nil {
			fails++
			continue
		}
		on[src] = name
	}
	return on, fails
}

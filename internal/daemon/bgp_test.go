package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/bgp"
	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/lvs/lvstest"
	"github.com/directord/directord/vrrp/vrrptest"
)

// fakeAnnouncer is the BGP speaker as a record of what it was told; lo is
// the loopback's addresses.
type fakeAnnouncer struct {
	dp *lvstest.Fake // to see whether the data plane still serves

	mu        sync.Mutex
	announced map[netip.Prefix]bool
	lo        map[netip.Prefix]bool
	events    []string
	stopped   bool
}

func newFakeAnnouncer(dp *lvstest.Fake) *fakeAnnouncer {
	return &fakeAnnouncer{dp: dp, announced: map[netip.Prefix]bool{}, lo: map[netip.Prefix]bool{}}
}

func (f *fakeAnnouncer) event(format string, args ...any) {
	f.events = append(f.events, fmt.Sprintf(format, args...))
}

func (f *fakeAnnouncer) Start(context.Context) error { return nil }
func (f *fakeAnnouncer) Stop() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	f.event("stop")
	return nil
}

func (f *fakeAnnouncer) Announce(_ context.Context, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.announced[p] {
		f.event("announce %s", p)
	}
	f.announced[p] = true
	return nil
}

func (f *fakeAnnouncer) Withdraw(_ context.Context, p netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.announced[p] {
		es, _ := f.dp.List()
		f.event("withdraw %s (services in the data plane: %d)", p, len(es))
	}
	delete(f.announced, p)
	return nil
}

func (f *fakeAnnouncer) GracefulShutdown(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.event("graceful shutdown")
	return nil
}

func (f *fakeAnnouncer) Peers(context.Context) ([]bgp.Peer, error) {
	return []bgp.Peer{{Address: netip.MustParseAddr("192.0.2.1"), PeerAS: 65000, State: "established"}}, nil
}

func (f *fakeAnnouncer) loopback(p netip.Prefix, add bool) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	was := f.lo[p]
	if add {
		f.lo[p] = true
	} else {
		delete(f.lo, p)
	}
	return was, nil
}

func (f *fakeAnnouncer) is(p netip.Prefix) (announced, onLo bool, events []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.announced[p], f.lo[p], slices.Clone(f.events)
}

var _ Announcer = (*fakeAnnouncer)(nil)

// A director announces a virtual server's address while it can serve it:
// withdrawn when its quorum is lost and when an operator asks, announced
// again after; at a stop the routes are marked GRACEFUL_SHUTDOWN, and
// withdrawn after shutdown_delay while the data plane still serves.
func TestBGPAnnouncesWhileServable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lab.AcceptAndClose(ln)
	rs := ln.Addr().String()
	dir := t.TempDir()
	web := conf.VirtualServer{Name: "web", Address: "192.0.2.200:80", Scheduler: "mh", Reals: []conf.Real{{Address: rs}},
		Extra: []string{`announce = "bgp"`},
		Check: &conf.Check{Type: "tcp", Interval: "50ms", Timeout: "50ms", Extra: []string{"rise = 1", "fall = 1", `warmup = "0s"`}}}
	text := conf.File{
		Node:           conf.Node{Name: "d1", DataDir: dir + "/data", StatusSocket: dir + "/s.sock"},
		VirtualServers: []conf.VirtualServer{web},
	}.String() + `
[bgp]
local_as = 65001
router_id = "192.0.2.11"
shutdown_delay = "200ms"
  [[bgp.neighbor]]
  address = "192.0.2.1"
  peer_as = 65000
`
	h := startHostWith(t, &vrrptest.Hub{}, "192.0.2.11", text, func(d *Deps, dp *lvstest.Fake) *fakeAnnouncer {
		f := newFakeAnnouncer(dp)
		d.BGP = func(*slog.Logger, bgp.Config) Announcer { return f }
		d.Loopback = f.loopback
		return f
	})
	vip := netip.MustParsePrefix("192.0.2.200/32")
	f := h.bgp
	want := func(what string, announced bool, reason string) {
		t.Helper()
		h.eventually(t, what, func(doc api.Document) error {
			a, lo, _ := f.is(vip)
			if doc.BGP == nil || len(doc.BGP.Prefixes) != 1 {
				return fmt.Errorf("bgp status %+v", doc.BGP)
			}
			p := doc.BGP.Prefixes[0]
			if a != announced || !lo || p.Announced != announced || !strings.Contains(p.Reason, reason) {
				return fmt.Errorf("announced %v (status %+v), on lo %v", a, p, lo)
			}
			return nil
		})
	}
	want("announced while web can serve", true, "")

	ln.Close() // the only real server fails its check: quorum lost
	want("withdrawn on quorum loss", false, "web: quorum lost")

	ln2, err := net.Listen("tcp", rs)
	if err != nil {
		t.Skipf("the real server's port was taken meanwhile: %v", err)
	}
	lab.AcceptAndClose(ln2)
	t.Cleanup(func() { ln2.Close() })
	want("announced again with the server back", true, "")

	// Draining the last real server (directorctl rs drain, kept locally
	// without [cluster]) withdraws too; enabling it announces again.
	for _, op := range []struct {
		op, what  string
		announced bool
		reason    string
	}{{"rs.drain", "withdrawn with its last server drained", false, "quorum lost"}, {"rs.enable", "announced with the server enabled", true, ""}} {
		if err := h.client.Post(context.Background(), "/v1/cluster", api.ClusterRequest{Op: op.op, Service: "web", Real: rs}, &api.ClusterResult{}); err != nil {
			t.Fatalf("%s: %v", op.op, err)
		}
		want(op.what, op.announced, op.reason)
	}

	var st api.BGPStatus
	if err := h.client.Post(context.Background(), "/v1/bgp/withdraw", api.BGPHold{Service: "web"}, &st); err != nil {
		t.Fatal(err)
	}
	want("withdrawn by an operator", false, "withdrawn by an operator")
	if err := h.client.Post(context.Background(), "/v1/bgp/announce", api.BGPHold{Service: "web"}, &st); err != nil {
		t.Fatal(err)
	}
	want("announced after the operator's announce", true, "")
	// A BGP drill: refused without a cluster to see the others, then
	// (forced) for want of traffic to measure; either way nothing moves.
	for _, c := range []struct {
		force bool
		want  string
	}{{false, "without [cluster]"}, {true, "no packet for web reached this director"}} {
		var res api.BGPDrillResult
		if err := h.client.Post(context.Background(), "/v1/bgp/drill", api.BGPDrillRequest{Service: "web", Force: c.force}, &res); err != nil {
			t.Fatal(err)
		}
		if res.OK || !strings.Contains(res.Refused, c.want) {
			t.Fatalf("drill (force %v): %+v", c.force, res)
		}
	}
	want("announced after the refused drills", true, "")
	if err := h.client.Post(context.Background(), "/v1/bgp/withdraw", api.BGPHold{Service: "nope"}, &st); err == nil {
		t.Fatal("withdrew an unknown virtual server")
	}

	h.stop()
	_, lo, events := f.is(vip)
	n := len(events)
	if n < 3 || events[n-3] != "graceful shutdown" || events[n-2] != "withdraw 192.0.2.200/32 (services in the data plane: 1)" || events[n-1] != "stop" {
		t.Fatalf("the stop's BGP events: %q", events)
	}
	if lo {
		t.Fatal("the address stayed on lo")
	}
	if es, _ := h.dp.List(); len(es) != 0 {
		t.Fatalf("the data plane still holds %d services after the stop", len(es))
	}
}

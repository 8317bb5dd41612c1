package lvs_test

import (
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/lvs"
	"github.com/directord/directord/lvs/lvstest"
)

var (
	web  = lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort("192.0.2.100:80")}
	dns  = lvs.Key{Protocol: lvs.UDP, Addr: netip.MustParseAddrPort("192.0.2.100:53")}
	rs1  = netip.MustParseAddrPort("203.0.113.11:8080")
	rs2  = netip.MustParseAddrPort("203.0.113.12:8080")
	rs3  = netip.MustParseAddrPort("203.0.113.13:8080")
	sorr = netip.MustParseAddrPort("203.0.113.99:8080")
)

func real(a netip.AddrPort, w int) lvs.Real { return lvs.Real{Addr: a, Weight: w, Method: lvs.NAT} }

func webVS(reals ...lvs.Real) lvs.VirtualServer {
	return lvs.VirtualServer{Name: "web", Service: lvs.Service{Key: web, Scheduler: "wrr"}, Reals: reals}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newRec(t *testing.T, f *lvstest.Fake, o lvs.Options) (*lvs.Reconciler, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	o.Now = c.now
	r, err := lvs.NewReconciler(f, o)
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

// step reconciles and checks the operations it issued.
func step(t *testing.T, r *lvs.Reconciler, f *lvstest.Fake, want ...string) {
	t.Helper()
	before := len(f.Ops)
	n, err := r.Reconcile()
	if err != nil {
		t.Fatalf("reconcile: %v", err)
	}
	var got []string
	for _, op := range f.Ops[before:] {
		got = append(got, op.String())
	}
	if n != len(got) || !slices.Equal(got, want) {
		t.Fatalf("reconcile issued %d ops:\n%q\nwant:\n%q", n, got, want)
	}
}

func TestReconcileDiffs(t *testing.T) {
	f := lvstest.NewFake()
	r, _ := newRec(t, f, lvs.Options{})
	r.Set([]lvs.VirtualServer{webVS(real(rs1, 1), real(rs2, 2))})
	step(t, r, f,
		"add-service tcp 192.0.2.100:80 wrr",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 2 nat")
	step(t, r, f) // no change: no operation

	r.Set([]lvs.VirtualServer{webVS(real(rs1, 1), real(rs2, 3))})
	step(t, r, f, "update-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 3 nat")

	vs := webVS(real(rs1, 1), real(rs2, 3))
	vs.Scheduler = "sh"
	vs.Flags = lvs.FlagSched1 | lvs.FlagSched2
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f, "update-service tcp 192.0.2.100:80 sh")
	step(t, r, f)

	// lvs.Persistence granularity defaults to a single address: a service
	// read back with /32 is the same service.
	vs.Persistence = 300 * time.Second
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f, "update-service tcp 192.0.2.100:80 sh")
	es, _ := f.List()
	if es[0].PersistenceBits != 32 {
		t.Fatalf("persistence bits %d, want 32", es[0].PersistenceBits)
	}
	step(t, r, f)

	r.Set([]lvs.VirtualServer{vs, {Service: lvs.Service{Key: dns, Scheduler: "rr", OnePacket: true}, Reals: []lvs.Real{real(netip.MustParseAddrPort("203.0.113.11:53"), 1)}}})
	step(t, r, f,
		"add-service udp 192.0.2.100:53 rr",
		"add-real udp 192.0.2.100:53 -> 203.0.113.11:53 weight 1 nat")

	// A removed service goes at once, with its real servers.
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f, "del-service udp 192.0.2.100:53 rr")
}

func TestReconcileOwnership(t *testing.T) {
	f := lvstest.NewFake()
	hand := lvs.Entry{Service: lvs.Service{Key: lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort("192.0.2.200:443")}, Scheduler: "rr"},
		Reals: []lvs.RealState{{Real: real(rs3, 1)}}}
	f.Put(hand)
	own := filepath.Join(t.TempDir(), "owned.json")
	r, _ := newRec(t, f, lvs.Options{OwnedFile: own})
	r.Set([]lvs.VirtualServer{webVS(real(rs1, 1))})
	step(t, r, f,
		"add-service tcp 192.0.2.100:80 wrr",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat")

	// The daemon dies without cleaning up; its successor has no
	// virtual servers configured and removes what the first one made,
	// not the hand-made rule.
	r2, _ := newRec(t, f, lvs.Options{OwnedFile: own})
	step(t, r2, f, "del-service tcp 192.0.2.100:80 wrr")
	es, _ := f.List()
	if len(es) != 1 || es[0].Key != hand.Key {
		t.Fatalf("kernel holds %+v, want only the hand-made service", es)
	}

	// A configured service that already exists is adopted, not re-added.
	r3, _ := newRec(t, f, lvs.Options{})
	r3.Set([]lvs.VirtualServer{{Service: hand.Service, Reals: []lvs.Real{real(rs3, 1)}}})
	step(t, r3, f)
	if err := r3.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if es, _ := f.List(); len(es) != 0 {
		t.Fatalf("adopted service left after shutdown: %+v", es)
	}

	// lvs_flush removes foreign services once.
	f.Put(hand)
	r4, _ := newRec(t, f, lvs.Options{Flush: true})
	r4.Set([]lvs.VirtualServer{webVS(real(rs1, 1))})
	step(t, r4, f,
		"add-service tcp 192.0.2.100:80 wrr",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat",
		"del-service tcp 192.0.2.200:443 rr")
	f.Put(hand)
	step(t, r4, f)
}

func TestReconcileDrain(t *testing.T) {
	f := lvstest.NewFake()
	r, c := newRec(t, f, lvs.Options{})
	vs := webVS(real(rs1, 1), real(rs2, 2))
	vs.DrainTimeout = time.Minute
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f,
		"add-service tcp 192.0.2.100:80 wrr",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 2 nat")
	f.SetConns(web, rs2, 3, 1)
	f.SetConns(web, rs1, 2, 0)

	// rs2 leaves the configuration: weight 0 first, kept while it has
	// connections, deleted when they are gone.
	vs.Reals = []lvs.Real{real(rs1, 1)}
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f, "update-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 0 nat")
	c.advance(10 * time.Second)
	step(t, r, f)
	if d := r.Draining()[web]; len(d) != 1 || d[0] != rs2 {
		t.Fatalf("draining %v", d)
	}
	f.SetConns(web, rs2, 0, 0)
	step(t, r, f, "del-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 0 nat")
	if len(r.Draining()) != 0 {
		t.Fatalf("still draining %v", r.Draining())
	}

	// rs1 leaves with connections that never end: deleted after the
	// drain timeout.
	vs.Reals = nil
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f, "update-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 0 nat")
	c.advance(59 * time.Second)
	step(t, r, f)
	c.advance(time.Second)
	step(t, r, f, "del-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 0 nat")

	// Coming back while draining cancels the drain.
	vs.Reals = []lvs.Real{real(rs1, 1)}
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f, "add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat")
	f.SetConns(web, rs1, 1, 0)
	vs.Reals = nil
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f, "update-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 0 nat")
	vs.Reals = []lvs.Real{real(rs1, 1)}
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f, "update-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat")
	if len(r.Draining()) != 0 {
		t.Fatalf("still draining %v", r.Draining())
	}
}

func TestReconcileHealth(t *testing.T) {
	for _, inhibit := range []bool{false, true} {
		f := lvstest.NewFake()
		r, _ := newRec(t, f, lvs.Options{})
		vs := webVS(real(rs1, 1), real(rs2, 2))
		vs.InhibitOnFailure = inhibit
		r.Set([]lvs.VirtualServer{vs})
		step(t, r, f,
			"add-service tcp 192.0.2.100:80 wrr",
			"add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat",
			"add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 2 nat")
		f.SetConns(web, rs2, 5, 5)
		r.SetHealth(web, rs2, lvs.Health{Up: false, Weight: -1})
		if inhibit {
			step(t, r, f, "update-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 0 nat")
		} else {
			// A failed server goes at once, connections or not.
			step(t, r, f, "del-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 2 nat")
		}
		step(t, r, f)
		r.SetHealth(web, rs2, lvs.Health{Up: true, Weight: -1})
		if inhibit {
			step(t, r, f, "update-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 2 nat")
		} else {
			step(t, r, f, "add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 2 nat")
		}
		// A dynamic weight from an exec check replaces the configured one.
		r.SetHealth(web, rs1, lvs.Health{Up: true, Weight: 7})
		step(t, r, f, "update-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 7 nat")
	}
}

func TestReconcileQuorum(t *testing.T) {
	f := lvstest.NewFake()
	r, _ := newRec(t, f, lvs.Options{})
	vs := webVS(real(rs1, 1), real(rs2, 1), real(rs3, 1))
	vs.Quorum = 2
	s := real(sorr, 1)
	vs.Sorry = &s
	r.Set([]lvs.VirtualServer{vs})
	step(t, r, f,
		"add-service tcp 192.0.2.100:80 wrr",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.13:8080 weight 1 nat")
	r.SetHealth(web, rs1, lvs.Health{Up: false, Weight: -1})
	step(t, r, f, "del-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat")
	if !r.QuorumUp()[web] {
		t.Fatal("quorum lost at live weight 2, quorum 2")
	}
	// Live weight 1 < quorum 2: the sorry server takes over alone.
	r.SetHealth(web, rs2, lvs.Health{Up: false, Weight: -1})
	step(t, r, f,
		"add-real tcp 192.0.2.100:80 -> 203.0.113.99:8080 weight 1 nat",
		"del-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat",
		"del-real tcp 192.0.2.100:80 -> 203.0.113.13:8080 weight 1 nat")
	if r.QuorumUp()[web] {
		t.Fatal("quorum still up")
	}
	step(t, r, f)
	r.SetHealth(web, rs2, lvs.Health{Up: true, Weight: -1})
	step(t, r, f,
		"add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.13:8080 weight 1 nat",
		"del-real tcp 192.0.2.100:80 -> 203.0.113.99:8080 weight 1 nat")

	// With hysteresis 1 the quorum is lost below 1 and regained at 3.
	vs.Hysteresis = 1
	r.Set([]lvs.VirtualServer{vs})
	r.SetHealth(web, rs2, lvs.Health{Up: false, Weight: -1})
	step(t, r, f, "del-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat")
	if !r.QuorumUp()[web] {
		t.Fatal("hysteresis: quorum lost at live weight 1")
	}
	r.SetHealth(web, rs3, lvs.Health{Up: false, Weight: -1})
	step(t, r, f,
		"add-real tcp 192.0.2.100:80 -> 203.0.113.99:8080 weight 1 nat",
		"del-real tcp 192.0.2.100:80 -> 203.0.113.13:8080 weight 1 nat")
	r.SetHealth(web, rs3, lvs.Health{Up: true, Weight: -1})
	r.SetHealth(web, rs2, lvs.Health{Up: true, Weight: -1})
	step(t, r, f) // live 2 < quorum 2 + hysteresis 1: still down
	r.SetHealth(web, rs1, lvs.Health{Up: true, Weight: -1})
	step(t, r, f,
		"add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat",
		"add-real tcp 192.0.2.100:80 -> 203.0.113.13:8080 weight 1 nat",
		"del-real tcp 192.0.2.100:80 -> 203.0.113.99:8080 weight 1 nat")
}

func TestReconcileRetriesAfterFailure(t *testing.T) {
	f := lvstest.NewFake()
	r, _ := newRec(t, f, lvs.Options{})
	fail := true
	f.Fail = func(op lvs.Op) error {
		if fail && op.Kind == lvs.AddReal && op.Real.Addr == rs2 {
			return errors.New("ENOMEM")
		}
		return nil
	}
	r.Set([]lvs.VirtualServer{webVS(real(rs1, 1), real(rs2, 2))})
	if _, err := r.Reconcile(); err == nil {
		t.Fatal("no error from a failed apply")
	}
	if r.Last().Err == "" {
		t.Fatal("failure not recorded")
	}
	fail = false
	step(t, r, f, "add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 2 nat")
	step(t, r, f)
}

// TestReconcileIsolatesRefusedService: a service the kernel refuses is
// named with the kernel's error and the others are programmed, on a data
// plane that stops at its first failure (IPVS) and on one that applies
// all or nothing (nftables); it is logged once, not at every retry.
func TestReconcileIsolatesRefusedService(t *testing.T) {
	bad := lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort("192.0.2.100:81")}
	other := lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort("192.0.2.100:82")}
	vss := []lvs.VirtualServer{
		webVS(real(rs1, 1)),
		{Name: "bad", Service: lvs.Service{Key: bad, Scheduler: "twos"}, Reals: []lvs.Real{real(rs2, 1)}},
		{Name: "other", Service: lvs.Service{Key: other, Scheduler: "rr"}, Reals: []lvs.Real{real(rs3, 1)}},
	}
	for _, atomic := range []bool{false, true} {
		t.Run(map[bool]string{false: "stops at first failure", true: "all or nothing"}[atomic], func(t *testing.T) {
			f := lvstest.NewFake()
			caps := lvs.IPVSCapabilities
			caps.Atomic = atomic
			f.Caps = &caps
			var logged strings.Builder
			r, _ := newRec(t, f, lvs.Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))})
			refuse := true
			f.SetFail(func(op lvs.Op) error {
				if refuse && op.Service.Key == bad {
					return errors.New("no such file or directory")
				}
				return nil
			})
			r.Set(vss)
			for range 3 {
				if _, err := r.Reconcile(); err == nil || !strings.Contains(err.Error(), "1 of the services refused") {
					t.Fatalf("reconcile: %v", err)
				}
			}
			have, _ := f.List()
			var keys []lvs.Key
			for _, e := range have {
				keys = append(keys, e.Key)
			}
			if !slices.Contains(keys, web) || !slices.Contains(keys, other) || slices.Contains(keys, bad) {
				t.Fatalf("the kernel holds %v; want web and other, not the refused one", keys)
			}
			if e := r.Last().Refused[bad.String()]; !strings.Contains(e, "no such file or directory") || len(r.Last().Refused) != 1 {
				t.Fatalf("refused: %v", r.Last().Refused)
			}
			if n := strings.Count(logged.String(), "the kernel refused a virtual service"); n != 1 {
				t.Fatalf("logged %d times in 3 reconciles:\n%s", n, logged.String())
			}
			refuse = false
			step(t, r, f, "add-service tcp 192.0.2.100:81 twos", "add-real tcp 192.0.2.100:81 -> 203.0.113.12:8080 weight 1 nat")
			if len(r.Last().Refused) != 0 || !strings.Contains(logged.String(), "is programmed now") {
				t.Fatalf("after the kernel took it: refused %v, log:\n%s", r.Last().Refused, logged.String())
			}
		})
	}
}

// TestDigest: the digest ignores order and counters and changes with
// anything that schedules differently.
func TestDigest(t *testing.T) {
	key := lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort("192.0.2.100:80")}
	rs := func(addr string, w int) lvs.RealState {
		return lvs.RealState{Real: lvs.Real{Addr: netip.MustParseAddrPort(addr), Weight: w, Method: lvs.NAT}}
	}
	a := []lvs.Entry{{Service: lvs.Service{Key: key, Scheduler: "wrr"}, Reals: []lvs.RealState{rs("203.0.113.11:80", 1), rs("203.0.113.12:80", 2)}}}
	b := []lvs.Entry{{Service: lvs.Service{Key: key, Scheduler: "wrr"}, Reals: []lvs.RealState{rs("203.0.113.12:80", 2), rs("203.0.113.11:80", 1)}}}
	b[0].Stats.Connections, b[0].Reals[0].Active = 7, 3
	if lvs.Digest(a) != lvs.Digest(b) {
		t.Fatal("order or counters changed the digest")
	}
	if a[0].Reals[0].Addr.Port() != 80 || a[0].Reals[0].Weight != 1 {
		t.Fatal("lvs.Digest reordered its argument")
	}
	c := []lvs.Entry{{Service: lvs.Service{Key: key, Scheduler: "wrr"}, Reals: []lvs.RealState{rs("203.0.113.11:80", 1), rs("203.0.113.12:80", 0)}}}
	d := []lvs.Entry{{Service: lvs.Service{Key: key, Scheduler: "rr"}, Reals: a[0].Reals}}
	for _, x := range [][]lvs.Entry{c, d, nil} {
		if lvs.Digest(x) == lvs.Digest(a) {
			t.Fatalf("%+v has the digest of %+v", x, a)
		}
	}
}

// A service the data plane's capability table refuses stays out of the
// kernel, and the rest of the table is still programmed.
func TestReconcileLeavesOutUnsupported(t *testing.T) {
	f := lvstest.NewFake()
	caps := lvs.NFTCapabilities
	f.Caps = &caps
	r, _ := newRec(t, f, lvs.Options{})
	dr := webVS(real(rs1, 1))
	dr.Reals[0].Method = lvs.Tunnel
	ok := lvs.VirtualServer{Name: "dns", Service: lvs.Service{Key: dns, Scheduler: "rr"}, Reals: []lvs.Real{real(rs2, 1)}}
	err := r.Set([]lvs.VirtualServer{dr, ok})
	if err == nil || !strings.Contains(err.Error(), "virtual server web (tcp 192.0.2.100:80) left out: the nftables data plane forwards by nat, dr only; tun needs IPVS") {
		t.Fatalf("Set: %v", err)
	}
	step(t, r, f, "add-service udp 192.0.2.100:53 rr", "add-real udp 192.0.2.100:53 -> 203.0.113.12:8080 weight 1 nat")
}

// The capability tables, read through the same function the daemon, -t
// and the reconciler use.
func TestCapabilities(t *testing.T) {
	for _, tc := range []struct {
		caps  lvs.Capabilities
		svc   lvs.Service
		reals []lvs.Real
		want  []string // fields refused
	}{
		{lvs.IPVSCapabilities, lvs.Service{Key: web, Scheduler: "mh", Flags: lvs.FlagSched1}, []lvs.Real{{Addr: rs1, Method: lvs.Tunnel, Upper: 5}}, nil},
		{lvs.IPVSCapabilities, lvs.Service{Key: web, Scheduler: "rr", Masquerade: true}, nil, []string{"masquerade"}},
		{lvs.NFTCapabilities, lvs.Service{Key: web, Scheduler: "sh", Flags: lvs.FlagSched2, Masquerade: true}, []lvs.Real{real(rs1, 1)}, nil},
		{lvs.NFTCapabilities, lvs.Service{Key: web, Scheduler: "wrr", Flags: lvs.FlagSched1}, nil, []string{"scheduler_flags"}},
		{lvs.NFTCapabilities, lvs.Service{Key: web, Scheduler: "sh", Flags: lvs.FlagSched3}, nil, []string{"scheduler_flags"}},
		{lvs.NFTCapabilities, lvs.Service{Key: lvs.Key{Protocol: lvs.SCTP, Addr: rs1}, Scheduler: "lc", OnePacket: true}, nil,
			[]string{"scheduler", "protocol", "one_packet"}},
		{lvs.NFTCapabilities, lvs.Service{Key: web, Scheduler: "rr"},
			[]lvs.Real{{Addr: netip.MustParseAddrPort("203.0.113.11:0"), Method: lvs.Tunnel, Lower: 1}},
			[]string{"forwarding", "upper_threshold", "address"}},
		// Direct routing on nftables is stateless: hashing schedulers,
		// no persistence.
		{lvs.NFTCapabilities, lvs.Service{Key: web, Scheduler: "mh", Flags: lvs.FlagSched2}, []lvs.Real{{Addr: rs1, Method: lvs.DR, Weight: 1}}, nil},
		{lvs.NFTCapabilities, lvs.Service{Key: web, Scheduler: "rr", Persistence: time.Minute}, []lvs.Real{{Addr: rs1, Method: lvs.DR, Weight: 1}},
			[]string{"scheduler", "persistence_timeout"}},
		{lvs.NFTCapabilities, lvs.Service{Key: lvs.Key{FWMark: 7}, Scheduler: "rr", Masquerade: true}, nil, []string{"masquerade"}},
	} {
		var got []string
		for _, u := range tc.caps.Unsupported(tc.svc, tc.reals) {
			got = append(got, u.Field)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s %+v %+v: refused %q, want %q", tc.caps.Name, tc.svc, tc.reals, got, tc.want)
		}
		if (tc.caps.Check(tc.svc, tc.reals) == nil) != (len(tc.want) == 0) {
			t.Errorf("%s %+v: Check disagrees with Unsupported", tc.caps.Name, tc.svc)
		}
	}
	if c, ok := lvs.CapabilitiesOf("nftables"); !ok || c.Name != "nftables" {
		t.Fatal("no nftables table")
	}
}

// A persistent service on IPVS sets expire_quiescent_template, so that a
// client persisting on a drained or failed server (weight 0) moves on, as
// the issue found it did not; nothing else asks for it.
func TestPersistenceSysctl(t *testing.T) {
	has := func(ss []lvs.Sysctl) bool {
		return slices.ContainsFunc(ss, func(s lvs.Sysctl) bool { return s.Key == "net.ipv4.vs.expire_quiescent_template" && s.Want == "1" })
	}
	svc := lvs.VirtualServer{Service: lvs.Service{Key: lvs.Key{Protocol: lvs.TCP, Addr: netip.MustParseAddrPort("192.0.2.100:80")}, Scheduler: "wrr"},
		Reals: []lvs.Real{{Addr: netip.MustParseAddrPort("203.0.113.11:80"), Weight: 1, Method: lvs.NAT}}}
	if has(lvs.NeededSysctls(lvs.IPVSCapabilities, []lvs.VirtualServer{svc})) {
		t.Fatal("asked for without persistence")
	}
	svc.Service.Persistence = 300 * time.Second
	if !has(lvs.NeededSysctls(lvs.IPVSCapabilities, []lvs.VirtualServer{svc})) {
		t.Fatal("not asked for with persistence on IPVS")
	}
	if has(lvs.NeededSysctls(lvs.NFTCapabilities, []lvs.VirtualServer{svc})) {
		t.Fatal("asked of nftables")
	}
}

// Drift the reconciler can see in List (a real server or a service
// deleted behind its back, as ipvsadm -d / -C do) is repaired and
// reported; its own removals and first programming are not reported.
func TestDriftReported(t *testing.T) {
	f := lvstest.NewFake()
	var repairs []string
	r, _ := newRec(t, f, lvs.Options{OnRepair: func(x lvs.Repair) { repairs = append(repairs, x.Kind+": "+x.Found) }})
	if err := r.Set([]lvs.VirtualServer{webVS(real(rs1, 1), real(rs2, 1))}); err != nil {
		t.Fatal(err)
	}
	step(t, r, f, "add-service tcp 192.0.2.100:80 wrr", "add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat", "add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat")
	step(t, r, f)
	if len(repairs) != 0 {
		t.Fatalf("programming reported as repairs: %q", repairs)
	}

	// ipvsadm -d of one real server
	svc := lvs.Service{Key: web, Scheduler: "wrr"}
	if err := f.Apply([]lvs.Op{{Kind: lvs.DelReal, Service: svc, Real: real(rs2, 1)}}); err != nil {
		t.Fatal(err)
	}
	step(t, r, f, "add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat")
	// ipvsadm -C
	if err := f.Apply([]lvs.Op{{Kind: lvs.DelService, Service: svc}}); err != nil {
		t.Fatal(err)
	}
	step(t, r, f, "add-service tcp 192.0.2.100:80 wrr", "add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat", "add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat")
	want := []string{"real_server: 203.0.113.12:8080 of tcp 192.0.2.100:80 missing from the kernel", "service: tcp 192.0.2.100:80 missing from the kernel"}
	if !slices.Equal(repairs, want) {
		t.Fatalf("repairs %q, want %q", repairs, want)
	}

	// Its own removal of a server, then of the service, and adding them
	// back: no repair.
	repairs = nil
	r.SetHealth(web, rs2, lvs.Health{Up: false, Weight: -1}) // a failed server goes at once
	step(t, r, f, "del-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat")
	r.SetHealth(web, rs2, lvs.Health{Up: true, Weight: -1})
	step(t, r, f, "add-real tcp 192.0.2.100:80 -> 203.0.113.12:8080 weight 1 nat")
	if err := r.Set(nil); err != nil {
		t.Fatal(err)
	}
	step(t, r, f, "del-service tcp 192.0.2.100:80 wrr")
	if err := r.Set([]lvs.VirtualServer{webVS(real(rs1, 1))}); err != nil {
		t.Fatal(err)
	}
	step(t, r, f, "add-service tcp 192.0.2.100:80 wrr", "add-real tcp 192.0.2.100:80 -> 203.0.113.11:8080 weight 1 nat")
	if len(repairs) != 0 {
		t.Fatalf("directord's own changes reported as repairs: %q", repairs)
	}
}

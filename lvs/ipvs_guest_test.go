package lvs

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/ipvs"
)

// The services and real servers of this package's internal tests (the
// reconciler's tests, in package lvs_test, have their own).
var (
	web = Key{Protocol: TCP, Addr: netip.MustParseAddrPort("192.0.2.100:80")}
	dns = Key{Protocol: UDP, Addr: netip.MustParseAddrPort("192.0.2.100:53")}
	rs1 = netip.MustParseAddrPort("203.0.113.11:8080")
	rs2 = netip.MustParseAddrPort("203.0.113.12:8080")
)

func natReal(a netip.AddrPort, w int) Real { return Real{Addr: a, Weight: w, Method: NAT} }

// These tests need a kernel with IPVS. The machines' own kernels have
// none, so make test-ipvs (part of make test) boots Debian's kernel in
// qemu with this package's test binary and runs them there; see
// internal/guest. Outside the guest they skip and say so.
func guestIPVS(t *testing.T) *IPVS {
	t.Helper()
	if os.Getenv("DIRECTORD_IPVS_GUEST") != "1" {
		t.Skip("runs inside the qemu guest with Debian's kernel: make test-ipvs (part of make test)")
	}
	d, err := NewIPVS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.h.(*ipvs.Handle).Flush()
		d.Close()
	})
	if err := d.h.(*ipvs.Handle).Flush(); err != nil {
		t.Fatal(err)
	}
	return d
}

// GuestIPVS is guestIPVS for the package's external tests.
var GuestIPVS = guestIPVS

func guestRec(t *testing.T, d Dataplane) *Reconciler {
	t.Helper()
	r, err := NewReconciler(d, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func reconcileN(t *testing.T, r *Reconciler, want int) {
	t.Helper()
	n, err := r.Reconcile()
	if err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Fatalf("reconcile took %d operations, want %d", n, want)
	}
}

// sameAsKernel checks that what the kernel reports is what was asked.
func sameAsKernel(t *testing.T, d Dataplane, vss []VirtualServer) {
	t.Helper()
	have, err := d.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, vs := range vss {
		i := slices.IndexFunc(have, func(e Entry) bool { return e.Key == vs.Key })
		if i < 0 {
			t.Fatalf("%s not in the kernel", vs.Key)
		}
		if got, want := have[i].Service.normal(), vs.Service.normal(); got != want {
			t.Fatalf("kernel has %+v, want %+v", got, want)
		}
		var got []Real
		for _, r := range have[i].Reals {
			got = append(got, r.Real)
		}
		want := slices.Clone(vs.Reals)
		slices.SortFunc(want, func(a, b Real) int { return a.Addr.Compare(b.Addr) })
		if !slices.Equal(got, want) {
			t.Fatalf("%s: kernel has real servers %+v, want %+v", vs.Key, got, want)
		}
	}
}

func TestGuestIPVSSchedulers(t *testing.T) {
	d := guestIPVS(t)
	r := guestRec(t, d)
	var vss []VirtualServer
	scheds := loadedSchedulers(t)
	// Debian's 6.1 has every scheduler but twos (Linux 6.2).
	for _, s := range []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh", "fo", "ovf"} {
		if !slices.Contains(scheds, s) {
			t.Errorf("the guest kernel has no %s scheduler", s)
		}
	}
	t.Logf("schedulers in this kernel: %v", scheds)
	for i, s := range scheds {
		vss = append(vss, VirtualServer{
			Service: Service{Key: Key{Protocol: TCP, Addr: netip.MustParseAddrPort(fmt.Sprintf("192.0.2.100:%d", 1000+i))}, Scheduler: s},
			Reals:   []Real{natReal(rs1, 1), natReal(rs2, 2)},
		})
	}
	r.Set(vss)
	reconcileN(t, r, len(scheds)*3)
	reconcileN(t, r, 0)
	sameAsKernel(t, d, vss)
}

func TestGuestIPVSFeatures(t *testing.T) {
	d := guestIPVS(t)
	r := guestRec(t, d)
	v6 := netip.MustParseAddrPort("[2001:db8::11]:8080")
	vss := []VirtualServer{
		{Service: Service{Key: web, Scheduler: "sh", Flags: FlagSched1 | FlagSched2},
			Reals: []Real{{Addr: rs1, Weight: 1, Method: DR}, {Addr: rs2, Weight: 1, Method: Tunnel}}},
		{Service: Service{Key: Key{Protocol: TCP, Addr: netip.MustParseAddrPort("192.0.2.100:443")}, Scheduler: "mh", Flags: FlagSched1 | FlagSched2,
			Persistence: 300 * time.Second, PersistenceBits: 24},
			Reals: []Real{{Addr: rs1, Weight: 3, Method: NAT, Upper: 1000, Lower: 100}}},
		{Service: Service{Key: dns, Scheduler: "rr", OnePacket: true},
			Reals: []Real{natReal(netip.MustParseAddrPort("203.0.113.11:53"), 1)}},
		{Service: Service{Key: Key{FWMark: 7}, Scheduler: "wlc", Persistence: time.Minute},
			Reals: []Real{{Addr: netip.MustParseAddrPort("203.0.113.11:0"), Weight: 1, Method: DR}}},
		{Service: Service{Key: Key{FWMark: 8, IPv6: true}, Scheduler: "wrr"},
			Reals: []Real{{Addr: netip.MustParseAddrPort("[2001:db8::11]:0"), Weight: 1, Method: DR}}},
		{Service: Service{Key: Key{Protocol: TCP, Addr: netip.MustParseAddrPort("[2001:db8::100]:80")}, Scheduler: "wrr",
			Persistence: 10 * time.Second, PersistenceBits: 64},
			Reals: []Real{natReal(v6, 2)}},
		{Service: Service{Key: Key{Protocol: SCTP, Addr: netip.MustParseAddrPort("192.0.2.100:3868")}, Scheduler: "rr"},
			Reals: []Real{natReal(netip.MustParseAddrPort("203.0.113.11:3868"), 1)}},
	}
	r.Set(vss)
	reconcileN(t, r, 7+8)
	reconcileN(t, r, 0)
	sameAsKernel(t, d, vss)

	// Scheduler, flags and persistence change in place.
	vss[0].Scheduler, vss[0].Flags = "wlc", 0
	vss[1].Persistence, vss[1].PersistenceBits = 0, 0
	r.Set(vss)
	reconcileN(t, r, 2)
	reconcileN(t, r, 0)
	sameAsKernel(t, d, vss)
}

func TestGuestIPVSOwnership(t *testing.T) {
	d := guestIPVS(t)
	// A service made by hand, as with ipvsadm.
	hand := &ipvs.Service{Address: net.ParseIP("192.0.2.200"), Protocol: 6, Port: 22, SchedName: "rr", AddressFamily: 2}
	if err := d.h.NewService(hand); err != nil {
		t.Fatal(err)
	}
	r := guestRec(t, d)
	vs := VirtualServer{Service: Service{Key: web, Scheduler: "wrr"}, Reals: []Real{natReal(rs1, 1), natReal(rs2, 1)}}
	r.Set([]VirtualServer{vs})
	reconcileN(t, r, 3)

	// One weight change is one operation.
	vs.Reals[1].Weight = 5
	r.Set([]VirtualServer{vs})
	reconcileN(t, r, 1)
	sameAsKernel(t, d, []VirtualServer{vs})

	// A removed real server drains at weight 0 and, idle, goes at the
	// next reconcile.
	vs.Reals = vs.Reals[:1]
	r.Set([]VirtualServer{vs})
	reconcileN(t, r, 1)
	have, _ := d.List()
	for _, e := range have {
		if e.Key == web {
			if rs, ok := e.Real(rs2); !ok || rs.Weight != 0 {
				t.Fatalf("draining server: %+v", e.Reals)
			}
		}
	}
	reconcileN(t, r, 1)
	sameAsKernel(t, d, []VirtualServer{vs})

	// Shutdown removes ours and leaves the hand-made one.
	if err := r.Shutdown(); err != nil {
		t.Fatal(err)
	}
	have, _ = d.List()
	if len(have) != 1 || have[0].Key.Addr != netip.MustParseAddrPort("192.0.2.200:22") {
		t.Fatalf("after shutdown the kernel has %+v", have)
	}
}

// loadedSchedulers lists the IPVS schedulers whose modules are loaded
// (the guest loads every ip_vs_* module it has).
func loadedSchedulers(t *testing.T) []string {
	b, err := os.ReadFile("/proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		name, _, _ := strings.Cut(line, " ")
		if s, ok := strings.CutPrefix(name, "ip_vs_"); ok && s != "ftp" && s != "pe_sip" {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// TestGuestIPVSSyncDaemons starts, lists and stops the kernel's sync
// daemons with the parameters keepalived's lvs_sync_daemon sets.
func TestGuestIPVSSyncDaemons(t *testing.T) {
	guestIPVS(t)
	if out, err := exec.Command("ip", "link", "add", "sync0", "type", "dummy").CombinedOutput(); err != nil {
		t.Fatalf("dummy interface: %v: %s", err, out)
	}
	if out, err := exec.Command("ip", "link", "set", "sync0", "up", "multicast", "on").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	backup := SyncDaemon{State: SyncBackup, Interface: "sync0", SyncID: 51, MaxLen: 1472, Group: netip.MustParseAddr("224.0.0.81"), Port: 8848, TTL: 1}
	master := SyncDaemon{State: SyncMaster, Interface: "sync0", SyncID: 51, MaxLen: 1472, Group: netip.MustParseAddr("224.0.0.81"), Port: 8848, TTL: 1}
	if err := StartSyncDaemon(backup); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { StopSyncDaemon(SyncBackup); StopSyncDaemon(SyncMaster) })
	if err := StartSyncDaemon(master); err != nil {
		t.Fatal(err)
	}
	ds, err := SyncDaemons()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(ds, func(a, b SyncDaemon) int { return int(a.State) - int(b.State) })
	if want := []SyncDaemon{master, backup}; !slices.Equal(ds, want) {
		t.Fatalf("the kernel runs %+v, want %+v", ds, want)
	}
	// A backup that becomes master and back: the master daemon comes and
	// goes, the backup one stays.
	if err := StopSyncDaemon(SyncMaster); err != nil {
		t.Fatal(err)
	}
	if ds, _ := SyncDaemons(); len(ds) != 1 || ds[0] != backup {
		t.Fatalf("after stopping the master daemon: %+v", ds)
	}
	if err := StopSyncDaemon(SyncMaster); err != nil {
		t.Fatalf("stopping a stopped daemon: %v", err)
	}
	// An IPv6 group goes in the kernel's attribute for one.
	if err := StopSyncDaemon(SyncBackup); err != nil {
		t.Fatal(err)
	}
	for _, d := range []SyncDaemon{backup, master} {
		d.Group = netip.MustParseAddr("ff02::8848")
		if err := StartSyncDaemon(d); err != nil {
			t.Fatalf("%s daemon with an IPv6 group: %v", d.State, err)
		}
		ds, err := SyncDaemons()
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(ds, func(x SyncDaemon) bool { return x.State == d.State }); i < 0 || ds[i] != d {
			t.Fatalf("the kernel runs %+v, want %+v", ds, d)
		}
	}
}

// TestGuestIPVSRefusedServiceIsolated: the kernel refuses a twos service
// (Debian's 6.1 has no ip_vs_twos) with ENOENT; the schedulers the data
// plane reports are exactly those the kernel accepts, and a reconciler
// that is given the refused service anyway (as with every scheduler
// assumed) programs the other services and names it.
func TestGuestIPVSRefusedServiceIsolated(t *testing.T) {
	d := guestIPVS(t)
	for _, s := range IPVSSchedulers {
		svc := Service{Key: web, Scheduler: s}
		err := d.Apply([]Op{{Kind: AddService, Service: svc}})
		if (err == nil) != slices.Contains(d.Capabilities().Schedulers, s) {
			t.Errorf("scheduler %s: the kernel says %v, the data plane's table %v", s, err, d.Capabilities().Schedulers)
		}
		if err == nil {
			if err := d.Apply([]Op{{Kind: DelService, Service: svc}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if slices.Contains(d.Capabilities().Schedulers, "twos") {
		t.Skip("this kernel has twos: nothing it refuses to test with") // Debian's 6.1 has none
	}
	d.caps = IPVSCapabilities // as if the kernel's list could not be read
	r := guestRec(t, d)
	twos := Key{Protocol: TCP, Addr: netip.MustParseAddrPort("192.0.2.100:81")}
	other := Key{Protocol: TCP, Addr: netip.MustParseAddrPort("192.0.2.100:82")}
	vss := []VirtualServer{
		{Service: Service{Key: web, Scheduler: "rr"}, Reals: []Real{natReal(rs1, 1)}},
		{Service: Service{Key: twos, Scheduler: "twos"}, Reals: []Real{natReal(rs1, 1)}},
		{Service: Service{Key: other, Scheduler: "wrr"}, Reals: []Real{natReal(rs2, 1)}},
	}
	r.Set(vss)
	if _, err := r.Reconcile(); err == nil || !strings.Contains(err.Error(), "192.0.2.100:81") {
		t.Fatalf("reconcile: %v; want the twos service named", err)
	}
	if e := r.Last().Refused[twos.String()]; e == "" {
		t.Fatalf("refused: %v", r.Last().Refused)
	}
	sameAsKernel(t, d, []VirtualServer{vss[0], vss[2]})
	if have, err := d.List(); err != nil || len(have) != 2 {
		t.Fatalf("the kernel holds %d services (%v); want the 2 not refused", len(have), err)
	}
	// The retry changes nothing else.
	if n, err := r.Reconcile(); err == nil || n != 2 {
		t.Fatalf("retry: %d operations, %v; want the twos service's 2 again", n, err)
	}
	sameAsKernel(t, d, []VirtualServer{vss[0], vss[2]})
}

// TestGuestIPVSFlows: a connection through IPVS (from the guest itself to
// a VIP whose real server is a local address) and its persistence
// template show in Flows as ipvsadm -Lnc lists them.
func TestGuestIPVSFlows(t *testing.T) {
	d := guestIPVS(t)
	localRealServer(t, "flows0")
	r := guestRec(t, d)
	svc := Service{Key: web, Scheduler: "rr", Persistence: 300 * time.Second}
	r.Set([]VirtualServer{{Service: svc, Reals: []Real{natReal(netip.MustParseAddrPort("203.0.113.11:8080"), 1)}}})
	reconcileN(t, r, 2)
	c, err := net.DialTimeout("tcp4", "192.0.2.100:80", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	fs, err := d.Flows()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile("/proc/net/ip_vs_conn")
	t.Logf("/proc/net/ip_vs_conn:\n%s", b)
	var conn, tmpl bool
	for _, f := range fs {
		if f.Service != web || f.Real != netip.MustParseAddrPort("203.0.113.11:8080") {
			t.Errorf("flow %+v", f)
			continue
		}
		switch {
		case f.Template && f.Client == netip.AddrPortFrom(local.Addr(), 0) && f.Expires > 200*time.Second:
			tmpl = true
		case !f.Template && f.Client == local && f.Protocol == TCP && f.Expires > 0:
			conn = true
		}
	}
	if !conn || !tmpl {
		t.Fatalf("flows %+v; want the connection from %s and its template", fs, local)
	}
}

// TestGuestIPVSTimeouts: SetTimeouts is ipvsadm --set: the kernel reports
// the three timeouts back (and ipvsadm -L --timeout shows them).
func TestGuestIPVSTimeouts(t *testing.T) {
	d := guestIPVS(t)
	// Not the kernel's 900 120 300: a setting that did nothing would show.
	want := Timeouts{TCP: 20 * time.Minute, TCPFin: 90 * time.Second, UDP: 4 * time.Minute}
	if err := d.SetTimeouts(want); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.SetTimeouts(Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second})
	})
	if got, err := d.Timeouts(); err != nil || got != want {
		t.Fatalf("timeouts %+v, %v; want %+v", got, err, want)
	}
	if p, err := exec.LookPath("ipvsadm"); err == nil {
		out, err := exec.Command(p, "-L", "--timeout").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "1200 90 240") {
			t.Fatalf("ipvsadm -L --timeout: %v\n%s", err, out)
		}
	}
}

// TestGuestIPVSStats64: the 64-bit counters read with our own dump agree
// with moby/ipvs's 32-bit ones (traffic through IPVS, from the guest to a
// local real server), and Zero sets them to zero, as ipvsadm -Z.
func TestGuestIPVSStats64(t *testing.T) {
	d := guestIPVS(t)
	localRealServer(t, "stats0")
	r := guestRec(t, d)
	r.Set([]VirtualServer{{Service: Service{Key: web, Scheduler: "rr"}, Reals: []Real{natReal(netip.MustParseAddrPort("203.0.113.11:8080"), 1)}}})
	reconcileN(t, r, 2)
	for range 3 {
		c, err := net.DialTimeout("tcp4", "192.0.2.100:80", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	// The kernel sums its per-CPU counters every two seconds (its
	// estimator): wait for them.
	var narrow []Entry
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if narrow, err = d.List(); err != nil {
			t.Fatal(err)
		}
		if len(narrow) == 1 && narrow[0].Stats.Connections == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kernel's counters: %+v", narrow)
		}
	}
	wide, err := d.ListStats()
	if err != nil {
		t.Fatal(err)
	}
	// Packets may still trickle (the closing handshakes) between the two
	// reads: the later read has at least as many.
	// (The real server may count more: IPVS keeps a deleted real
	// server's counters for a while and reuses them, here the previous
	// test's.)
	if len(wide) != 1 || len(wide[0].Reals) != 1 || wide[0].Stats.Connections != 3 ||
		wide[0].Reals[0].Stats.Connections != narrow[0].Reals[0].Stats.Connections || narrow[0].Reals[0].Stats.PacketsIn == 0 ||
		wide[0].Reals[0].Stats.PacketsIn < narrow[0].Reals[0].Stats.PacketsIn || wide[0].Stats.BytesIn < narrow[0].Stats.BytesIn {
		t.Fatalf("64-bit %+v %+v\n32-bit %+v %+v", wide[0].Stats, wide[0].Reals, narrow[0].Stats, narrow[0].Reals)
	}
	if err := d.Zero(); err != nil {
		t.Fatal(err)
	}
	if z, err := d.ListStats(); err != nil || z[0].Stats.Connections != 0 || z[0].Reals[0].Stats.PacketsIn != 0 {
		t.Fatalf("after Zero: %+v %+v, %v", z[0].Stats, z[0].Reals, err)
	}
}

// localRealServer puts the VIP 192.0.2.100 and a real server's address
// 203.0.113.11 on a dummy link of the guest, with a TCP server on
// 203.0.113.11:8080 that holds each connection open: IPVS then balances
// the guest's own connections to the VIP (its local real server).
func localRealServer(t *testing.T, link string) {
	t.Helper()
	for _, args := range [][]string{
		{"link", "add", link, "type", "dummy"},
		{"link", "set", link, "up"},
		{"addr", "add", "192.0.2.100/32", "dev", link},
		{"addr", "add", "203.0.113.11/32", "dev", link},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	t.Cleanup(func() { exec.Command("ip", "link", "del", link).Run() })
	ln, err := net.Listen("tcp4", "203.0.113.11:8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
}

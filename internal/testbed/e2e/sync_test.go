package e2e

import (
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	dsync "github.com/directord/directord/sync"
)

// conntrackTable opens the conntrack table of a host of its own.
func conntrackTable(t *testing.T) *dsync.Table {
	t.Helper()
	lab.Require(t)
	l := lab.New(t)
	ns, err := scene.NetNS(l.AddHost("dir"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	tb, err := dsync.OpenTable(int(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	return tb
}

// TestConntrackWrite: a flow written with its DNAT reads back as a DNAT'd
// flow from the client through the VIP to the real server.
func TestConntrackWrite(t *testing.T) {
	tb := conntrackTable(t)
	f := dsync.Flow{Proto: syscall.IPPROTO_TCP, Client: netip.MustParseAddrPort("192.0.2.50:40000"),
		VIP: netip.MustParseAddrPort("192.0.2.100:80"), Real: netip.MustParseAddrPort("203.0.113.11:8080"), Timeout: 300, TCPState: 3}
	if err := tb.Write(f); err != nil {
		t.Fatal(err)
	}
	if err := tb.Write(f); err != nil {
		t.Fatalf("writing it again (refresh): %v", err)
	}
	got, err := tb.Flows(map[netip.Addr]bool{f.VIP.Addr(): true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Real != f.Real || got[0].Client != f.Client || got[0].TCPState != 3 {
		t.Fatalf("read back %+v, want %+v", got, f)
	}
	if err := tb.Delete(f); err != nil {
		t.Fatal(err)
	}
	if got, _ := tb.Flows(map[netip.Addr]bool{f.VIP.Addr(): true}); len(got) != 0 {
		t.Fatalf("after delete: %+v", got)
	}
}

// TestConntrackWriteBatch: flows written in batches larger than one
// sendmsg carries, some new and some there already (refreshed), one the
// kernel refuses: every other is written, and the refused one is named.
func TestConntrackWriteBatch(t *testing.T) {
	tb := conntrackTable(t)
	vip := netip.MustParseAddrPort("192.0.2.100:80")
	flow := func(i int, timeout uint32) dsync.Flow {
		return dsync.Flow{Proto: syscall.IPPROTO_TCP, Client: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.50"), uint16(10000+i)),
			VIP: vip, Real: netip.MustParseAddrPort("203.0.113.11:8080"), Timeout: timeout, TCPState: 3}
	}
	var old []dsync.Flow
	for i := range 300 {
		old = append(old, flow(i, 100))
	}
	if n, err := tb.WriteBatch(old); n != 300 || err != nil {
		t.Fatalf("first batch: %d written, %v", n, err)
	}
	var fs []dsync.Flow
	for i := range 700 {
		fs = append(fs, flow(i, 3000)) // 300 to refresh, 400 new
	}
	bad := flow(9999, 3000)
	bad.Client = netip.MustParseAddrPort("[2001:db8::1]:8080") // an IPv6 client of an IPv4 VIP
	fs = append(fs[:350], append([]dsync.Flow{bad}, fs[350:]...)...)
	n, err := tb.WriteBatch(fs)
	if n != 700 || err == nil || !strings.Contains(err.Error(), bad.Key()) {
		t.Fatalf("second batch: %d written (want 700), error %v (want one naming %s)", n, err, bad.Key())
	}
	got, err := tb.Flows(map[netip.Addr]bool{vip.Addr(): true})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 700 {
		t.Fatalf("%d flows in the table, want 700", len(got))
	}
	for _, f := range got {
		if f.Timeout < 2000 || f.Real != flow(0, 0).Real {
			t.Fatalf("flow %+v not refreshed or not DNAT'd", f)
		}
	}
}

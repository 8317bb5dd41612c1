package e2e

import (
	"net/netip"
	"syscall"
	"testing"

	"github.com/directord/directord/internal/lab"
	"github.com/directord/directord/internal/lblab"
	dsync "github.com/directord/directord/sync"
)

// TestConntrackWrite: a flow written with its DNAT reads back as a DNAT'd
// flow from the client through the VIP to the real server.
func TestConntrackWrite(t *testing.T) {
	lab.Require(t)
	l := lab.New(t)
	h := l.AddHost("dir")
	ns, err := lblab.NetNS(h)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	tb, err := dsync.OpenTable(int(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
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

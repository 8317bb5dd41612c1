package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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

// relay forwards a master's sync connection to the backup from the
// master's own address, keeping the frames it carried, and on inject
// writes a copy of the first one into the stream: a captured message
// replayed by someone on the path.
type relay struct {
	mu     sync.Mutex
	frames [][]byte
	inject chan struct{}
}

// run accepts on ln and relays each connection to backup from local, in
// h's namespace.
func (r *relay) run(h *lab.Host, ln net.Listener, local netip.Addr, backup string) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		var out net.Conn
		err = h.Do(func() (err error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: local.AsSlice()}}
			out, err = d.Dial("tcp", backup)
			return err
		})
		if err != nil {
			in.Close()
			continue
		}
		go func() { io.Copy(in, out); in.Close() }()
		go func() {
			defer out.Close()
			// The handshake: the master's nonce and proof, 64 bytes.
			if _, err := io.CopyN(out, in, 64); err != nil {
				return
			}
			frames := make(chan []byte)
			go func() {
				defer close(frames)
				for {
					var n [4]byte
					if _, err := io.ReadFull(in, n[:]); err != nil {
						return
					}
					b := make([]byte, 4+binary.BigEndian.Uint32(n[:]))
					copy(b, n[:])
					if _, err := io.ReadFull(in, b[4:]); err != nil {
						return
					}
					frames <- b
				}
			}()
			for {
				select {
				case f, ok := <-frames:
					if !ok {
						return
					}
					r.mu.Lock()
					r.frames = append(r.frames, f)
					r.mu.Unlock()
					if _, err := out.Write(f); err != nil {
						return
					}
				case <-r.inject:
					r.mu.Lock()
					first := r.frames[0]
					r.mu.Unlock()
					out.Write(first)
				}
			}
		}()
	}
}

// TestSyncChannelAttacks: the sync between two hosts, through a relay on
// the master's path. The backup writes the flow of its virtual server,
// refuses one to an address that is not its virtual server (a NAT entry
// that would open a way through it), and refuses a captured message
// replayed into the stream; each refusal is counted by reason. Nothing
// on the wire is in clear.
func TestSyncChannelAttacks(t *testing.T) {
	lab.Require(t, "nft")
	l := lab.New(t)
	a, b := l.AddHost("ma"), l.AddHost("bk")
	l.Connect(a, "eth0", b, "eth0")
	a.AddAddr("eth0", "198.51.100.1/24")
	b.AddAddr("eth0", "198.51.100.2/24")
	nsA, err := scene.NetNS(a)
	if err != nil {
		t.Fatal(err)
	}
	defer nsA.Close()
	nsB, err := scene.NetNS(b)
	if err != nil {
		t.Fatal(err)
	}
	defer nsB.Close()
	good := dsync.Flow{Proto: syscall.IPPROTO_TCP, Client: netip.MustParseAddrPort("192.0.2.50:40000"),
		VIP: netip.MustParseAddrPort("192.0.2.100:80"), Real: netip.MustParseAddrPort("203.0.113.11:8080"), Timeout: 300, TCPState: 3}
	bad := good
	bad.VIP = netip.MustParseAddrPort("192.0.2.200:22") // not a virtual server of the backup
	tbA, err := dsync.OpenTable(int(nsA.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer tbA.Close()
	for _, f := range []dsync.Flow{good, bad} {
		if err := tbA.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	key := []byte("directord sync e2e key, 32 bytes")
	rl := &relay{inject: make(chan struct{})}
	if err := a.Do(func() error {
		ln, err := net.Listen("tcp", "198.51.100.1:7200")
		if err != nil {
			return err
		}
		t.Cleanup(func() { ln.Close() })
		go rl.run(a, ln, netip.MustParseAddr("198.51.100.1"), "198.51.100.2:7100")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &lab.Buffer{}
	defer func() {
		if t.Failed() {
			t.Logf("sync log:\n%s", logs.String())
		}
	}()
	start := func(h *lab.Host, c dsync.Config, master bool) *dsync.Syncer {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("host", h.Name)
		s, err := dsync.New(c)
		if err != nil {
			t.Fatal(err)
		}
		s.SetMaster(master)
		done := make(chan error, 1)
		go func() { done <- h.Do(func() error { return s.Run(ctx) }) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: %v", h.Name, err)
			}
		})
		return s
	}
	backup := start(b, dsync.Config{Listen: netip.MustParseAddrPort("198.51.100.2:7100"), Peer: netip.MustParseAddrPort("198.51.100.1:7100"),
		Key: key, NetNS: int(nsB.Fd()), VIPs: []netip.Addr{good.VIP.Addr()},
		Services: []dsync.Service{{Proto: syscall.IPPROTO_TCP, VIP: good.VIP, Reals: []netip.AddrPort{good.Real}}}}, false)
	start(a, dsync.Config{Listen: netip.MustParseAddrPort("198.51.100.1:7100"), Peer: netip.MustParseAddrPort("198.51.100.1:7200"),
		Key: key, NetNS: int(nsA.Fd()), VIPs: []netip.Addr{good.VIP.Addr(), bad.VIP.Addr()}, Resync: time.Second}, true)

	tbB, err := dsync.OpenTable(int(nsB.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer tbB.Close()
	if err := lab.Eventually(10*time.Second, func() error {
		got, err := tbB.Flows(map[netip.Addr]bool{good.VIP.Addr(): true, bad.VIP.Addr(): true})
		if err != nil {
			return err
		}
		if len(got) != 1 || got[0].VIP != good.VIP {
			return fmt.Errorf("the backup's table: %+v", got)
		}
		if n := backup.Status().Rejected[dsync.RejectNotService]; n == 0 {
			return errors.New("the flow to 192.0.2.200:22 was not counted as refused")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rl.mu.Lock()
	for _, f := range rl.frames {
		if bytes.Contains(f, []byte("192.0.2.50")) || bytes.Contains(f, []byte("resync")) {
			t.Fatal("a frame carries flows in clear")
		}
	}
	rl.mu.Unlock()
	rl.inject <- struct{}{}
	if err := lab.Eventually(10*time.Second, func() error {
		if n := backup.Status().Rejected[dsync.RejectReplay]; n == 0 {
			return fmt.Errorf("the replayed frame was not refused: %+v", backup.Status())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The master reconnects (a new session) and goes on.
	if err := lab.Eventually(10*time.Second, func() error {
		if st := backup.Status(); st.Received < 2 {
			return fmt.Errorf("%+v", st)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("backup: %+v", backup.Status())
}

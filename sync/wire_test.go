package sync

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
)

func flow(i int) Flow {
	return Flow{Proto: syscall.IPPROTO_TCP, Client: netip.AddrPortFrom(netip.MustParseAddr("203.0.113.7"), uint16(1024+i)),
		VIP: netip.MustParseAddrPort("192.0.2.100:80"), Real: netip.MustParseAddrPort("198.51.100.11:8080"), Timeout: 300, TCPState: tcpEstablished}
}

func session(key string) (*sealer, *opener) {
	return &sealer{aead: sessionAEAD([]byte(key))}, &opener{aead: sessionAEAD([]byte(key))}
}

// body is a frame without its length.
func body(frame []byte) []byte { return frame[4:] }

// TestFrames: frames are sealed and numbered; a frame of another session,
// a changed byte, a replayed or a skipped frame are refused, and the
// plaintext never shows on the wire.
func TestFrames(t *testing.T) {
	w, r := session("0123456789abcdef0123456789abcdef")
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	m := message{Op: "events", Events: []event{{Flow: flow(1)}, {Del: true, Flow: flow(2)}}}
	f1 := w.seal(m, at)
	if int(binary.BigEndian.Uint32(f1[:4])) != len(f1)-4 {
		t.Fatalf("length %d of a %d-byte frame", binary.BigEndian.Uint32(f1[:4]), len(f1))
	}
	if bytes.Contains(f1, []byte("203.0.113.7")) || bytes.Contains(f1, []byte(`"events"`)) {
		t.Fatal("the frame carries the flows in clear")
	}
	got, err := r.open(body(f1))
	if err != nil {
		t.Fatal(err)
	}
	m.At = at.UnixMicro()
	if a, b := fmt.Sprintf("%+v", got), fmt.Sprintf("%+v", m); a != b {
		t.Fatalf("opened %s\nwant %s", a, b)
	}
	// A replay of the first frame, captured on the wire: refused.
	if _, err := r.open(body(f1)); !errors.Is(err, errReplay) {
		t.Fatalf("replayed frame: %v", err)
	}
	f2, f3 := w.seal(m, at), w.seal(m, at)
	if _, err := r.open(body(f3)); !errors.Is(err, errReplay) {
		t.Fatalf("a frame skipped: %v", err)
	}
	changed := slices.Clone(body(f2))
	changed[len(changed)-1] ^= 1
	if _, err := r.open(changed); !errors.Is(err, errAuth) {
		t.Fatalf("a changed byte: %v", err)
	}
	if _, err := r.open(body(f2)); err != nil {
		t.Fatalf("the genuine frame after a forged one: %v", err)
	}
	// A frame of another session (another key) means nothing here.
	other, _ := session("fedcba9876543210fedcba9876543210")
	other.seq = r.last
	if _, err := r.open(body(other.seal(m, at))); !errors.Is(err, errAuth) {
		t.Fatalf("another session's frame: %v", err)
	}
	if _, err := r.open([]byte("short")); !errors.Is(err, errFormat) {
		t.Fatalf("a short frame: %v", err)
	}
	// An oversized length ends the connection before reading the body.
	big := binary.BigEndian.AppendUint32(nil, maxFrame+1)
	if _, err := readFrame(bytes.NewReader(big)); !errors.Is(err, errFormat) {
		t.Fatalf("oversized frame: %v", err)
	}
}

// Every message of a large table fits a frame.
func TestResyncInParts(t *testing.T) {
	var flows []Flow
	for i := range 2*resyncChunk + 10 {
		flows = append(flows, flow(i))
	}
	ms := resyncMessages(flows)
	if len(ms) != 3 || !ms[0].More || !ms[1].More || ms[2].More || len(ms[2].Flows) != 10 {
		t.Fatalf("%d parts", len(ms))
	}
	c, _ := session("0123456789abcdef")
	for _, m := range ms {
		if n := len(c.seal(m, time.Now())); n > maxFrame {
			t.Fatalf("a part is %d bytes, over %d", n, maxFrame)
		}
	}
	if ms := resyncMessages(nil); len(ms) != 1 || ms[0].More || ms[0].Op != "resync" {
		t.Fatalf("empty table: %+v", ms)
	}
	var es []PersistEntry
	for i := range persistChunk + 1 {
		es = append(es, PersistEntry{Service: "tcp 192.0.2.100:80", Real: flow(i).Real, Client: flow(i).Client.Addr(), TTL: time.Minute})
	}
	if ms := persistMessages(es); len(ms) != 2 || len(ms[1].Persist) != 1 || len(c.seal(ms[0], time.Now())) > maxFrame {
		t.Fatalf("persistence in %d parts", len(ms))
	}
	if ms := persistMessages(nil); len(ms) != 0 {
		t.Fatalf("no entries sent as %d messages", len(ms))
	}
}

func TestBatches(t *testing.T) {
	for _, queued := range []int{0, 1, maxEvents - 1, maxEvents, 3*maxEvents + 7} {
		q := make(chan event, queued+1)
		for i := range queued {
			q <- event{Flow: flow(i + 1)}
		}
		bs := batches(event{Flow: flow(0)}, q)
		var order []uint16
		for _, b := range bs {
			if len(b) == 0 || len(b) > maxEvents {
				t.Fatalf("%d queued: a batch of %d", queued, len(b))
			}
			for _, e := range b {
				order = append(order, e.Flow.Client.Port()-1024)
			}
		}
		if len(order) != queued+1 || len(bs) != (queued+maxEvents)/maxEvents || len(q) != 0 {
			t.Fatalf("%d queued: %d events in %d batches, %d left", queued, len(order), len(bs), len(q))
		}
		for i, p := range order {
			if int(p) != i {
				t.Fatalf("%d queued: out of order at %d", queued, i)
			}
		}
	}
}

func TestRateWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	w := rateWindow{max: 3, start: t0}
	var got []bool
	for _, at := range []time.Duration{0, 100, 200, 300, 999, 1000, 1001, 1500, 1999, 2000} {
		got = append(got, w.allow(t0.Add(at*time.Millisecond)))
	}
	want := []bool{true, true, true, false, false, true, true, true, false, true}
	if !slices.Equal(got, want) {
		t.Fatalf("allowed %v, want %v", got, want)
	}
}

// fakeTable records what the backup writes and deletes.
type fakeTable struct {
	flows map[string]Flow
	ops   []string
	fail  error
}

func (f *fakeTable) Flows(map[netip.Addr]bool) ([]Flow, error) { return nil, nil }
func (f *fakeTable) Close() error                              { return nil }
func (f *fakeTable) WriteBatch(fs []Flow) (int, error) {
	if f.fail != nil {
		return 0, f.fail
	}
	for _, fl := range fs {
		f.flows[fl.Key()] = fl
	}
	f.ops = append(f.ops, fmt.Sprintf("write %d", len(fs)))
	return len(fs), nil
}
func (f *fakeTable) Delete(fl Flow) error {
	delete(f.flows, fl.Key())
	f.ops = append(f.ops, "delete "+fl.Client.String())
	return nil
}

// The backup applies events in order, the writes between two deletions in
// one batch, and removes what a resync no longer has only after its last
// part.
func TestApply(t *testing.T) {
	tb := &fakeTable{flows: map[string]Flow{}}
	s := &Syncer{table: tb, log: slog.New(slog.DiscardHandler)}
	s.SetServices([]Service{{Proto: syscall.IPPROTO_TCP, VIP: flow(0).VIP, Reals: []netip.AddrPort{flow(0).Real}}})
	st := newReceiveState()
	s.apply(message{Op: "events", Events: []event{{Flow: flow(1)}, {Flow: flow(2)}, {Del: true, Flow: flow(1)}, {Flow: flow(3)}}}, st)
	if want := []string{"write 2", "delete 203.0.113.7:1025", "write 1"}; !slices.Equal(tb.ops, want) {
		t.Fatalf("ops %q, want %q", tb.ops, want)
	}
	tb.ops = nil
	s.apply(message{Op: "resync", Flows: []Flow{flow(3)}, More: true}, st)
	s.apply(message{Op: "resync", Flows: []Flow{flow(4)}, More: true}, st)
	if _, ok := tb.flows[flow(2).Key()]; !ok || len(tb.flows) != 3 {
		t.Fatalf("a flow went before the resync ended: %v", tb.ops)
	}
	s.apply(message{Op: "resync", Flows: []Flow{flow(5)}}, st)
	if want := []string{"write 1", "write 1", "write 1", "delete 203.0.113.7:1026"}; !slices.Equal(tb.ops, want) {
		t.Fatalf("ops %q, want %q", tb.ops, want)
	}
	if len(tb.flows) != 3 || len(st.seen) != 0 || s.lastResync.IsZero() {
		t.Fatalf("after the resync: %d flows, %d seen", len(tb.flows), len(st.seen))
	}
	tb.fail = errors.New("ENOMEM")
	s.apply(message{Op: "events", Events: []event{{Flow: flow(6)}, {Flow: flow(7)}}}, st)
	if s.failed.Load() != 2 || s.applied.Load() != 6 {
		t.Fatalf("failed %d applied %d", s.failed.Load(), s.applied.Load())
	}
}

// TestAdmit: a backup writes (or deletes) only flows to its own virtual
// servers whose NAT target is one of their real servers, with timeouts
// capped; everything else is dropped and counted by reason.
func TestAdmit(t *testing.T) {
	tb := &fakeTable{flows: map[string]Flow{}}
	s := &Syncer{table: tb, log: slog.New(slog.DiscardHandler)}
	web := flow(0)
	s.SetServices([]Service{{Proto: syscall.IPPROTO_TCP, VIP: web.VIP, Reals: []netip.AddrPort{web.Real}}})
	long := flow(1)
	long.Timeout = 1 << 31
	udp := flow(2)
	udp.Proto = syscall.IPPROTO_UDP
	otherVIP := flow(3)
	otherVIP.VIP = netip.MustParseAddrPort("198.51.100.1:22") // a firewall bypass, if it were written
	otherReal := flow(4)
	otherReal.Real = netip.MustParseAddrPort("10.0.0.1:22")
	icmp := flow(5)
	icmp.Proto = 1
	st := newReceiveState()
	s.apply(message{Op: "events", Events: []event{{Flow: web}, {Flow: long}, {Flow: udp}, {Flow: otherVIP}, {Flow: otherReal},
		{Flow: icmp}, {Del: true, Flow: otherVIP}}}, st)
	s.apply(message{Op: "resync", Flows: []Flow{web, long, otherReal}}, st)
	if len(tb.flows) != 2 {
		t.Fatalf("written %v", tb.flows)
	}
	if got := tb.flows[long.Key()].Timeout; got != maxTimeoutStream {
		t.Fatalf("timeout %d written, want it capped at %d", got, maxTimeoutStream)
	}
	want := map[string]uint64{RejectNotService: 3, RejectNotReal: 2, RejectProtocol: 1} // udp: no udp service
	if got := s.Status().Rejected; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rejected %v, want %v", got, want)
	}
}

// A conntrack entry becomes a Flow only when it is DNAT'd to a VIP, and a
// Flow becomes the attributes that create it with its DNAT.
func TestConntrackTranslation(t *testing.T) {
	vip := netip.MustParseAddr("192.0.2.100")
	vips := map[netip.Addr]bool{vip: true}
	ct := conntrack.NewFlow(syscall.IPPROTO_TCP, conntrack.StatusDstNAT|conntrack.StatusAssured,
		netip.MustParseAddr("203.0.113.7"), vip, 40000, 80, 120, 0)
	ct.TupleReply.IP.SourceAddress = netip.MustParseAddr("198.51.100.11")
	ct.TupleReply.IP.DestinationAddress = netip.MustParseAddr("203.0.113.7")
	ct.TupleReply.Proto = conntrack.ProtoTuple{Protocol: syscall.IPPROTO_TCP, SourcePort: 8080, DestinationPort: 40000}
	ct.ProtoInfo.TCP = &conntrack.ProtoInfoTCP{State: tcpEstablished}
	f, ok := fromConntrack(ct, vips)
	want := Flow{Proto: syscall.IPPROTO_TCP, Client: netip.MustParseAddrPort("203.0.113.7:40000"), VIP: netip.MustParseAddrPort("192.0.2.100:80"),
		Real: netip.MustParseAddrPort("198.51.100.11:8080"), Timeout: 120, TCPState: tcpEstablished}
	if !ok || f != want {
		t.Fatalf("fromConntrack = %+v %v, want %+v", f, ok, want)
	}
	if _, ok := fromConntrack(ct, map[netip.Addr]bool{netip.MustParseAddr("192.0.2.101"): true}); ok {
		t.Fatal("a flow to another address was taken")
	}
	plain := ct
	plain.Status = conntrack.StatusAssured
	if _, ok := fromConntrack(plain, vips); ok {
		t.Fatal("a flow without DNAT was taken")
	}

	attrs := createAttrs(want)
	for _, c := range []struct {
		path []uint16
		want []byte
	}{
		{[]uint16{ctaTupleOrig, ctaTupleIP, ctaIPv4Src}, netip.MustParseAddr("203.0.113.7").AsSlice()},
		{[]uint16{ctaTupleOrig, ctaTupleIP, ctaIPv4Dst}, vip.AsSlice()},
		{[]uint16{ctaTupleOrig, ctaTupleProto, ctaProtoDst}, []byte{0, 80}},
		{[]uint16{ctaNATDst, ctaNATv4Min}, netip.MustParseAddr("198.51.100.11").AsSlice()},
		{[]uint16{ctaNATDst, ctaNATProto, ctaPortMin}, []byte{0x1f, 0x90}},
		{[]uint16{ctaStatus}, u32(0, ipsConfirmed|ipsSeenReply|ipsAssured).Data},
		{[]uint16{ctaTimeout}, u32(0, 120).Data},
		{[]uint16{ctaProtoinfo, ctaProtoTCP, ctaTCPState}, []byte{tcpEstablished}},
	} {
		if got := attr(t, attrs, c.path...).Data; !bytes.Equal(got, c.want) {
			t.Errorf("attribute %v: %x, want %x", c.path, got, c.want)
		}
	}
	// A zero timeout still makes a flow, for a second; a TCP flow without
	// a state is taken as established.
	bare := want
	bare.Timeout, bare.TCPState = 0, 0
	if got := attr(t, createAttrs(bare), ctaTimeout).Data; !bytes.Equal(got, u32(0, 1).Data) {
		t.Errorf("timeout of a zero-timeout flow: %x", got)
	}
	if got := attr(t, createAttrs(bare), ctaProtoinfo, ctaProtoTCP, ctaTCPState).Data; !bytes.Equal(got, []byte{tcpEstablished}) {
		t.Errorf("TCP state of a flow without one: %x", got)
	}
	b, _ := json.Marshal(want)
	if !strings.Contains(string(b), `"c":"203.0.113.7:40000"`) {
		t.Errorf("wire form %s", b)
	}
}

// attr is the attribute at path in nested attributes.
func attr(t *testing.T, as []netfilter.Attribute, path ...uint16) netfilter.Attribute {
	t.Helper()
	var a netfilter.Attribute
	for _, typ := range path {
		i := slices.IndexFunc(as, func(a netfilter.Attribute) bool { return a.Type == typ })
		if i < 0 {
			t.Fatalf("no attribute %v", path)
		}
		a, as = as[i], as[i].Children
	}
	return a
}

// The lag of a batch runs from its oldest stamped event.
func TestOldest(t *testing.T) {
	if got := oldest([]event{{At: 30}, {}, {At: 10}, {At: 20}}); got != 10 {
		t.Fatalf("oldest = %d", got)
	}
	if got := oldest([]event{{}}); got != 0 {
		t.Fatalf("oldest of unstamped = %d", got)
	}
}

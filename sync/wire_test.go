package sync

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
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

func TestCodec(t *testing.T) {
	c := codec{key: []byte("0123456789abcdef0123456789abcdef")}
	at := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	m := message{Op: "events", Events: []event{{Flow: flow(1)}, {Del: true, Flow: flow(2)}}}
	line := c.encode(m, at)
	if line[len(line)-1] != '\n' || bytes.Count(line, []byte("\n")) != 1 {
		t.Fatalf("not one line: %q", line)
	}
	got, err := c.decode(line[:len(line)-1])
	if err != nil {
		t.Fatal(err)
	}
	m.At = at.UnixMicro()
	if a, b := fmt.Sprintf("%+v", got), fmt.Sprintf("%+v", m); a != b {
		t.Fatalf("decoded %s\nwant %s", a, b)
	}
	body := line[65 : len(line)-1]
	for _, tc := range []struct {
		name string
		line []byte
		want error
	}{
		{"another key", codec{key: []byte("fedcba9876543210fedcba9876543210")}.encode(m, at), errAuth},
		{"a changed byte", append(slices.Clone(line[:65]), bytes.Replace(body, []byte(`"d":true`), []byte(`"d":fals`), 1)...), errAuth},
		{"no separator", bytes.Replace(line, []byte(" "), []byte("_"), 1), errFormat},
		{"short", []byte("abc"), errFormat},
		{"not hex", append(bytes.Repeat([]byte("z"), 64), body...), errFormat},
	} {
		l := bytes.TrimSuffix(tc.line, []byte("\n"))
		if _, err := c.decode(l); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// Authentic but not JSON: that message is lost, the peer not distrusted.
	mac := hmac.New(sha256.New, c.key)
	mac.Write([]byte("{"))
	bad := hex.AppendEncode(nil, mac.Sum(nil))
	bad = append(bad, " {"...)
	if _, err := c.decode(bad); err == nil || errors.Is(err, errAuth) || errors.Is(err, errFormat) {
		t.Fatalf("an authentic line that is not JSON: %v", err)
	}
}

// Every message of a large table fits a line.
func TestResyncInParts(t *testing.T) {
	var flows []Flow
	for i := range 2*resyncChunk + 10 {
		flows = append(flows, flow(i))
	}
	ms := resyncMessages(flows)
	if len(ms) != 3 || !ms[0].More || !ms[1].More || ms[2].More || len(ms[2].Flows) != 10 {
		t.Fatalf("%d parts", len(ms))
	}
	c := codec{key: []byte("0123456789abcdef")}
	for _, m := range ms {
		if n := len(c.encode(m, time.Now())); n > maxLine {
			t.Fatalf("a part is %d bytes, over %d", n, maxLine)
		}
	}
	if ms := resyncMessages(nil); len(ms) != 1 || ms[0].More || ms[0].Op != "resync" {
		t.Fatalf("empty table: %+v", ms)
	}
	var es []PersistEntry
	for i := range persistChunk + 1 {
		es = append(es, PersistEntry{Service: "tcp 192.0.2.100:80", Real: flow(i).Real, Client: flow(i).Client.Addr(), TTL: time.Minute})
	}
	if ms := persistMessages(es); len(ms) != 2 || len(ms[1].Persist) != 1 || len(c.encode(ms[0], time.Now())) > maxLine {
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

package vrrp

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	kaSrc = netip.MustParseAddr("192.0.2.21")
	vip1  = netip.MustParseAddr("192.0.2.100")
	vip2  = netip.MustParseAddr("192.0.2.101")
)

// Adverts sent by keepalived 2.2.7 from 192.0.2.21 to 224.0.0.18, captured in
// the lab (testdata/capture-keepalived.sh); Wireshark called both checksums
// correct.
const (
	keepalivedV2 = "21 33 96 02 00 01 c3 fe c0 00 02 64 c0 00 02 65 00 00 00 00 00 00 00 00"
	keepalivedV3 = "31 33 96 02 00 64 10 f3 c0 00 02 64 c0 00 02 65"
)

func TestKeepalivedVectors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		wire   string
		want   Advert
		pseudo bool
	}{
		{"v2", keepalivedV2, Advert{Version: 2, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip1, vip2}}, false},
		{"v3", keepalivedV3, Advert{Version: 3, VRID: 51, Priority: 150, Interval: time.Second, Addrs: []netip.Addr{vip1, vip2}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wire := unhex(t, tc.wire)
			got, pseudo, reason := Parse(wire, kaSrc, GroupIPv4)
			if reason != "" {
				t.Fatalf("dropped: %s", reason)
			}
			if got.Version != tc.want.Version || got.VRID != tc.want.VRID || got.Priority != tc.want.Priority ||
				got.Interval != tc.want.Interval || !slices.Equal(got.Addrs, tc.want.Addrs) || pseudo != tc.pseudo {
				t.Fatalf("got %+v pseudo %v, want %+v pseudo %v", got, pseudo, tc.want, tc.pseudo)
			}
			// We encode byte for byte what keepalived sends.
			if enc := tc.want.Marshal(kaSrc, GroupIPv4, true); !bytes.Equal(enc, wire) {
				t.Fatalf("Marshal = % x\n want % x", enc, wire)
			}
		})
	}
}

func TestChecksumForms(t *testing.T) {
	a := Advert{Version: 3, VRID: 7, Priority: 100, Interval: 20 * time.Millisecond, Addrs: []netip.Addr{vip1}}
	withPseudo := a.Marshal(kaSrc, GroupIPv4, true)
	rfc9568 := a.Marshal(kaSrc, GroupIPv4, false)
	if bytes.Equal(withPseudo, rfc9568) {
		t.Fatal("both checksum forms are the same")
	}
	for _, tc := range []struct {
		wire   []byte
		pseudo bool
	}{{withPseudo, true}, {rfc9568, false}} {
		got, pseudo, reason := Parse(tc.wire, kaSrc, GroupIPv4)
		if reason != "" || pseudo != tc.pseudo || got.Interval != 20*time.Millisecond {
			t.Errorf("Parse: reason %q pseudo %v interval %v", reason, pseudo, got.Interval)
		}
	}
	// The pseudo-header form is bound to the addresses it was sent with.
	if _, _, reason := Parse(withPseudo, netip.MustParseAddr("192.0.2.22"), GroupIPv4); reason != DropChecksum {
		t.Errorf("pseudo-header checksum from another source: reason %q, want checksum", reason)
	}
}

func TestIPv6RoundTrip(t *testing.T) {
	src := netip.MustParseAddr("fe80::1")
	a := Advert{Version: 3, VRID: 9, Priority: 200, Interval: 4095 * 10 * time.Millisecond,
		Addrs: []netip.Addr{netip.MustParseAddr("fe80::100"), netip.MustParseAddr("2001:db8::100")}}
	wire := a.Marshal(src, GroupIPv6, false) // IPv6 always has the pseudo-header
	if len(wire) != 8+2*16 {
		t.Fatalf("length %d", len(wire))
	}
	got, pseudo, reason := Parse(wire, src, GroupIPv6)
	if reason != "" || !pseudo || !slices.Equal(got.Addrs, a.Addrs) || got.Interval != a.Interval {
		t.Fatalf("got %+v pseudo %v reason %q", got, pseudo, reason)
	}
}

func TestParseDrops(t *testing.T) {
	good := func() []byte { return unhex(t, keepalivedV2) }
	mod := func(f func(b []byte) []byte) []byte { return f(good()) }
	fixSum := func(b []byte) []byte {
		b[6], b[7] = 0, 0
		s := checksum(b, kaSrc, GroupIPv4, false)
		b[6], b[7] = byte(s>>8), byte(s)
		return b
	}
	for _, tc := range []struct {
		name string
		wire []byte
		want DropReason
	}{
		{"empty", nil, DropLength},
		{"short header", good()[:7], DropLength},
		{"version 1", mod(func(b []byte) []byte { b[0] = 0x11; return b }), DropVersion},
		{"type 2", mod(func(b []byte) []byte { b[0] = 0x22; return b }), DropType},
		{"count 0", mod(func(b []byte) []byte { b[3] = 0; return b }), DropCount},
		{"count too big", mod(func(b []byte) []byte { b[3] = 3; return b }), DropLength},
		{"no auth trailer", good()[:16], DropLength},
		{"trailing bytes", append(good(), 0), DropLength},
		{"bad checksum", mod(func(b []byte) []byte { b[7] ^= 1; return b }), DropChecksum},
		{"v3 zero interval", func() []byte {
			b := unhex(t, keepalivedV3)
			b[4], b[5], b[6], b[7] = 0, 0, 0, 0
			s := checksum(b, kaSrc, GroupIPv4, true)
			b[6], b[7] = byte(s>>8), byte(s)
			return b
		}(), DropZeroInterval},
		{"good after re-checksum", mod(func(b []byte) []byte { b[2] = 10; return fixSum(b) }), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, got := Parse(tc.wire, kaSrc, GroupIPv4); got != tc.want {
				t.Fatalf("reason %q, want %q", got, tc.want)
			}
		})
	}
}

// FuzzParse: any input is dropped with a reason or decodes to an advert
// that encodes back to the same bytes; never a panic.
func FuzzParse(f *testing.F) {
	f.Add(unhex(f, keepalivedV2), false)
	f.Add(unhex(f, keepalivedV3), false)
	f.Add([]byte{0x31, 1, 1, 1, 0, 100, 0, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, true)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		src, dst := kaSrc, GroupIPv4
		if v6 {
			src, dst = netip.MustParseAddr("fe80::1"), GroupIPv6
		}
		a, pseudo, reason := Parse(b, src, dst)
		if reason != "" {
			return
		}
		// Reserved bits are ignored on receive, so compare re-encoded
		// messages with those bits cleared.
		want := slices.Clone(b)
		if a.Version == 3 {
			want[4] &= 0x0f
		}
		enc := a.Marshal(src, dst, pseudo)
		if a.Version == 3 && b[4]&0xf0 != 0 {
			return // the checksum covered the reserved bits we dropped
		}
		if !bytes.Equal(enc, want) {
			t.Fatalf("round trip:\n in % x\nout % x", want, enc)
		}
	})
}

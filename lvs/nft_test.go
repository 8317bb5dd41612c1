package lvs

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// slotOrder is what numgen and jhash pick from: each server's share of the
// slots is its weight's, interleaved, the same on every director.
func TestSlotOrder(t *testing.T) {
	a := netip.MustParseAddrPort("203.0.113.11:80")
	b := netip.MustParseAddrPort("203.0.113.12:80")
	c := netip.MustParseAddrPort("203.0.113.13:80")
	names := map[netip.AddrPort]string{a: "a", b: "b", c: "c"}
	order := func(sched string, reals ...Real) string {
		var s []string
		for _, x := range slotOrder(sched, reals) {
			s = append(s, names[x])
		}
		return strings.Join(s, "")
	}
	for _, tc := range []struct {
		sched string
		reals []Real
		want  string
	}{
		{"wrr", []Real{{Addr: a, Weight: 1}, {Addr: b, Weight: 1}}, "ab"},
		{"wrr", []Real{{Addr: b, Weight: 2}, {Addr: a, Weight: 1}}, "bab"},                        // by address, interleaved
		{"wrr", []Real{{Addr: a, Weight: 4}, {Addr: b, Weight: 2}, {Addr: c, Weight: 2}}, "abca"}, // divided by the gcd
		{"wrr", []Real{{Addr: a, Weight: 5}, {Addr: b, Weight: 0}, {Addr: c, Weight: 1}}, "aaacaa"},
		{"rr", []Real{{Addr: a, Weight: 5}, {Addr: b, Weight: 0}, {Addr: c, Weight: 1}}, "ac"}, // rr: weight 0 out, the rest one slot
		{"wrr", []Real{{Addr: a, Weight: 0}}, ""},
		{"sh", nil, ""},
	} {
		if got := order(tc.sched, tc.reals...); got != tc.want {
			t.Errorf("%s %v: %q, want %q", tc.sched, tc.reals, got, tc.want)
		}
		// The same on another director that lists the servers otherwise.
		rev := slices.Clone(tc.reals)
		slices.Reverse(rev)
		if got := order(tc.sched, rev...); got != tc.want {
			t.Errorf("%s %v reversed: %q, want %q", tc.sched, tc.reals, got, tc.want)
		}
	}

	// Weights whose sum exceeds MaxSlots are scaled down, keeping every
	// server at least one slot and the proportions within a slot.
	reals := []Real{{Addr: a, Weight: 65535}, {Addr: b, Weight: 30000}, {Addr: c, Weight: 1}}
	got := slotOrder("wrr", reals)
	count := map[netip.AddrPort]int{}
	for _, x := range got {
		count[x]++
	}
	if len(got) > MaxSlots || count[c] != 1 || count[a] != 65535*MaxSlots/95536 || count[b] != 30000*MaxSlots/95536 {
		t.Fatalf("scaled: %d slots, %v", len(got), count)
	}
}

// sh lays its servers over a constant 256 buckets as IPVS does; draining
// one moves only the clients of its buckets, to the next live bucket's
// server, and both directors lay out the same table.
func TestSHBuckets(t *testing.T) {
	a := netip.MustParseAddrPort("203.0.113.11:80")
	b := netip.MustParseAddrPort("203.0.113.12:80")
	c := netip.MustParseAddrPort("203.0.113.13:80")
	all := shBuckets([]Real{{Addr: c, Weight: 1}, {Addr: a, Weight: 1}, {Addr: b, Weight: 1}})
	if len(all) != SHBuckets || all[0] != a || all[1] != b || all[2] != c || all[3] != a {
		t.Fatalf("layout starts %v", all[:4])
	}
	drained := shBuckets([]Real{{Addr: a, Weight: 1}, {Addr: b, Weight: 0}, {Addr: c, Weight: 1}})
	moved := 0
	for i := range all {
		switch {
		case all[i] == b && drained[i] != c:
			t.Fatalf("bucket %d of the drained server went to %s, want the next live bucket's %s", i, drained[i], c)
		case all[i] == b:
			moved++
		case drained[i] != all[i]:
			t.Fatalf("bucket %d moved from %s to %s though its server did not change", i, all[i], drained[i])
		}
	}
	if moved != 85 { // 256 buckets, b has every third from the second
		t.Fatalf("%d buckets moved", moved)
	}
	// Weights: consecutive buckets per server, as IPVS's sh.
	w := shBuckets([]Real{{Addr: a, Weight: 2}, {Addr: b, Weight: 1}})
	if w[0] != a || w[1] != a || w[2] != b || w[3] != a {
		t.Fatalf("weighted layout starts %v", w[:4])
	}
	if shBuckets([]Real{{Addr: a, Weight: 0}}) != nil {
		t.Fatal("a table without a live server")
	}
}

func TestSlotsScaled(t *testing.T) {
	a := netip.MustParseAddrPort("203.0.113.11:80")
	b := netip.MustParseAddrPort("203.0.113.12:80")
	for _, tc := range []struct {
		sched  string
		w1, w2 int
		want   bool
	}{
		{"wrr", 1, 65535, true},
		{"wrr", 1000, 24, false}, // 125:3 after the gcd
		{"wrr", 1024, 1, true},
		{"wrr", 1023, 1, false},
		{"rr", 1, 65535, false},
		{"wrr", 0, 65535, false},
	} {
		if got := SlotsScaled(tc.sched, []Real{{Addr: a, Weight: tc.w1}, {Addr: b, Weight: tc.w2}}); got != tc.want {
			t.Errorf("%s %d:%d: %v, want %v", tc.sched, tc.w1, tc.w2, got, tc.want)
		}
	}
}

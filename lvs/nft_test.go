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

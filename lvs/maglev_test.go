package lvs

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"testing"
)

func mhReals(n int) []Real {
	var rs []Real
	for i := range n {
		rs = append(rs, Real{Addr: netip.MustParseAddrPort(fmt.Sprintf("203.0.113.%d:80", 11+i)), Weight: 1})
	}
	return rs
}

// The Maglev table: the same whatever the servers' order, balanced, in
// proportion to weights, and when one of N servers leaves, besides its own
// buckets at most 1 % of the table moves (the bound: 1/N + 1 % of
// the flows).
func TestMHBuckets(t *testing.T) {
	for _, n := range []int{2, 3, 5, 10, 20} {
		rs := mhReals(n)
		table := mhBuckets(rs)
		rev := slices.Clone(rs)
		slices.Reverse(rev)
		if !slices.Equal(table, mhBuckets(rev)) {
			t.Fatalf("%d servers: the table depends on their order", n)
		}
		count := map[netip.AddrPort]int{}
		for _, a := range table {
			count[a]++
		}
		for _, r := range rs {
			if share := float64(count[r.Addr]) / MHBuckets; math.Abs(share-1/float64(n)) > 0.02 {
				t.Errorf("%d servers: %s has %.3f of the buckets", n, r.Addr, share)
			}
		}
		worst := 0.0
		for leave := range rs {
			rest := slices.Delete(slices.Clone(rs), leave, leave+1)
			after := mhBuckets(rest)
			other := 0
			for i := range table {
				if table[i] != rs[leave].Addr && after[i] != table[i] {
					other++
				}
			}
			frac := float64(other) / MHBuckets
			worst = max(worst, frac)
			if frac > 0.01 {
				t.Errorf("%d servers, %s leaves: %.4f of the table moved besides its own", n, rs[leave].Addr, frac)
			}
		}
		t.Logf("%d servers: at most %.4f of the table moved besides the leaving server's", n, worst)
	}
	// Weight 2 against 1: about two thirds.
	w := mhReals(2)
	w[0].Weight = 2
	count := 0
	for _, a := range mhBuckets(w) {
		if a == w[0].Addr {
			count++
		}
	}
	if share := float64(count) / MHBuckets; math.Abs(share-2.0/3) > 0.02 {
		t.Errorf("weight 2 of 3: %.3f of the buckets", share)
	}
	// Weight 0 is out.
	w[1].Weight = 0
	if slices.Contains(mhBuckets(w), w[1].Addr) {
		t.Error("a server at weight 0 has buckets")
	}
}

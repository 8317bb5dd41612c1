package lvs

import (
	"hash/fnv"
	"net/netip"
	"slices"
)

// MHBuckets is the size of an mh service's lookup table, a prime as
// Maglev needs. IPVS's default is 4093, where one of 20 servers leaving
// moved up to 1.7 % of the other flows; at 65521 (IPVS's index 16) it is
// at most 0.4 % (TestMHBuckets).
const MHBuckets = 65521

// mhBuckets is the Maglev lookup table (Eisenbud et al., NSDI 2016) of
// the servers with a weight: each server walks its own permutation of the
// buckets, from an offset and a skip hashed from its address and port,
// and the servers take turns claiming the next free bucket on their walk,
// a server of weight w (divided by the weights' greatest common divisor)
// w turns a round, as IPVS's mh. The table depends only on the servers
// and their weights, not on their order or on history, so two directors
// build the same one; a server leaving or joining moves little more than
// its own share of the buckets.
func mhBuckets(reals []Real) []netip.AddrPort {
	rs := slices.DeleteFunc(slices.Clone(reals), func(r Real) bool { return r.Weight <= 0 })
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b Real) int { return a.Addr.Compare(b.Addr) })
	w, _ := reducedWeights(rs)
	offset := make([]uint64, len(rs))
	skip := make([]uint64, len(rs))
	next := make([]uint64, len(rs))
	for i, r := range rs {
		offset[i] = mhHash(r.Addr, 0) % MHBuckets
		skip[i] = mhHash(r.Addr, 1)%(MHBuckets-1) + 1
	}
	out := make([]netip.AddrPort, MHBuckets)
	taken := make([]bool, MHBuckets)
	for filled := 0; filled < MHBuckets; {
		for i, r := range rs {
			for turn := 0; turn < w[i] && filled < MHBuckets; turn++ {
				c := (offset[i] + next[i]*skip[i]) % MHBuckets
				for taken[c] {
					next[i]++
					c = (offset[i] + next[i]*skip[i]) % MHBuckets
				}
				taken[c], out[c] = true, r.Addr
				next[i]++
				filled++
			}
		}
	}
	return out
}

// mhHash is a server's hash for its permutation: FNV-1a of its address,
// port and which of the two hashes.
func mhHash(a netip.AddrPort, which byte) uint64 {
	h := fnv.New64a()
	b, _ := a.MarshalBinary()
	h.Write(b)
	h.Write([]byte{which})
	return h.Sum64()
}

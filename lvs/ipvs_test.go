package lvs

import (
	"net/netip"
	"testing"
	"time"
)

// The translation to moby's types and back must be lossless, or every
// reconcile would see a difference and update.
func TestIPVSTranslationRoundTrip(t *testing.T) {
	svcs := []Service{
		{Key: web, Scheduler: "wrr"},
		{Key: dns, Scheduler: "rr", OnePacket: true},
		{Key: web, Scheduler: "sh", Flags: FlagSched1 | FlagSched2},
		{Key: web, Scheduler: "wlc", Persistence: 300 * time.Second, PersistenceBits: 24},
		{Key: web, Scheduler: "wlc", Persistence: 300 * time.Second, PersistenceBits: 32},
		{Key: Key{FWMark: 7}, Scheduler: "lc"},
		{Key: Key{FWMark: 7, IPv6: true}, Scheduler: "mh", Flags: FlagSched1},
		{Key: Key{Protocol: TCP, Addr: netip.MustParseAddrPort("[2001:db8::100]:443")}, Scheduler: "sed", Persistence: time.Minute, PersistenceBits: 64},
		{Key: Key{Protocol: SCTP, Addr: netip.MustParseAddrPort("192.0.2.100:3868")}, Scheduler: "twos"},
	}
	for _, s := range svcs {
		s = s.normal()
		if got := fromIPVSService(toIPVSService(s)).normal(); got != s {
			t.Errorf("service %+v came back as %+v", s, got)
		}
	}
	reals := []Real{
		{Addr: rs1, Weight: 1, Method: NAT},
		{Addr: rs2, Weight: 0, Method: DR, Upper: 100, Lower: 10},
		{Addr: netip.MustParseAddrPort("[2001:db8::11]:80"), Weight: 65535, Method: Tunnel},
	}
	for _, r := range reals {
		if got := fromIPVSDest(toIPVSDest(r)); got != r {
			t.Errorf("real %+v came back as %+v", r, got)
		}
	}
	// The kernel reports a hashed service with this flag; it is not a
	// difference.
	s := toIPVSService(svcs[0])
	s.Flags |= svcHashed
	if got := fromIPVSService(s); got != svcs[0] {
		t.Errorf("hashed flag leaked: %+v", got)
	}
}

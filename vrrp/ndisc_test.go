package vrrp

import (
	"net"
	"net/netip"
	"testing"
)

// The unsolicited neighbour advertisement carries override, and router
// when the host forwards (RFC 9568 §6.4); on main it never carried router,
// so hosts cleared IsRouter for the new master.
func TestNeighbourAdvertFlags(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	target := netip.MustParseAddr("2001:db8::100")
	for _, tc := range []struct {
		router bool
		flags  byte
	}{{false, 0x20}, {true, 0xa0}} {
		m := neighbourAdvert(target, mac, tc.router)
		if m[0] != 136 || m[4] != tc.flags || netip.AddrFrom16([16]byte(m[8:24])) != target || net.HardwareAddr(m[26:32]).String() != mac.String() {
			t.Errorf("router %v: % x", tc.router, m)
		}
	}
}

package lvs

import (
	"net/netip"
	"testing"
	"time"
)

// The kernel's ip_vs_conn table as Linux 6.1 prints it: IPv4 in hex, IPv6
// in full, a persistence template (NONE, port 0) and a firewall mark's
// template (protocol IP, the mark in the virtual address); a template's
// state reads ASSURED once a connection used it (seen in the guest).
func TestParseIPVSConns(t *testing.T) {
	text := `Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP C0000232 9C40 C0000264 0050 CB00710B 1F90 ESTABLISHED     898
UDP C0000232 14E9 C0000264 0035 CB00710B 0035 UDP             299
TCP C0000232 0000 C0000264 0050 CB00710B 1F90 ASSURED         359
IP  C0000232 0000 00000007 0000 CB00710D 0000 NONE            120
TCP 2001:0db8:0000:0000:0000:0000:0000:0050 9C41 2001:0db8:0000:0000:0000:0000:0000:0100 0050 2001:0db8:0000:0000:0000:0000:0000:0011 0050 TIME_WAIT        60
`
	fs, err := parseIPVSConns([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	want := []Flow{
		{Protocol: TCP, Client: ap("192.0.2.50:40000"), Service: Key{Protocol: TCP, Addr: ap("192.0.2.100:80")}, Real: ap("203.0.113.11:8080"), State: "ESTABLISHED", Expires: 898 * time.Second},
		{Protocol: UDP, Client: ap("192.0.2.50:5353"), Service: Key{Protocol: UDP, Addr: ap("192.0.2.100:53")}, Real: ap("203.0.113.11:53"), State: "UDP", Expires: 299 * time.Second},
		{Protocol: TCP, Client: ap("192.0.2.50:0"), Service: Key{Protocol: TCP, Addr: ap("192.0.2.100:80")}, Real: ap("203.0.113.11:8080"), State: "ASSURED", Expires: 359 * time.Second, Template: true},
		{Client: ap("192.0.2.50:0"), Service: Key{FWMark: 7}, Real: ap("203.0.113.13:0"), State: "NONE", Expires: 120 * time.Second, Template: true},
		{Protocol: TCP, Client: ap("[2001:db8::50]:40001"), Service: Key{Protocol: TCP, Addr: ap("[2001:db8::100]:80")}, Real: ap("[2001:db8::11]:80"), State: "TIME_WAIT", Expires: time.Minute},
	}
	if len(fs) != len(want) {
		t.Fatalf("%d flows: %+v", len(fs), fs)
	}
	for i := range want {
		if fs[i] != want[i] {
			t.Errorf("line %d: %+v\nwant %+v", i+2, fs[i], want[i])
		}
	}
	if _, err := parseIPVSConns([]byte("header\nTCP ZZ 0 0 0 0 0 X 1\n")); err == nil {
		t.Error("a malformed line was taken")
	}
}

package lvs

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A service attribute as the kernel sends it, with 64-bit counters past
// 2^32: they are read whole, and the service's identity is kept for the
// request for its real servers.
func TestParseIPVSService(t *testing.T) {
	u64 := func(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }
	ae := netlink.NewAttributeEncoder()
	ae.Uint16(ipvsSvcAttrAF, unix.AF_INET)
	ae.Uint16(ipvsSvcAttrProtocol, unix.IPPROTO_TCP)
	addr := make([]byte, 16)
	copy(addr, []byte{192, 0, 2, 100})
	ae.Bytes(ipvsSvcAttrAddr, addr)
	ae.Bytes(ipvsSvcAttrPort, []byte{0, 80})
	ae.Bytes(6, []byte("wrr\x00")) // the scheduler: not part of the identity
	ae.Nested(ipvsSvcAttrStats64, func(n *netlink.AttributeEncoder) error {
		n.Bytes(1, u64(5_000_000_000))
		n.Bytes(2, u64(1<<40))
		n.Bytes(5, u64(7))
		return nil
	})
	raw, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	k, st, err := parseIPVSService(raw)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Key{Protocol: TCP, Addr: netip.MustParseAddrPort("192.0.2.100:80")}); k != want {
		t.Fatalf("key %v, want %v", k, want)
	}
	if st.Connections != 5_000_000_000 || st.PacketsIn != 1<<40 || st.BytesOut != 7 {
		t.Fatalf("stats %+v", st)
	}
	id, err := serviceIdentity(raw)
	if err != nil {
		t.Fatal(err)
	}
	inner, ok := nestedAttr(id, ipvsCmdAttrService)
	if !ok {
		t.Fatal("no service attribute in the identity")
	}
	ad, _ := netlink.NewAttributeDecoder(inner)
	var types []uint16
	for ad.Next() {
		types = append(types, ad.Type())
	}
	if len(types) != 4 {
		t.Fatalf("identity attributes %v, want family, protocol, address, port", types)
	}
}

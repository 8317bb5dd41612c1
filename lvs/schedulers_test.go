package lvs

import (
	"slices"
	"testing"
)

// The kernel's schedulers come from its module lists, compressed modules
// and loaded ones included; without ip_vs in them nothing is narrowed.
func TestIPVSWithSchedulers(t *testing.T) {
	dep := []byte("kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz\n" +
		"kernel/net/netfilter/ipvs/ip_vs_rr.ko.xz: kernel/net/netfilter/ipvs/ip_vs.ko.xz\n" +
		"kernel/net/netfilter/ipvs/ip_vs_wrr.ko: kernel/net/netfilter/ipvs/ip_vs.ko\n" +
		"kernel/net/netfilter/ipvs/ip_vs_mh.ko.zst: kernel/net/netfilter/ipvs/ip_vs.ko\n")
	builtin := []byte("kernel/net/netfilter/ipvs/ip_vs_sh.ko\n")
	loaded := []byte("ip_vs_lc 12288 0 - Live 0x0000000000000000\nip_vs 204800 4 ip_vs_lc, Live 0x0000000000000000\n")
	c, note := ipvsWithSchedulers(builtin, dep, loaded)
	if want := []string{"rr", "wrr", "lc", "sh", "mh"}; !slices.Equal(c.Schedulers, want) {
		t.Fatalf("schedulers %v (%s); want %v", c.Schedulers, note, want)
	}
	if len(c.Unsupported(Service{Key: Key{Protocol: TCP}, Scheduler: "twos"}, nil)) != 1 {
		t.Fatal("twos accepted on a kernel without ip_vs_twos")
	}
	if c, _ := ipvsWithSchedulers([]byte("kernel/fs/ext4/ext4.ko\n")); !slices.Equal(c.Schedulers, IPVSSchedulers) {
		t.Fatalf("lists without ip_vs narrowed the schedulers to %v", c.Schedulers)
	}
}

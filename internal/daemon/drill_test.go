package daemon

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
)

func TestProbeTarget(t *testing.T) {
	v4 := config.VRRPInstance{Name: "VI_1", VIPs: []netip.Prefix{netip.MustParsePrefix("2001:db8::1/64"), netip.MustParsePrefix("192.0.2.100/24")}}
	v6 := config.VRRPInstance{Name: "VI_6", VIPs: []netip.Prefix{netip.MustParsePrefix("2001:db8::1/64")}}
	for _, tc := range []struct {
		inst       config.VRRPInstance
		spec, want string // want: describe(), or the error's start
	}{
		{v4, "", "ICMP echo to 192.0.2.100 every 5ms"},
		{v4, "192.0.2.7", "ICMP echo to 192.0.2.7 every 5ms"},
		{v4, "192.0.2.100:80", "TCP connections to 192.0.2.100:80 every 10ms"},
		{v6, "[2001:db8::1]:443", "TCP connections to [2001:db8::1]:443 every 10ms"},
		{v6, "", "VI_6 has no IPv4 address to ping"},
		{v4, "2001:db8::1", "probe 2001:db8::1: ICMP probes are IPv4 only"},
		{v4, "lb1", `probe "lb1" is neither`},
	} {
		got, err := probeTarget(tc.inst, tc.spec)
		desc := ""
		if err != nil {
			desc = err.Error()
		} else {
			desc = got.describe()
		}
		if !strings.HasPrefix(desc, tc.want) {
			t.Errorf("probeTarget(%s, %q) = %q, want %q", tc.inst.Name, tc.spec, desc, tc.want)
		}
	}
}

func TestMovingWithAndRefusal(t *testing.T) {
	cfg := &config.Config{SyncGroups: []config.SyncGroup{{Name: "G", Members: []string{"VI_1", "VI_2"}}}}
	if got := movingWith(cfg, "VI_2"); !slices.Equal(got, []string{"VI_1", "VI_2"}) {
		t.Fatalf("VI_2 moves with %v", got)
	}
	if got := movingWith(cfg, "VI_3"); !slices.Equal(got, []string{"VI_3"}) {
		t.Fatalf("VI_3 moves with %v", got)
	}
	checks := []api.DrillCheck{{Name: "peer", OK: true, Detail: "fine"}, {Name: "raft", Detail: "behind"}, {Name: "table", Detail: "differs"}}
	if got := refusal(checks); got != "behind; differs" {
		t.Fatalf("refusal %q", got)
	}
	if got := refusal(checks[:1]); got != "" {
		t.Fatalf("refusal of passing checks %q", got)
	}
	if p := priorityOf("BACKUP/100"); p != 100 {
		t.Fatalf("priorityOf = %d", p)
	}
	if p := priorityOf(""); p != 0 {
		t.Fatalf("priorityOf empty = %d", p)
	}
}

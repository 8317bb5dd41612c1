package route

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseRoute(t *testing.T) {
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	for _, tc := range []struct {
		in   string
		want Route
		err  string
	}{
		{in: "198.51.100.0/24 via 192.0.2.1", want: Route{Dst: pfx("198.51.100.0/24"), Via: addr("192.0.2.1")}},
		{in: "198.51.100.7 gw 192.0.2.1 dev eth1 table 100 metric 5 src 192.0.2.100 scope global",
			want: Route{Dst: pfx("198.51.100.7/32"), Via: addr("192.0.2.1"), Dev: "eth1", Table: 100, Metric: 5, Src: addr("192.0.2.100"), Scope: "global"}},
		{in: "blackhole 203.0.113.0/24", want: Route{Dst: pfx("203.0.113.0/24"), Blackhole: true}},
		{in: "2001:db8::/64 via fe80::1", want: Route{Dst: pfx("2001:db8::/64"), Via: addr("fe80::1")}},
		{in: "", err: "empty"},
		{in: "default via 192.0.2.1", err: "0.0.0.0/0"},
		{in: "198.51.100.1/24", err: "host bits"},
		{in: "198.51.100.0/24 via", err: "needs a value"},
		{in: "198.51.100.0/24 via 2001:db8::1", err: "family"},
		{in: "198.51.100.0/24 table x", err: "table"},
		{in: "198.51.100.0/24 proto kernel", err: "not a route option"},
		{in: "blackhole 203.0.113.0/24 dev eth0", err: "blackhole"},
		{in: "198.51.100.0/24 scope site", err: "scope"},
	} {
		check(t, Parse, tc.in, tc.want, tc.err)
	}
}

func TestParseRule(t *testing.T) {
	pfx := netip.MustParsePrefix
	for _, tc := range []struct {
		in   string
		want Rule
		err  string
	}{
		{in: "from 192.0.2.100 table 100", want: Rule{From: pfx("192.0.2.100/32"), Table: 100}},
		{in: "from 192.0.2.0/24 to 198.51.100.0/24 iif eth0 oif eth1 fwmark 7 priority 1000 lookup 200",
			want: Rule{From: pfx("192.0.2.0/24"), To: pfx("198.51.100.0/24"), IIF: "eth0", OIF: "eth1", FWMark: 7, Priority: 1000, Table: 200}},
		{in: "to 2001:db8::/64 table 5", want: Rule{To: pfx("2001:db8::/64"), Table: 5}},
		{in: "from 192.0.2.100", err: "needs a table"},
		{in: "table 100", err: "from or to"},
		{in: "from 192.0.2.0/24 to 2001:db8::/64 table 1", err: "different families"},
		{in: "from 192.0.2.0/24 table 1 goto 5", err: "not a rule option"},
	} {
		check(t, ParseRule, tc.in, tc.want, tc.err)
	}
}

// check parses in: the error saying wantErr, or want, which its String
// reads back as.
func check[T interface {
	comparable
	String() string
}](t *testing.T, parse func(string) (T, error), in string, want T, wantErr string) {
	t.Helper()
	got, err := parse(in)
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%q: error %v, want one saying %q", in, err, wantErr)
		}
		return
	}
	if err != nil || got != want {
		t.Errorf("%q: %+v, %v; want %+v", in, got, err, want)
		return
	}
	if back, err := parse(got.String()); err != nil || back != got {
		t.Errorf("%q: String %q reads back as %+v, %v", in, got.String(), back, err)
	}
}

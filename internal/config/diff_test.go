package config

import (
	"slices"
	"testing"
)

// A reload reports what it cannot apply: the BGP speaker's sessions and
// communities are set when it starts; its shutdown delay is read live.
func TestDiffBGP(t *testing.T) {
	bgp := func(delay, hold string) string {
		return minimal + `
[bgp]
local_as = 65010
router_id = "192.0.2.11"
shutdown_delay = "` + delay + `"
  [[bgp.neighbor]]
  address = "192.0.2.1"
  peer_as = 65000
  hold_time = "` + hold + `"
`
	}
	for _, tc := range []struct {
		name          string
		old, cur      string
		restart, live []string
	}{
		{"same", bgp("5s", "9s"), bgp("5s", "9s"), nil, nil},
		{"delay", bgp("5s", "9s"), bgp("8s", "9s"), nil, []string{"bgp.shutdown_delay"}},
		{"hold time", bgp("5s", "9s"), bgp("5s", "30s"), []string{"bgp"}, nil},
		{"added", minimal, bgp("5s", "9s"), []string{"bgp"}, nil},
		{"removed", bgp("5s", "9s"), minimal, []string{"bgp"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			old, err := Parse("old.toml", []byte(tc.old))
			if err != nil {
				t.Fatal(err)
			}
			cur, err := Parse("cur.toml", []byte(tc.cur))
			if err != nil {
				t.Fatal(err)
			}
			c := Diff(old, cur)
			if !slices.Equal(c.Restart, tc.restart) || !slices.Equal(c.Live, tc.live) {
				t.Fatalf("restart %v live %v, want %v and %v", c.Restart, c.Live, tc.restart, tc.live)
			}
		})
	}
}

package daemon

import (
	"strings"
	"testing"
)

func TestBGPDrillGate(t *testing.T) {
	const p = "192.0.2.200/32"
	member := func(name, state string, told bool, bgp ...string) gateMember {
		return gateMember{Name: name, State: state, Role: "director", Told: told, Info: peerInfo{BGP: bgp}}
	}
	for _, tc := range []struct {
		name    string
		f       bgpDrillFacts
		refused string // "" passes
	}{
		{"another director announces it", bgpDrillFacts{Prefix: p, Established: 1, Clustered: true, Self: "d1",
			Members: []gateMember{member("d1", "alive", true, p), member("d2", "alive", true, p)}}, ""},
		{"not announced here", bgpDrillFacts{Prefix: p, Announced: "quorum lost", Established: 1, Clustered: true, Self: "d1",
			Members: []gateMember{member("d2", "alive", true, p)}}, "not announced here (quorum lost)"},
		{"no session", bgpDrillFacts{Prefix: p, Clustered: true, Self: "d1",
			Members: []gateMember{member("d2", "alive", true, p)}}, "0 BGP session(s) established"},
		{"the other announces another address", bgpDrillFacts{Prefix: p, Established: 1, Clustered: true, Self: "d1",
			Members: []gateMember{member("d2", "alive", true, "192.0.2.201/32")}}, "no other director announces"},
		{"the other is dead", bgpDrillFacts{Prefix: p, Established: 1, Clustered: true, Self: "d1",
			Members: []gateMember{member("d2", "dead", true, p)}}, "no other director announces"},
		{"the other said nothing", bgpDrillFacts{Prefix: p, Established: 1, Clustered: true, Self: "d1",
			Members: []gateMember{member("d2", "alive", false)}}, "no other director announces"},
		{"only this one, forced", bgpDrillFacts{Prefix: p, Established: 1, Clustered: true, Self: "d1", Force: true,
			Members: []gateMember{member("d1", "alive", true, p)}}, ""},
		{"no cluster", bgpDrillFacts{Prefix: p, Established: 2}, "without [cluster]"},
		{"no cluster, forced", bgpDrillFacts{Prefix: p, Established: 2, Force: true}, ""},
		{"forced, not announced here", bgpDrillFacts{Prefix: p, Announced: "withdrawn by directorctl", Established: 2, Force: true}, "not announced here"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checks, refused := bgpDrillGate(tc.f)
			if len(checks) != 3 {
				t.Fatalf("checks %+v", checks)
			}
			if tc.refused == "" && refused != "" || tc.refused != "" && !strings.Contains(refused, tc.refused) {
				t.Fatalf("refused %q, want %q", refused, tc.refused)
			}
		})
	}
}

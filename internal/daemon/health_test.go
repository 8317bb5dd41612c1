package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/lvs"
)

const checksTable = `[node]
name = "x"
[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
  [virtual_server.health_check]
  type = "tcp"
  [[virtual_server.real_server]]
  address = "203.0.113.11:80"
  [[virtual_server.real_server]]
  address = "203.0.113.12:80"
    [[virtual_server.real_server.check]]
    type = "tcp"
    [[virtual_server.real_server.check]]
    type = "http"
    [[virtual_server.real_server.check]]
    type = "http"
    path = "/health"
%s`

// dynamicCheck is an exec check that may set the server's weight.
const dynamicCheck = `    [[virtual_server.real_server.check]]
    type = "exec"
    command = ["/bin/true"]
    dynamic = true
`

// A real server with checks of its own is up while every one passes, as
// keepalived's checkers of one real_server; the load balancer hears only
// the changes of that whole.
func TestRealServerChecksAllMustPass(t *testing.T) {
	cfg, err := config.Parse("f.toml", fmt.Appendf(nil, checksTable, dynamicCheck))
	if err != nil {
		t.Fatal(err)
	}
	rs1, rs2 := netip.MustParseAddrPort("203.0.113.11:80"), netip.MustParseAddrPort("203.0.113.12:80")
	type told struct {
		real netip.AddrPort
		h    lvs.Health
	}
	var got []told
	h := newHealth(slog.New(slog.DiscardHandler), nil, nil)
	h.setHealth = func(_ lvs.Key, a netip.AddrPort, st lvs.Health) { got = append(got, told{a, st}) }
	if err := h.apply(cfg); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range h.status().Checks {
		ids = append(ids, c.ID.Real.String()+" "+c.ID.Check)
	}
	if want := "[203.0.113.11:80 tcp 203.0.113.12:80 exec 203.0.113.12:80 http 203.0.113.12:80 http#2 203.0.113.12:80 tcp]"; fmt.Sprint(ids) != want {
		t.Fatalf("checks %v, want %s", ids, want)
	}
	id := func(a netip.AddrPort, check string) healthcheck.ID {
		return healthcheck.ID{Service: "web", Real: a, Check: check}
	}
	down, up := lvs.Health{Up: false, Weight: -1}, lvs.Health{Up: true, Weight: -1}
	for _, step := range []struct {
		t    healthcheck.Transition
		want []told // what the load balancer hears
	}{
		{healthcheck.Transition{ID: id(rs2, "http#2"), Up: false, Weight: -1}, []told{{rs2, down}}},
		{healthcheck.Transition{ID: id(rs2, "tcp"), Up: false, Weight: -1}, nil},
		{healthcheck.Transition{ID: id(rs2, "http#2"), Up: true, Weight: -1}, nil}, // tcp still fails
		{healthcheck.Transition{ID: id(rs2, "tcp"), Up: true, Weight: -1}, []told{{rs2, up}}},
		{healthcheck.Transition{ID: id(rs2, "exec"), Up: true, Weight: 5}, []told{{rs2, lvs.Health{Up: true, Weight: 5}}}},
		{healthcheck.Transition{ID: id(rs1, "tcp"), Up: false, Weight: -1}, []told{{rs1, down}}},
		{healthcheck.Transition{ID: id(rs2, "http#2"), Up: false, Weight: -1}, []told{{rs2, down}}},
	} {
		got = nil
		h.transition(step.t)
		if fmt.Sprint(got) != fmt.Sprint(step.want) {
			t.Fatalf("after %+v the load balancer heard %v, want %v", step.t, got, step.want)
		}
	}
	// The failing check is taken out of the file: the others pass, so
	// the server is back, at the weight its exec check asked for.
	cfg, err = config.Parse("f.toml", fmt.Appendf(nil, strings.Replace(checksTable, "    [[virtual_server.real_server.check]]\n    type = \"http\"\n    path = \"/health\"\n", "", 1), dynamicCheck))
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	if err := h.apply(cfg); err != nil {
		t.Fatal(err)
	}
	if want := []told{{rs2, lvs.Health{Up: true, Weight: 5}}}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("after the failing check was removed the load balancer heard %v, want %v", got, want)
	}
}

package daemon

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/lvs"
)

// directord -t checks the table against the capability table of the data
// plane it would run, resolving "auto" from files: it never loads a module
// or opens netlink, so it is tested here with the detection injected.
func TestCheckConfigCapabilities(t *testing.T) {
	const table = `[node]
name = "x"

[dataplane]
kind = %q

[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
scheduler = "lc"
forwarding = "dr"
  [[virtual_server.real_server]]
  address = "203.0.113.11:80"
`
	for _, tc := range []struct {
		kind   string
		ipvs   bool
		scheds []string // the kernel's IPVS schedulers; nil: all
		want   []string // problems; none: valid
	}{
		{"auto", true, nil, nil},
		// A kernel without the scheduler's module: named at -t, not left
		// to fail at every reconcile.
		{"ipvs", true, []string{"rr", "wrr"}, []string{
			":10: virtual_server[0].scheduler: this kernel has no IPVS scheduler lc (no module ip_vs_lc); it has rr, wrr (data plane ipvs, configured: dataplane.kind = ipvs; schedulers: rr, wrr)"}},
		{"auto", true, []string{"rr", "wrr"}, []string{"this kernel has no IPVS scheduler lc", "auto: IPVS here; schedulers: rr, wrr"}},
		{"ipvs", false, nil, nil}, // what the file says; the daemon reports a kernel without IPVS at start
		{"auto", false, nil, []string{
			":10: virtual_server[0].scheduler: the nftables data plane schedules with rr, wrr, sh, mh only; lc needs IPVS (data plane nftables, auto: no IPVS here)",
			":11: virtual_server[0].forwarding: direct routing on the nftables data plane needs dataplane.dr_interface, the interface facing the router, whose ingress takes the service's packets (data plane nftables, auto: no IPVS here)",
		}},
		{"nftables", true, nil, []string{":10: virtual_server[0].scheduler:", ":11: virtual_server[0].forwarding:", "configured: dataplane.kind = nftables"}},
	} {
		file := filepath.Join(t.TempDir(), "d.toml")
		if err := os.WriteFile(file, []byte(strings.Replace(table, "%q", `"`+tc.kind+`"`, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		detect := func() (bool, string) {
			if tc.ipvs {
				return true, "IPVS here"
			}
			return false, "no IPVS here"
		}
		ipvsCaps := func() (lvs.Capabilities, string) {
			c := lvs.IPVSCapabilities
			if tc.scheds != nil {
				c.Schedulers = tc.scheds
			}
			return c, "schedulers: " + strings.Join(c.Schedulers, ", ")
		}
		_, err := checkConfig(file, detect, ipvsCaps)
		if len(tc.want) == 0 {
			if err != nil {
				t.Errorf("%s (ipvs %v): %v", tc.kind, tc.ipvs, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s (ipvs %v): accepted", tc.kind, tc.ipvs)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s (ipvs %v): %v\nlacks %q", tc.kind, tc.ipvs, err, w)
			}
		}
	}
}

// An exec check of the replicated table names a script; each director
// runs its own [[check_script]] of that name, or fails the check saying
// it has none.
func TestHealthSpecsResolveScripts(t *testing.T) {
	cfg, err := config.Parse("f.toml", []byte(`[node]
name = "x"
[[check_script]]
name = "mysql"
command = ["/usr/local/bin/check-mysql", "-q"]
[[virtual_server]]
name = "db"
address = "192.0.2.100:3306"
  [virtual_server.health_check]
  type = "exec"
  script = "mysql"
  [[virtual_server.real_server]]
  address = "203.0.113.11:3306"
`))
	if err != nil {
		t.Fatal(err)
	}
	specs, _ := healthSpecs(cfg, nil)
	for _, s := range specs {
		if !slices.Equal(s.Exec.Argv, []string{"/usr/local/bin/check-mysql", "-q"}) || s.Exec.Missing != "" {
			t.Fatalf("resolved %+v", s.Exec)
		}
	}
	cfg.CheckScripts = nil // the table names a script this director lacks
	specs, _ = healthSpecs(cfg, nil)
	for _, s := range specs {
		if s.Exec.Missing != "mysql" {
			t.Fatalf("unresolved %+v", s.Exec)
		}
		c, err := healthcheck.NewChecker(s)
		if err != nil {
			t.Fatal(err)
		}
		if r := c.Check(context.Background()); r.Err == nil || !strings.Contains(r.Err.Error(), `no [[check_script]] named "mysql"`) {
			t.Fatalf("check of a missing script: %+v", r)
		}
	}
}

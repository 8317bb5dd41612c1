package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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
		kind string
		ipvs bool
		want []string // problems; none: valid
	}{
		{"auto", true, nil},
		{"ipvs", false, nil}, // what the file says; the daemon reports a kernel without IPVS at start
		{"auto", false, []string{
			":10: virtual_server[0].scheduler: the nftables data plane schedules with rr, wrr, sh only; lc needs IPVS (data plane nftables, auto: no IPVS here)",
			":11: virtual_server[0].forwarding: the nftables data plane forwards by nat only; dr needs IPVS (data plane nftables, auto: no IPVS here)",
		}},
		{"nftables", true, []string{":10: virtual_server[0].scheduler:", ":11: virtual_server[0].forwarding:", "configured: dataplane.kind = nftables"}},
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
		_, err := checkConfig(file, detect)
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

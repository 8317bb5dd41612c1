package daemon

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/vrrp/vrrptest"
)

// The metrics name a virtual server the same way in every family (its
// name), keep a down server's series at 0, give the service's totals
// families of their own, and pass promlint.
func TestMetricsLabelsAndDownServers(t *testing.T) {
	up, down := listener(t), closedPort(t)
	dir := t.TempDir()
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(dir, 150, []string{"192.0.2.100/24"}, []netip.AddrPort{up, down}))
	h.eventually(t, "the closed port down and out of the table", func(doc api.Document) error {
		if len(doc.LVS.Services) != 1 || len(doc.LVS.Services[0].Reals) != 1 {
			return fmt.Errorf("%+v", doc.LVS.Services)
		}
		return nil
	})
	mfs, err := h.d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				if l.GetName() == "service" && l.GetValue() != "web" {
					t.Errorf("%s: service=%q, want the virtual server's name", mf.GetName(), l.GetValue())
				}
				if l.GetName() == "real_server" && l.GetValue() == "" {
					t.Errorf("%s: a service total among the real servers' series", mf.GetName())
				}
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			series[mf.GetName()+"{"+strings.Join(ls, ",")+"}"] = value(m)
		}
	}
	for k, want := range map[string]float64{
		"directord_lvs_weight{real_server=" + down.String() + ",service=web}":                 0,
		"directord_lvs_real_server_programmed{real_server=" + down.String() + ",service=web}": 0,
		"directord_lvs_real_server_programmed{real_server=" + up.String() + ",service=web}":   1,
		"directord_lvs_connections_total{real_server=" + down.String() + ",service=web}":      0,
		"directord_lvs_service_connections_total{service=web}":                                0,
		"directord_lvs_service_info{address=192.0.2.100:80,protocol=tcp,service=web}":         1,
		"directord_lvs_service_refused{service=web}":                                          0,
		"directord_lvs_service_quorum_up{service=web}":                                        1,
		"directord_health_up{check=tcp,real_server=" + down.String() + ",service=web}":        0,
		"directord_health_real_server_up{real_server=" + down.String() + ",service=web}":      0,
		"directord_health_real_server_up{real_server=" + up.String() + ",service=web}":        1,
	} {
		got, ok := series[k]
		if !ok || got != want {
			keys := slices.Sorted(func(yield func(string) bool) {
				for k := range series {
					if strings.Contains(k, "service=") && !yield(k) {
						return
					}
				}
			})
			t.Errorf("%s = %v (present %v), want %v; series:\n%s", k, got, ok, want, strings.Join(keys, "\n"))
		}
	}
	if _, ok := series["directord_health_check_duration_seconds{check=tcp,service=web}"]; !ok {
		t.Error("no check duration histogram")
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Histogram != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return m.GetUntyped().GetValue()
}

// families is every metric family a director can export with its help:
// those a running daemon gathers, and those of the parts a fake host
// does not run (cluster, conntrack sync) or that have no sample yet.
func families(t *testing.T) map[string]string {
	t.Helper()
	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, []netip.AddrPort{listener(t)}))
	h.eventually(t, "programmed", func(doc api.Document) error {
		if len(doc.LVS.Services) != 1 {
			return fmt.Errorf("%+v", doc.LVS.Services)
		}
		return nil
	})
	mfs, err := h.d.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetHelp()
	}
	ch := make(chan *prometheus.Desc, 100)
	newClusterCollector(nil).Describe(ch)
	newCTSyncCollector(nil).Describe(ch)
	newVRRPCollector(nil).Describe(ch)
	newBGPCollector(nil).Describe(ch)
	h.d.mDrillGap.Describe(ch)
	close(ch)
	re := regexp.MustCompile(`fqName: "([^"]+)", help: "([^"]*)"`)
	for d := range ch {
		m := re.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read %s", d)
		}
		out[m[1]] = m[2]
	}
	return out
}

// The alert rules, the Grafana dashboard and docs/metrics.md name only
// families directord exports, and the docs name every one of them; the
// rules pass promtool's check and their own unit tests.
func TestMetricsDocsRulesDashboard(t *testing.T) {
	fams := families(t)
	names := regexp.MustCompile(`\bdirectord_[a-z0-9_]*[a-z0-9]\b`)
	exported := func(n string) bool {
		for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
			if _, ok := fams[strings.TrimSuffix(n, suffix)]; ok && strings.HasSuffix(n, suffix) {
				return true
			}
		}
		return false
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join("..", "..", p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	docs := read("docs/metrics.md")
	for _, f := range []string{"etc/prometheus/directord.rules.yml", "etc/prometheus/directord.rules.test.yml", "etc/grafana/directord.json", "docs/metrics.md"} {
		for _, n := range names.FindAllString(read(f), -1) {
			if !exported(n) {
				t.Errorf("%s names %s, which directord does not export", f, n)
			}
		}
	}
	for n := range fams {
		if !strings.Contains(docs, "`"+n+"`") && !strings.HasPrefix(n, "go_") && !strings.HasPrefix(n, "process_") {
			t.Errorf("docs/metrics.md does not describe %s (%s)", n, fams[n])
		}
	}
	var dash struct {
		Panels []struct {
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal([]byte(read("etc/grafana/directord.json")), &dash); err != nil {
		t.Fatalf("etc/grafana/directord.json: %v", err)
	}
	exprs := 0
	for _, p := range dash.Panels {
		exprs += len(p.Targets)
	}
	if exprs < 20 {
		t.Errorf("the dashboard has %d queries", exprs)
	}

	lab.Require(t, "promtool")
	for _, args := range [][]string{{"check", "rules", "directord.rules.yml"}, {"test", "rules", "directord.rules.test.yml"}} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = filepath.Join("..", "..", "etc", "prometheus")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

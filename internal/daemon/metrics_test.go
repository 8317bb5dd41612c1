package daemon

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/directord/directord/internal/api"
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
		"directord_lvs_service_info{address=192.0.2.100:80,protocol=tcp,service=web}":          1,
		"directord_lvs_service_refused{service=web}":                                           0,
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

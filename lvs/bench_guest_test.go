package lvs_test

import (
	"fmt"
	"testing"

	"github.com/directord/directord/lvs"
	"github.com/directord/directord/lvs/lvstest"
)

// TestGuestBenchIPVS is make bench-lvs's IPVS half: operation counts (the
// guest's clock is emulated, so its times are indicative only). It prints
// one BENCH line per step for the host to read.
func TestGuestBenchIPVS(t *testing.T) {
	r, err := lvs.NewReconciler(lvs.GuestIPVS(t), lvs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	steps, err := lvstest.MeasureReconcile(r, lvstest.SyntheticTable(1000, 10))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		fmt.Printf("BENCH ipvs %q ops=%d duration=%s\n", s.Name, s.Ops, s.Duration)
	}
}

package lvs_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/lvs"
	"github.com/directord/directord/lvs/lvstest"
)

// TestGuestBenchIPVS is make bench-lvs's IPVS half: operation counts (the
// guest's clock is emulated, so its times are indicative only), and the
// anchor: ipvsadm -R loading the same table into an empty IPVS, on the
// same emulated clock. It prints one BENCH line per step for the host to
// read.
func TestGuestBenchIPVS(t *testing.T) {
	d := lvs.GuestIPVS(t)
	r, err := lvs.NewReconciler(d, lvs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	table := lvstest.SyntheticTable(lvstest.BenchServices, lvstest.BenchReals)
	steps, err := lvstest.MeasureReconcile(r, table)
	if err != nil {
		t.Fatal(err)
	}
	ipvsadm, err := exec.LookPath("ipvsadm")
	if err != nil {
		t.Fatalf("no ipvsadm in the guest (make test-deps installs it on the host, the guest takes it from there): %v", err)
	}
	if out, err := exec.Command(ipvsadm, "-C").CombinedOutput(); err != nil {
		t.Fatalf("ipvsadm -C: %v: %s", err, out)
	}
	cmd := exec.Command(ipvsadm, "-R")
	cmd.Stdin = strings.NewReader(lvstest.IPVSADMRestore(table))
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ipvsadm -R: %v: %s", err, out)
	}
	anchor := lvstest.Step{Name: "anchor: ipvsadm -R", Ops: 1, Duration: time.Since(start)}
	if es, err := d.List(); err != nil || len(es) != len(table) {
		t.Fatalf("after ipvsadm -R the kernel has %d services (%v), want %d", len(es), err, len(table))
	}
	for _, s := range append(steps, anchor) {
		fmt.Printf("BENCH ipvs %q ops=%d duration=%s\n", s.Name, s.Ops, s.Duration)
	}
}

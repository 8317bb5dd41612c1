package guest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
)

// TestIPVSInGuest runs the lvs package's IPVS tests (TestGuestIPVS*)
// inside Debian's kernel under qemu: the machines' own kernels have no
// IPVS. make test fetches the kernel package first (make guest-kernel).
func TestIPVSInGuest(t *testing.T) {
	lab.Require(t, "qemu-system-x86_64", "busybox")
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(KernelDir(root)); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no guest kernel at %s (make guest-kernel)", KernelDir(root))
		}
		t.Skipf("no guest kernel at %s: run make guest-kernel", KernelDir(root))
	}
	res, err := RunTests(context.Background(), root, "./lvs", "^TestGuestIPVS", 5*time.Minute)
	if res != nil {
		t.Logf("guest console:\n%s", res.Output)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Exit != 0 {
		t.Fatalf("the IPVS tests failed in the guest (exit %d)", res.Exit)
	}
	for _, name := range []string{"TestGuestIPVSSchedulers", "TestGuestIPVSFeatures", "TestGuestIPVSOwnership", "TestGuestIPVSSyncDaemons", "TestGuestIPVSRefusedServiceIsolated", "TestGuestIPVSFlows", "TestGuestIPVSTimeouts", "TestGuestIPVSStats64", "TestGuestIPVSPackets"} {
		if !strings.Contains(res.Output, "--- PASS: "+name) {
			t.Errorf("%s did not pass in the guest", name)
		}
	}
	if strings.Contains(res.Output, "--- SKIP") || strings.Contains(res.Output, "GUEST: insmod") {
		t.Errorf("a guest test skipped or a module failed to load")
	}

	// The daemon itself on IPVS: auto's choice, the table, sysctls, stop.
	res, err = RunTests(context.Background(), root, "./internal/daemon", "^TestGuestDaemon", 5*time.Minute)
	if res != nil {
		t.Logf("guest console:\n%s", res.Output)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Exit != 0 || !strings.Contains(res.Output, "--- PASS: TestGuestDaemonIPVS") || !strings.Contains(res.Output, "--- PASS: TestGuestDaemonSyncDaemons") ||
		!strings.Contains(res.Output, "--- PASS: TestGuestDaemonSave") || strings.Contains(res.Output, "--- SKIP") {
		t.Fatalf("the daemon's IPVS test failed in the guest (exit %d)", res.Exit)
	}

	// Every keepalived.conf of directorctl convert's tests, converted and
	// run on IPVS.
	res, err = RunTests(context.Background(), root, "./internal/convert", "^TestGuestConvertedRun", 5*time.Minute)
	if res != nil {
		t.Logf("guest console:\n%s", res.Output)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Exit != 0 || !strings.Contains(res.Output, "--- PASS: TestGuestConvertedRun") || strings.Contains(res.Output, "--- SKIP") ||
		strings.Count(res.Output, "    --- PASS: TestGuestConvertedRun/") < 9 {
		t.Fatalf("the converted files did not all run in the guest (exit %d)", res.Exit)
	}
}

package guest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/directord/directord/internal/lab"
)

// TestIPVSInGuest runs the lvs package's IPVS tests (TestGuest*) inside
// Debian's kernel under qemu: the machines' own kernels have no IPVS.
// make test fetches the kernel package first (internal/guest/fetch-kernel.sh).
func TestIPVSInGuest(t *testing.T) {
	lab.Require(t, "qemu-system-x86_64", "busybox")
	root := moduleRoot(t)
	kdir := os.Getenv("DIRECTORD_GUEST_KERNEL")
	if kdir == "" {
		kdir = filepath.Join(root, ".cache", "guest", "current")
	}
	if _, err := os.Stat(kdir); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no guest kernel at %s (make guest-kernel)", kdir)
		}
		t.Skipf("no guest kernel at %s: run make guest-kernel", kdir)
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(t.TempDir(), "lvs.test")
	build := exec.Command("go", "test", "-c", "-o", prog, "./lvs")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the lvs tests: %v\n%s", err, out)
	}
	res, err := Run(context.Background(), Config{
		KernelDir: kdir,
		Busybox:   busybox,
		Modules:   []string{"crc32c_generic", "ip_vs", "ip_vs_*"},
		Program:   prog,
		Args:      []string{"-test.v", "-test.count=1", "-test.run", "^TestGuest"},
		Env:       []string{"DIRECTORD_IPVS_GUEST=1"},
	})
	if res != nil {
		t.Logf("guest console:\n%s", res.Output)
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Exit != 0 {
		t.Fatalf("the IPVS tests failed in the guest (exit %d)", res.Exit)
	}
	for _, name := range []string{"TestGuestIPVSSchedulers", "TestGuestIPVSFeatures", "TestGuestIPVSOwnership"} {
		if !strings.Contains(res.Output, "--- PASS: "+name) {
			t.Errorf("%s did not pass in the guest", name)
		}
	}
	if strings.Contains(res.Output, "--- SKIP") || strings.Contains(res.Output, "insmod") && strings.Contains(res.Output, "failed") {
		t.Errorf("a guest test skipped or a module failed to load")
	}
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test")
		}
		dir = parent
	}
}

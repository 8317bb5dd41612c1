package guest

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// TestCompressedModules: modules shipped compressed (.ko.xz as Debian's
// kernels from trixie on, .ko.zst, .ko.gz) are found, their dependencies
// read, and they go into the initramfs as the plain ELF insmod takes.
func TestCompressedModules(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	_, modDir, err := findKernel(KernelDir(root))
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no guest kernel (make guest-kernel): %v", err)
		}
		t.Skipf("no guest kernel: run make guest-kernel (%v)", err)
	}
	plain, err := moduleOrder(modDir, []string{"ip_vs"})
	if err != nil {
		t.Fatal(err)
	}
	if len(plain) < 2 {
		t.Fatalf("ip_vs and its dependencies: %v", plain)
	}
	compress := map[string]func(io.Writer) (io.WriteCloser, error){
		".ko.xz":  func(w io.Writer) (io.WriteCloser, error) { return xz.NewWriter(w) },
		".ko.zst": func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) },
		".ko.gz":  func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriter(w), nil },
		".ko":     nil,
	}
	tmp := t.TempDir()
	orig := map[string][]byte{} // module name -> plain ELF
	for i, p := range plain {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		name := modName(filepath.Base(p))
		orig[name] = b
		suffix := moduleSuffixes[i%len(moduleSuffixes)]
		var buf bytes.Buffer
		if c := compress[suffix]; c != nil {
			w, err := c(&buf)
			if err != nil {
				t.Fatal(err)
			}
			w.Write(b)
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
		} else {
			buf.Write(b)
		}
		if err := os.WriteFile(filepath.Join(tmp, strings.TrimSuffix(filepath.Base(p), ".ko")+suffix), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	order, err := moduleOrder(tmp, []string{"ip_vs"})
	if err != nil {
		t.Fatal(err)
	}
	var names, want []string
	for i, p := range order {
		names = append(names, modName(filepath.Base(p)))
		want = append(want, modName(filepath.Base(plain[i])))
		b, err := readModule(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, orig[names[i]]) {
			t.Errorf("%s decompressed differs from the module", p)
		}
	}
	if !slices.Equal(names, want) {
		t.Fatalf("compressed modules load as %v; plain ones as %v", names, want)
	}
	var kinds []string
	for _, p := range order {
		kinds = append(kinds, filepath.Ext(p))
	}
	if !slices.Contains(kinds, ".xz") || !slices.Contains(kinds, ".zst") || !slices.Contains(kinds, ".gz") {
		t.Fatalf("the test's modules are not all compressed kinds: %v", order)
	}
}

// Package guest boots a Debian kernel in qemu (software emulation) with a
// busybox initramfs that loads the kernel modules a test needs and runs
// one statically linked program, and reports what it printed and its exit
// code. directord uses it to test the IPVS data plane on a kernel that
// has IPVS, which the machines' own kernels lack.
package guest

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Config says what to boot and run.
type Config struct {
	// KernelDir is an unpacked kernel package: boot/vmlinuz-VERSION and
	// lib/modules/VERSION.
	KernelDir string
	// Busybox is a statically linked busybox.
	Busybox string
	// Modules are loaded in this order, each after its dependencies.
	// A name may end in * to load every module of that prefix.
	Modules []string
	// Binaries are host programs copied into the guest at the same path,
	// with the shared objects they load (ipvsadm, as an independent
	// reader of the kernel's table).
	Binaries []string
	// Program is copied to /prog and run with Args and Env.
	Program string
	Args    []string
	Env     []string
	Timeout time.Duration
}

// Result is what the guest said.
type Result struct {
	Output string // the console, kernel messages included
	Exit   int    // the program's exit code
}

// Run boots the guest and waits for it to power off.
func Run(ctx context.Context, c Config) (*Result, error) {
	vmlinuz, modDir, err := findKernel(c.KernelDir)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "directord-guest")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	initrd := filepath.Join(tmp, "initrd.cpio")
	if err := buildInitrd(initrd, c, modDir); err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	if c.Timeout == 0 {
		c.Timeout = 5 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-nographic", "-no-reboot", "-accel", "tcg", "-m", "1024", "-smp", "2",
		"-kernel", vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 loglevel=4 rdinit=/init")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	res := &Result{Output: out.String(), Exit: -1}
	if m := exitLine.FindStringSubmatch(res.Output); m != nil {
		res.Exit, _ = strconv.Atoi(m[1])
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("guest did not power off within %s", c.Timeout)
	}
	if err != nil {
		return res, fmt.Errorf("qemu: %w", err)
	}
	if res.Exit < 0 {
		return res, errors.New("the guest never reported the program's exit")
	}
	return res, nil
}

var exitLine = regexp.MustCompile(`(?m)^GUEST-EXIT (\d+)\r?$`)

func findKernel(dir string) (vmlinuz, modDir string, err error) {
	m, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(m) != 1 {
		return "", "", fmt.Errorf("no single boot/vmlinuz-* in %s (run internal/guest/fetch-kernel.sh)", dir)
	}
	ver := strings.TrimPrefix(filepath.Base(m[0]), "vmlinuz-")
	modDir = filepath.Join(dir, "lib", "modules", ver)
	if _, err := os.Stat(modDir); err != nil {
		return "", "", fmt.Errorf("kernel modules: %w", err)
	}
	return m[0], modDir, nil
}

// moduleOrder resolves names (and prefixes ending in *) to module files
// under modDir, each preceded by what it depends on.
func moduleOrder(modDir string, names []string) ([]string, error) {
	files := map[string]string{} // module name -> path
	err := filepath.WalkDir(modDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && moduleFile(p) {
			files[modName(filepath.Base(p))] = p
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	var order []string
	done := map[string]bool{}
	var visit func(name string, from string) error
	visit = func(name, from string) error {
		name = modName(name)
		if done[name] {
			return nil
		}
		p, ok := files[name]
		if !ok {
			if from != "" {
				return nil // built in
			}
			return fmt.Errorf("no module %s in %s", name, modDir)
		}
		done[name] = true
		deps, err := moduleDeps(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		if pre, ok := strings.CutSuffix(n, "*"); ok {
			var match []string
			for m := range files {
				if strings.HasPrefix(m, modName(pre)) {
					match = append(match, m)
				}
			}
			slices.Sort(match) // a stable order
			for _, m := range match {
				if err := visit(m, ""); err != nil {
					return nil, err
				}
			}
			continue
		}
		if err := visit(n, ""); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleSuffixes are a module file's: plain, or compressed as Debian
// (xz, from trixie on) and other distributions (zstd, gzip) ship them.
var moduleSuffixes = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

func moduleFile(p string) bool {
	return slices.ContainsFunc(moduleSuffixes, func(s string) bool { return strings.HasSuffix(p, s) })
}

func modName(file string) string {
	for _, s := range moduleSuffixes {
		if n, ok := strings.CutSuffix(file, s); ok {
			file = n
			break
		}
	}
	return strings.ReplaceAll(file, "-", "_")
}

// readModule reads a module file, decompressed: busybox's insmod in the
// guest takes only plain ELF.
func readModule(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r io.Reader
	switch {
	case strings.HasSuffix(path, ".ko.xz"):
		r, err = xz.NewReader(bytes.NewReader(raw))
	case strings.HasSuffix(path, ".ko.zst"):
		var d *zstd.Decoder
		if d, err = zstd.NewReader(bytes.NewReader(raw)); err == nil {
			defer d.Close()
			r = d
		}
	case strings.HasSuffix(path, ".ko.gz"):
		r, err = gzip.NewReader(bytes.NewReader(raw))
	default:
		return raw, nil
	}
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	return b, nil
}

// moduleDeps reads the depends= entry of a module's .modinfo section.
func moduleDeps(path string) ([]string, error) {
	b, err := readModule(path)
	if err != nil {
		return nil, err
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, nil
	}
	info, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin /run
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /modules.list); do insmod "$m" || echo "GUEST: insmod $m failed"; done
ip link set lo up
ip addr add 127.0.0.1/8 dev lo 2>/dev/null
echo GUEST-START
env %s /prog %s
echo "GUEST-EXIT $?"
poweroff -f
`

// baseDirs are the initramfs's own directories.
var baseDirs = []string{"bin", "lib", "lib/modules", "proc", "sys", "dev", "tmp"}

func buildInitrd(path string, c Config, modDir string) error {
	mods, err := moduleOrder(modDir, c.Modules)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	w := &cpioWriter{w: bufio.NewWriter(f)}
	for _, d := range baseDirs {
		w.dir(d)
	}
	if err := w.fileFrom("bin/busybox", c.Busybox, 0o755); err != nil {
		return err
	}
	if err := w.fileFrom("prog", c.Program, 0o755); err != nil {
		return err
	}
	if err := w.programs(c.Binaries); err != nil {
		return err
	}
	var list []string
	for i, m := range mods {
		b, err := readModule(m)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("lib/modules/%02d-%s.ko", i, modName(filepath.Base(m)))
		w.file(name, b, 0o644)
		list = append(list, "/"+name)
	}
	w.file("modules.list", []byte(strings.Join(list, "\n")+"\n"), 0o644)
	w.file("init", fmt.Appendf(nil, initScript, shellWords(c.Env), shellWords(c.Args)), 0o755)
	w.trailer()
	if w.err != nil {
		return w.err
	}
	if err := w.w.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// programs copies host programs, and every shared object each loads, to
// the same paths in the guest, their directories first.
func (w *cpioWriter) programs(bins []string) error {
	var files []string
	for _, b := range bins {
		fs, err := elfClosure(b)
		if err != nil {
			return err
		}
		files = append(files, fs...)
	}
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(strings.TrimPrefix(f, "/")); d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	// Parents before children; the base directories exist already.
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		if !slices.Contains(baseDirs, d) {
			w.dir(d)
		}
	}
	for _, f := range files {
		if err := w.fileFrom(strings.TrimPrefix(f, "/"), f, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// libDirs are where the host's shared objects are looked for.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// elfClosure is path, its program interpreter and the shared objects it
// needs, recursively, each once.
func elfClosure(path string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	var visit func(p string) error
	visit = func(p string) error {
		p = filepath.Clean(p)
		if seen[p] {
			return nil
		}
		seen[p] = true
		out = append(out, p)
		f, err := elf.Open(p)
		if err != nil {
			return fmt.Errorf("guest program: %w", err)
		}
		defer f.Close()
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				b := make([]byte, prog.Filesz)
				if _, err := prog.ReadAt(b, 0); err != nil {
					return fmt.Errorf("guest program %s: interpreter: %w", p, err)
				}
				if err := visit(strings.TrimRight(string(b), "\x00")); err != nil {
					return err
				}
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("guest program %s: %w", p, err)
		}
		for _, l := range libs {
			i := slices.IndexFunc(libDirs, func(d string) bool {
				_, err := os.Stat(filepath.Join(d, l))
				return err == nil
			})
			if i < 0 {
				return fmt.Errorf("guest program %s needs %s: not in %v", p, l, libDirs)
			}
			if err := visit(filepath.Join(libDirs[i], l)); err != nil {
				return err
			}
		}
		return nil
	}
	return out, visit(path)
}

// shellWords quotes words for the init script.
func shellWords(ws []string) string {
	q := make([]string, len(ws))
	for i, w := range ws {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// cpioWriter writes the "newc" format the kernel unpacks an initramfs from.
type cpioWriter struct {
	w   *bufio.Writer
	ino int
	err error
}

func (c *cpioWriter) header(name string, mode uint32, size int) {
	c.ino++
	fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	c.w.WriteString(name)
	c.w.WriteByte(0)
	c.pad(110 + len(name) + 1)
}

func (c *cpioWriter) pad(n int) {
	for n%4 != 0 {
		c.w.WriteByte(0)
		n++
	}
}

func (c *cpioWriter) dir(name string) { c.header(name, 0o040755, 0) }

func (c *cpioWriter) file(name string, data []byte, perm uint32) {
	c.header(name, 0o100000|perm, len(data))
	c.w.Write(data)
	c.pad(len(data))
}

func (c *cpioWriter) fileFrom(name, src string, perm uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	c.header(name, 0o100000|perm, int(st.Size()))
	if _, err := io.Copy(c.w, f); err != nil {
		return err
	}
	c.pad(int(st.Size()))
	return nil
}

func (c *cpioWriter) trailer() { c.header("TRAILER!!!", 0, 0) }

// KernelDir is where make guest-kernel unpacks the kernel, under the
// module root, unless DIRECTORD_GUEST_KERNEL says otherwise.
func KernelDir(root string) string {
	if d := os.Getenv("DIRECTORD_GUEST_KERNEL"); d != "" {
		return d
	}
	return filepath.Join(root, ".cache", "guest", "current")
}

// RunTests builds a package's tests (pkg relative to the module at root,
// like "./lvs") and runs those matching pattern in the guest, with IPVS
// loaded and DIRECTORD_IPVS_GUEST=1 set.
func RunTests(ctx context.Context, root, pkg, pattern string, timeout time.Duration) (*Result, error) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "directord-lvs-test")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	prog := filepath.Join(tmp, "pkg.test")
	build := exec.CommandContext(ctx, "go", "test", "-c", "-o", prog, pkg)
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build the tests of %s: %v\n%s", pkg, err, out)
	}
	bins, env := guestPrograms()
	env = append(env, "DIRECTORD_IPVS_GUEST=1")
	return Run(ctx, Config{
		KernelDir: KernelDir(root),
		Busybox:   busybox,
		Modules:   []string{"crc32c_generic", "ip_vs", "ip_vs_*", "dummy", "veth", "ipip"},
		Binaries:  bins,
		Program:   prog,
		Args:      []string{"-test.v", "-test.count=1", "-test.run", pattern},
		Env:       env,
		Timeout:   timeout,
	})
}

// guestPrograms are the host's programs the IPVS tests run in the guest,
// when installed (make test installs them; a test that needs one fails
// without it): ipvsadm, and iproute2's ip (busybox's has no veth or
// netns), whose path the tests find in DIRECTORD_GUEST_IP.
func guestPrograms() (bins, env []string) {
	if p, err := exec.LookPath("ipvsadm"); err == nil {
		bins = append(bins, p)
	}
	if p, err := exec.LookPath("ip"); err == nil {
		bins = append(bins, p)
		env = append(env, "DIRECTORD_GUEST_IP="+p)
	}
	return bins, env
}

// ModuleRoot finds the directory holding go.mod, from the working
// directory up.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

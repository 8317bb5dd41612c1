package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/directord/directord/internal/testbed/lab"
)

// etc/directord.service passes systemd-analyze verify (its programs
// pointed at the built ones: nothing is installed here) and scores at most
// 4.0 in systemd-analyze security.
func TestSystemdUnit(t *testing.T) {
	lab.Require(t, "systemd-analyze")
	unit, err := os.ReadFile(repoFile("etc", "directord.service"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer("/usr/sbin/directord ", directord+" ", "/usr/sbin/directorctl ", directorctl+" ",
		"/sbin/modprobe", "/bin/true").Replace(string(unit))
	path := filepath.Join(t.TempDir(), "directord.service")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	// Documentation= names the manual pages: verify runs man on them,
	// here from docs/man as a package installs them.
	manpath := t.TempDir()
	for _, page := range []string{"directord.8", "directorctl.8", "directord.toml.5"} {
		dir := filepath.Join(manpath, "man"+page[len(page)-1:])
		os.MkdirAll(dir, 0o755)
		b, err := os.ReadFile(repoFile("docs", "man", page))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, page), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	verify := exec.Command("systemd-analyze", "verify", path)
	verify.Env = append(os.Environ(), "MANPATH="+manpath)
	if out, err := verify.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command("systemd-analyze", "security", "--offline=yes", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for directord.service: ([0-9.]+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no exposure level:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(m[1], 64); level > 4.0 {
		t.Fatalf("exposure %s, want at most 4.0:\n%s", m[1], out)
	}
	t.Logf("exposure %s", m[1])
}

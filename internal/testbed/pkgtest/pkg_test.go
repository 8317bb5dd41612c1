// Package pkgtest installs the .deb that make package builds, on this
// machine, checks what it installed, and removes it again.
package pkgtest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/directord/directord/internal/testbed/lab"
)

func root(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// make package builds a .deb and an .rpm; the .deb installs here (with its
// dependencies, from Debian), its example configuration passes directord
// -t, its unit passes systemd-analyze verify (its programs and manual
// pages installed), its completions and documents are in place, and
// purging it leaves nothing behind.
func TestDebianPackage(t *testing.T) {
	lab.Require(t, "dpkg", "apt-get", "make", "systemd-analyze", "man")
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "directord").Output(); strings.Contains(string(out), "installed") {
		if os.Getenv("CI") == "true" {
			t.Fatal("directord is already installed: CI's machine must be fresh")
		}
		t.Skip("directord is installed on this machine: this test would replace it")
	}
	dir := root(t)
	run(t, "make", "-C", dir, "package")
	debs, _ := filepath.Glob(filepath.Join(dir, "dist", "directord_*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(dir, "dist", "directord-*.rpm"))
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("make package made %v and %v", debs, rpms)
	}
	if b, err := os.ReadFile(rpms[0]); err != nil || len(b) < 4 || string(b[:4]) != "\xed\xab\xee\xdb" {
		t.Fatalf("%s is not an rpm: %v", rpms[0], err)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("dpkg", "--purge", "directord").CombinedOutput(); err != nil {
			t.Errorf("dpkg --purge: %v\n%s", err, out)
		}
		for _, p := range []string{"/usr/sbin/directord", "/etc/directord/directord.toml", "/usr/lib/systemd/system/directord.service"} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s is still there after the purge", p)
			}
		}
	})
	run(t, "apt-get", "install", "-y", "-qq", "--no-install-recommends", debs[0])

	if out := run(t, "/usr/sbin/directord", "-t", "-c", "/etc/directord/directord.toml"); !strings.Contains(out, "configuration is valid") {
		t.Fatalf("directord -t on the installed example: %s", out)
	}
	if out := run(t, "systemd-analyze", "verify", "/usr/lib/systemd/system/directord.service"); strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify on the installed unit:\n%s", out)
	}
	for _, page := range []string{"directord", "directorctl", "directord.toml"} {
		run(t, "man", "-w", page)
	}
	if fi, err := os.Stat("/etc/directord/directord.toml"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the configuration: %v %v", fi, err)
	}
	if out := run(t, "dpkg-query", "-W", "-f=${Conffiles}", "directord"); !strings.Contains(out, "/etc/directord/directord.toml") {
		t.Fatalf("the configuration is not a conffile: %q", out)
	}
	for _, p := range []string{"/usr/share/bash-completion/completions/directorctl", "/usr/share/zsh/vendor-completions/_directorctl",
		"/usr/share/doc/directord/README.md", "/usr/share/doc/directord/configuration.md", "/usr/share/directord/prometheus/directord.rules.yml",
		"/usr/share/directord/grafana/directord.json"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if out := run(t, "/usr/sbin/directorctl", "--version"); !strings.HasPrefix(out, "directorctl ") {
		t.Fatalf("directorctl --version: %q", out)
	}
}

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// directorctl talks to the daemon only through the API's plain types
// (internal/api): it must link none of the daemon's kernel, Raft, gossip
// or metrics code.
func TestDirectorctlLinksNoDaemonCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	heavy := []string{
		"github.com/hashicorp/raft", "github.com/hashicorp/memberlist", "github.com/google/nftables",
		"github.com/moby/ipvs", "github.com/vishvananda/netlink", "github.com/prometheus/",
		"github.com/mdlayher/", "github.com/ti-mo/",
		"github.com/directord/directord/internal/daemon", "github.com/directord/directord/lvs",
		"github.com/directord/directord/vrrp", "github.com/directord/directord/cluster",
		"github.com/directord/directord/sync",
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "github.com/directord/directord/cluster/pki" || pkg == "github.com/directord/directord/vrrp/route" {
			continue // the standard library only: cluster certs, the route syntax
		}
		for _, h := range heavy {
			// A module or package and everything under it.
			if pkg == strings.TrimSuffix(h, "/") || strings.HasPrefix(pkg, strings.TrimSuffix(h, "/")+"/") {
				t.Errorf("directorctl links %s", pkg)
			}
		}
	}
}

// The binary as make build makes it (stripped) stays small.
func TestDirectorctlSize(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "directorctl")
	if out, err := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() >= 8<<20 {
		t.Fatalf("directorctl is %d bytes, want under 8 MiB", fi.Size())
	}
	t.Logf("directorctl: %.1f MiB", float64(fi.Size())/(1<<20))
}

package convert_test

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/convert"
	"github.com/directord/directord/internal/daemon"
	"github.com/directord/directord/internal/status"
	"github.com/directord/directord/internal/testbed/lab"
)

// The test files travel inside the test binary: the guest has no source
// tree.
//
//go:embed testdata
var testdata embed.FS

// TestGuestConvertedRun runs every converted test file in the qemu guest,
// on Debian's kernel with IPVS, which is what a keepalived + ipvsadm
// operator has (make test-ipvs, part of make test): directord takes the
// file, its instances come up, and the kernel's table holds each of its
// virtual servers. IPVS-only keys (thresholds, one_packet, wlc, the sync
// daemon) are among them.
func TestGuestConvertedRun(t *testing.T) {
	if os.Getenv("DIRECTORD_IPVS_GUEST") != "1" {
		t.Skip("runs inside the qemu guest with Debian's kernel: make test-ipvs (part of make test)")
	}
	ip := os.Getenv("DIRECTORD_GUEST_IP")
	for _, c := range [][]string{
		{"link", "add", "eth0", "type", "dummy"}, {"addr", "add", "192.0.2.11/24", "dev", "eth0"}, {"link", "set", "eth0", "up"},
		{"link", "add", "eth1", "type", "dummy"}, {"addr", "add", "203.0.113.1/24", "dev", "eth1"}, {"link", "set", "eth1", "up"},
	} {
		if out, err := exec.Command(ip, c...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", c, err, out)
		}
	}
	// The files name users (script_user): a guest of the moment may have
	// none, and it is thrown away after the test.
	if _, err := os.Stat("/etc/passwd"); err != nil {
		os.MkdirAll("/etc", 0o755)
		os.WriteFile("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644)
		os.WriteFile("/etc/group", []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644)
	}
	dir := t.TempDir()
	if err := os.CopyFS(dir, testdata); err != nil {
		t.Fatal(err)
	}
	files, _ := fs.Glob(testdata, "testdata/*.conf")
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".conf")
		if name == "broken" {
			continue
		}
		t.Run(name, func(t *testing.T) {
			res, err := convert.File(filepath.Join(dir, f), convert.Options{ConfigID: "lb1"})
			if err != nil {
				t.Fatal(err)
			}
			hd := t.TempDir()
			sock := filepath.Join(hd, "directord.sock")
			text := strings.Replace(string(res.TOML), "[node]\n", fmt.Sprintf("[node]\ndata_dir = %q\nstatus_socket = %q\n", filepath.Join(hd, "data"), sock), 1)
			file := filepath.Join(hd, "directord.toml")
			if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := daemon.CheckConfig(file)
			if err != nil {
				t.Fatalf("directord -t: %v\n%s", err, text)
			}
			log := &lab.Buffer{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- daemon.Run(ctx, daemon.Options{ConfigFile: file, Version: "guest", Log: log}) }()
			defer func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run: %v\n%s", err, log.String())
				}
			}()
			if err := lab.Eventually(20*time.Second, func() error { return running(sock, cfg) }); err != nil {
				t.Fatalf("%v\n%s\n%s", err, text, log.String())
			}
		})
	}
}

// running says whether the daemon at sock runs cfg: every instance
// MASTER or BACKUP, every virtual server in IPVS.
func running(sock string, cfg *config.Config) error {
	raw, err := status.NewClient(sock).Raw(context.Background(), "/v1/status")
	if err != nil {
		return err
	}
	var doc api.Document
	if err := json.Unmarshal(raw, &doc); err != nil {
		return err
	}
	if doc.VRRP == nil || len(doc.VRRP.Instances) != len(cfg.VRRP) {
		return fmt.Errorf("instances: %+v", doc.VRRP)
	}
	for _, in := range doc.VRRP.Instances {
		if in.State != api.StateMaster && in.State != api.StateBackup {
			return fmt.Errorf("instance %s is %s", in.Name, in.State)
		}
	}
	if doc.LVS == nil || doc.LVS.Dataplane != "ipvs" || len(doc.LVS.Services) != len(cfg.VirtualServers) {
		return fmt.Errorf("the kernel's table: %+v", doc.LVS)
	}
	return nil
}

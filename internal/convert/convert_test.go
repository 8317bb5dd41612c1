package convert_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/convert"
)

var update = flag.Bool("update", false, "write the golden files")

// Each keepalived.conf of testdata (one per feature, and a pair) converts
// to its golden TOML and notes; the TOML passes directord's checks of the
// file, except broken.conf's, which says what is left to do.
func TestGolden(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.conf"))
	if len(files) < 10 {
		t.Fatalf("only %d test files", len(files))
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".conf")
		t.Run(name, func(t *testing.T) {
			res, err := convert.File(f, convert.Options{ConfigID: "lb1"})
			if err != nil {
				t.Fatal(err)
			}
			var notes bytes.Buffer
			for _, n := range res.Notes {
				notes.WriteString(n.String() + "\n")
			}
			golden(t, strings.TrimSuffix(f, ".conf")+".toml", res.TOML)
			golden(t, strings.TrimSuffix(f, ".conf")+".notes", notes.Bytes())
			_, err = config.Parse(name+".toml", res.TOML)
			if name == "broken" {
				if err == nil {
					t.Fatal("broken.conf converted to a valid file")
				}
				return
			}
			if err != nil {
				t.Fatalf("the converted file is refused:\n%v\n%s", err, res.TOML)
			}
		})
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("%s differs from the conversion (go test ./internal/convert -update, then read the diff):\n%s", path, got)
	}
}

// The @ lines follow the config id; the other director of the pair gets
// its own name and priority from the same file.
func TestConfigID(t *testing.T) {
	res, err := convert.File(filepath.Join("testdata", "pair.conf"), convert.Options{ConfigID: "lb2"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("lb2.toml", res.TOML)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node.Name != "lb2" || len(cfg.VRRP) != 2 || cfg.VRRP[0].Priority != 100 || cfg.VRRP[0].InitialMaster {
		t.Fatalf("lb2: %+v %+v", cfg.Node, cfg.VRRP)
	}
	if len(cfg.VirtualServers) != 1 || cfg.VirtualServers[0].Address.String() != "192.0.2.200:80" {
		t.Fatalf("the included virtual server with $VIP: %+v", cfg.VirtualServers)
	}
}

package manpage_test

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/directord/directord/internal/manpage"
)

var update = flag.Bool("update", false, "write the pages (make man)")

// The committed pages are what the sources make now: `make man` after
// changing a flag, directorctl's usage or docs/configuration.md.
func TestPagesUpToDate(t *testing.T) {
	root := filepath.Join("..", "..")
	src, err := manpage.FromRepo(root)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range manpage.Pages(src) {
		if *update {
			if err := os.MkdirAll(filepath.Join(root, manpage.Dir), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(root, manpage.Dir, name), want, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		got, err := os.ReadFile(filepath.Join(root, manpage.Dir, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s/%s is not what the sources make (run make man): %v", manpage.Dir, name, err)
		}
	}
}

// The pages are well-formed roff: man renders them without a warning,
// and they say what they must.
func TestPagesRender(t *testing.T) {
	src, err := manpage.FromRepo(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	pages := manpage.Pages(src)
	for name, want := range map[string][]string{
		"directord.8":      {"-t", "SIGUSR1", "directord.toml(5)", "/etc/directord/directord.toml"},
		"directorctl.8":    {"convert", "drill", "EXIT STATUS", "not reachable"},
		"directord.toml.5": {"VRRP_INSTANCE", "virtual_router_id", "health_check", "helo_name"},
	} {
		text := string(pages[name])
		if _, err := exec.LookPath("groff"); err != nil && os.Getenv("CI") == "true" {
			t.Fatal("groff is needed to check the pages, and under CI=true the check must run")
		} else if err == nil {
			cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
			cmd.Stdin = bytes.NewReader(pages[name])
			out, err := cmd.CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Errorf("groff on %s: %v\n%s", name, err, out)
			}
			cmd = exec.Command("groff", "-man", "-Tutf8", "-P-cbou") // plain text
			cmd.Stdin = bytes.NewReader(pages[name])
			if out, err = cmd.Output(); err == nil {
				text = strings.ReplaceAll(string(out), "\u2010", "-")
			}
		}
		for _, w := range want {
			if !strings.Contains(text, w) {
				t.Errorf("%s does not say %q", name, w)
			}
		}
	}
}

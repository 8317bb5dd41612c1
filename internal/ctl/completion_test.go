package ctl

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The completion scripts know every command and each command's own flags
// (they are generated from the command table), and bash runs its own.
func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh"} {
		var out, errb bytes.Buffer
		if code := run([]string{"completion", shell}, &out, &errb, env{}); code != 0 {
			t.Fatalf("%s: exit %d: %s", shell, code, errb.String())
		}
		for name, cmd := range commands {
			if !strings.Contains(out.String(), name) {
				t.Errorf("%s: no command %s", shell, name)
			}
			for _, f := range cmd.flags {
				if !strings.Contains(out.String(), "-"+f) {
					t.Errorf("%s: %s lacks its flag %s", shell, name, f)
				}
			}
		}
	}
	if code := run([]string{"completion", "fish"}, &bytes.Buffer{}, &bytes.Buffer{}, env{}); code != exitUsage {
		t.Errorf("completion fish: exit %d, want %d", code, exitUsage)
	}

	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("no bash to run the script (Debian always has one)")
	}
	var script bytes.Buffer
	run([]string{"completion", "bash"}, &script, &bytes.Buffer{}, env{})
	file := filepath.Join(t.TempDir(), "directorctl.bash")
	if err := os.WriteFile(file, script.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ words, want string }{
		{"directorctl fail", "failover"},
		{"directorctl failover VI_1 --f", "--force"},
		{"directorctl rs d", "drain disable"},
	} {
		w := strings.Fields(tc.words)
		prog := "source " + file + "; COMP_WORDS=(" + strings.Join(w, " ") + "); COMP_CWORD=" + string(rune('0'+len(w)-1)) +
			"; _directorctl; echo \"${COMPREPLY[*]}\""
		got, err := exec.Command(bash, "-c", prog).Output()
		if err != nil || strings.TrimSpace(string(got)) != tc.want {
			t.Errorf("%q: %q %v, want %q", tc.words, got, err, tc.want)
		}
	}
}

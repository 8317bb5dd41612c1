// Package e2e tests directord on the real kernel paths inside lab
// namespaces: mostly the built directord and directorctl binaries, run the
// way an operator runs them (against keepalived, nginx, tshark and
// conntrack where a test needs an independent party), and also the
// packages' kernel code directly (the nftables data plane, the conntrack
// table, the health checkers against real servers).
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/directord/directord/internal/testbed/lab"
)

var directord, directorctl string

func TestMain(m *testing.M) {
	if os.Getenv("DIRECTORD_HELPER_CHECK") != "" {
		os.Exit(m.Run()) // a helper process needs no binaries
	}
	dir, err := os.MkdirTemp("", "directord-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	directord, directorctl, err = lab.Build(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// repoFile is the path of a file of the repository.
func repoFile(parts ...string) string {
	_, self, _, _ := runtime.Caller(0)
	return filepath.Join(append([]string{filepath.Dir(self), "..", "..", ".."}, parts...)...)
}

// run runs a built binary and returns its stdout, stderr and exit code.
func run(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	return out.String(), errb.String(), 0
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// tally asks n times and counts who answered; a question that fails fails
// the test.
func tally(t *testing.T, n int, ask func() (string, error)) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		name, err := ask()
		if err != nil {
			t.Fatal(err)
		}
		got[name]++
	}
	return got
}

package lab

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Build compiles directord and directorctl into dir and returns their
// paths. End-to-end tests call it once from TestMain. With
// DIRECTORD_RACE=1 the binaries have the race detector (make test-race):
// a race makes directord exit with code 66, which the tests see.
func Build(dir string) (directord, directorctl string, err error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	args := []string{"build", "-o", dir + "/"}
	if os.Getenv("DIRECTORD_RACE") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/directord", "./cmd/directorctl")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build: %v: %s", err, out)
	}
	return filepath.Join(dir, "directord"), filepath.Join(dir, "directorctl"), nil
}

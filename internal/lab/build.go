package lab

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// Build compiles directord and directorctl into dir and returns their
// paths. End-to-end tests call it once from TestMain.
func Build(dir string) (directord, directorctl string, err error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/directord", "./cmd/directorctl")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build: %v: %s", err, out)
	}
	return filepath.Join(dir, "directord"), filepath.Join(dir, "directorctl"), nil
}

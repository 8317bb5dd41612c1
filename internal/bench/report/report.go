// Package report writes the benchmarks' sections of docs/benchmarks.md.
package report

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
)

// WriteSection replaces the section of the file at path between the
// markers of name (<!-- bench-NAME:begin --> and :end), or appends it.
func WriteSection(path, name, body string) error {
	begin, end := fmt.Sprintf("<!-- bench-%s:begin -->", name), fmt.Sprintf("<!-- bench-%s:end -->", name)
	section := begin + "\n" + strings.TrimRight(body, "\n") + "\n" + end + "\n"
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	doc := string(old)
	if doc == "" {
		doc = "# Benchmarks\n\nEach section is rewritten by the make target it names.\n\n"
	}
	if i, j := strings.Index(doc, begin), strings.Index(doc, end); i >= 0 && j > i {
		rest := doc[j+len(end):]
		rest = strings.TrimPrefix(rest, "\n")
		doc = doc[:i] + section + rest
	} else {
		if !strings.HasSuffix(doc, "\n\n") {
			doc += "\n"
		}
		doc += section
	}
	return os.WriteFile(path, []byte(doc), 0o644)
}

// Machine describes the machine: cores, CPU model, kernel, Go.
func Machine() string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	model := "unknown CPU"
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("%d cores (%s), Linux %s, %s", runtime.NumCPU(), model, strings.TrimSpace(string(kernel)), runtime.Version())
}

package report

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteSection(t *testing.T) {
	p := filepath.Join(t.TempDir(), "b.md")
	for _, step := range []struct{ name, body, want string }{
		{"a", "A1\n", "# Benchmarks\n\nEach section is rewritten by the make target it names.\n\n<!-- bench-a:begin -->\nA1\n<!-- bench-a:end -->\n"},
		{"b", "B1", "# Benchmarks\n\nEach section is rewritten by the make target it names.\n\n<!-- bench-a:begin -->\nA1\n<!-- bench-a:end -->\n\n<!-- bench-b:begin -->\nB1\n<!-- bench-b:end -->\n"},
		{"a", "A2\n", "# Benchmarks\n\nEach section is rewritten by the make target it names.\n\n<!-- bench-a:begin -->\nA2\n<!-- bench-a:end -->\n\n<!-- bench-b:begin -->\nB1\n<!-- bench-b:end -->\n"},
	} {
		if err := WriteSection(p, step.name, step.body); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		if string(got) != step.want {
			t.Fatalf("after writing %s:\n%q\nwant\n%q", step.name, got, step.want)
		}
	}
}

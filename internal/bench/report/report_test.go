package report

import (
	"image/color"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestWritePlot: a plot is a PNG of the grid's size whose dots are drawn
// in the series' colours.
func TestWritePlot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.png")
	panels := []Panel{
		{Title: "1s crash", Unit: "ms", Series: []Series{{"directord", Blue, []float64{2990, 3010, 2800}}, {"keepalived", Orange, []float64{3000, 3020}}}},
		{Title: "1s graceful", Unit: "ms", Series: []Series{{"directord", Blue, []float64{615}}, {"keepalived", Orange, nil}}},
		{Title: "empty", Unit: "ms"},
	}
	if err := WritePlot(path, "gaps", 2, panels); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != 2*panelW || b.Dy() != 2*panelH+44 {
		t.Fatalf("plot is %v", b)
	}
	count := map[color.RGBA]int{}
	for y := 0; y < img.Bounds().Dy(); y++ {
		for x := 0; x < img.Bounds().Dx(); x++ {
			r, g, b, a := img.At(x, y).RGBA()
			count[color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(b >> 8), uint8(a >> 8)}]++
		}
	}
	if count[Blue] < 4*25 || count[Orange] < 2*25 {
		t.Fatalf("too few dots drawn: blue %d, orange %d", count[Blue], count[Orange])
	}
	if got := niceCeil(3171); got != 5000 {
		t.Fatalf("niceCeil(3171) = %v", got)
	}
}

func TestTargets(t *testing.T) {
	var ts Targets
	ts.Check("one change under 50 ms", true, "34ms (median of 3)")
	ts.Check("full table under 1 s", false, "1.2s (median of 3)")
	var b strings.Builder
	if code := ts.Summary(&b, "bench-x"); code != 1 {
		t.Fatalf("exit %d with a target missed", code)
	}
	want := "bench-x: met    one change under 50 ms: 34ms (median of 3)\nbench-x: MISSED full table under 1 s: 1.2s (median of 3)\nbench-x: 1 of 2 targets met\n"
	if b.String() != want {
		t.Fatalf("summary:\n%s\nwant:\n%s", b.String(), want)
	}
	if md := ts.Markdown(); !strings.HasPrefix(md, "1 of 2 targets met:") || !strings.Contains(md, "| full table under 1 s | 1.2s (median of 3) | **no** |") {
		t.Fatalf("markdown:\n%s", md)
	}
	if code := ts[:1].Summary(io.Discard, "bench-x"); code != 0 {
		t.Fatalf("exit %d with every target met", code)
	}
	if code := Targets(nil).Summary(io.Discard, "bench-x"); code != 1 {
		t.Fatal("a benchmark without targets passed")
	}
	if m, runs := Median([]time.Duration{3, 1, 2}); m != 2 || runs != "median of 3" {
		t.Fatalf("median %v %s", m, runs)
	}
	if m, _ := Median([]time.Duration{4, 1, 2, 3}); m != 2 {
		t.Fatalf("median of four %v", m)
	}
}

package report

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Targets are a benchmark's goals, each with what was measured. A
// benchmark ends with Summary, which lists them all and says how many were
// met, and exits non-zero when one was missed.
type Targets []Target

// Target is one goal.
type Target struct {
	Name     string // the goal, "full table under 1 s"
	Measured string // what was measured, with how many runs it comes from
	Met      bool
}

// Check records a goal.
func (ts *Targets) Check(name string, met bool, format string, args ...any) {
	*ts = append(*ts, Target{Name: name, Measured: fmt.Sprintf(format, args...), Met: met})
}

// Missed counts the goals missed.
func (ts Targets) Missed() int {
	n := 0
	for _, t := range ts {
		if !t.Met {
			n++
		}
	}
	return n
}

// Markdown is the goals as a table for the report.
func (ts Targets) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d targets met:\n\n| target | measured | met |\n|---|---|---|\n", len(ts)-ts.Missed(), len(ts))
	for _, t := range ts {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.Name, t.Measured, map[bool]string{true: "yes", false: "**no**"}[t.Met])
	}
	return b.String()
}

// Summary prints each goal and "N of M targets met" to w, and returns the
// exit status: 0 when every goal was met, 1 otherwise.
func (ts Targets) Summary(w io.Writer, bench string) int {
	for _, t := range ts {
		mark := "met   "
		if !t.Met {
			mark = "MISSED"
		}
		fmt.Fprintf(w, "%s: %s %s: %s\n", bench, mark, t.Name, t.Measured)
	}
	fmt.Fprintf(w, "%s: %d of %d targets met\n", bench, len(ts)-ts.Missed(), len(ts))
	if ts.Missed() > 0 || len(ts) == 0 {
		return 1
	}
	return 0
}

// MinRuns is the fewest runs a median is taken from.
const MinRuns = 3

// Median is the median of ds and the number of runs it comes from, as the
// report says it: "median of 5".
func Median(ds []time.Duration) (time.Duration, string) {
	if len(ds) == 0 {
		return 0, "no run"
	}
	ds = slices.Sorted(slices.Values(ds))
	m := ds[len(ds)/2]
	if len(ds)%2 == 0 {
		m = (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
	}
	return m, fmt.Sprintf("median of %d", len(ds))
}

package daemon

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Under journald (JOURNAL_STREAM names stderr) each line starts with its
// syslog priority and has no time of its own, in both formats.
func TestJournalLines(t *testing.T) {
	for _, json := range []bool{false, true} {
		var buf bytes.Buffer
		level := new(slog.LevelVar)
		level.Set(slog.LevelDebug)
		log := slog.New(newJournalHandler(&buf, json, &slog.HandlerOptions{Level: level})).With("subsystem", "vrrp")
		log.Error("e", "k", 1)
		log.Warn("w")
		log.Info("i")
		log.WithGroup("g").Debug("d", "x", "y")
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		want := []string{"<3>", "<4>", "<6>", "<7>"}
		if len(lines) != len(want) {
			t.Fatalf("json %v: %q", json, lines)
		}
		for i, l := range lines {
			if !strings.HasPrefix(l, want[i]) || strings.Contains(l, "time") || !strings.Contains(l, "vrrp") {
				t.Errorf("json %v: line %q, want it to start with %s, carry the subsystem and no time", json, l, want[i])
			}
		}
	}
}

func TestToJournal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	env := fmt.Sprintf("%d:%d", st.Dev, st.Ino)
	switch {
	case !toJournal(f, env):
		t.Error("the stream JOURNAL_STREAM names is not taken for the journal")
	case toJournal(os.Stdin, env):
		t.Error("another file is taken for the journal")
	case toJournal(&bytes.Buffer{}, env), toJournal(f, ""), toJournal(f, "x"):
		t.Error("no journal without a file and a JOURNAL_STREAM naming it")
	}
}

// JSON lines write durations as Go duration strings, as the text lines do.
func TestLogDurations(t *testing.T) {
	var buf bytes.Buffer
	newLogger(&buf, "json", new(slog.LevelVar)).Info("reconciled", "took", 1500*time.Millisecond)
	if !strings.Contains(buf.String(), `"took":"1.5s"`) {
		t.Fatalf("%s", buf.String())
	}
}

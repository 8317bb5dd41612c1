package daemon

import (
	"bufio"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/directord/directord/internal/config"
)

// countProcesses on a made-up /proc: by command name (the kernel keeps 15
// bytes), by program path, zombies left out, threads' and other entries
// ignored.
func TestCountProcesses(t *testing.T) {
	proc := t.TempDir()
	mk := func(pid, comm, cmdline, state string) {
		dir := filepath.Join(proc, pid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, body := range map[string]string{
			"comm": comm + "\n", "cmdline": strings.ReplaceAll(cmdline, " ", "\x00") + "\x00",
			"stat": pid + " (" + comm + ") " + state + " 1 1 1",
		} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("10", "nginx", "/usr/sbin/nginx -g daemon", "S")
	mk("11", "nginx", "nginx: worker process", "S")
	mk("12", "nginx", "/usr/sbin/nginx", "Z") // exited, not reaped
	mk("13", "haproxy-with-a-", "/opt/haproxy-with-a-long-name", "R")
	mk("14", "my prog (x)", "/bin/my", "S")
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	got := countProcesses(proc, []config.TrackProcessDef{
		{Name: "by-name", Process: "nginx"},
		{Name: "by-path", Process: "/usr/sbin/nginx"},
		{Name: "long", Process: "haproxy-with-a-long-name"},
		{Name: "spaces", Process: "my prog (x)"},
		{Name: "none", Process: "sshd"},
	})
	want := map[string]int{"by-name": 2, "by-path": 1, "long": 1, "spaces": 1}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d, want %d (all: %v)", k, got[k], n, got)
		}
	}
	if got["none"] != 0 {
		t.Errorf("none: %d", got["none"])
	}
}

// notify_fifo: keepalived's lines, in order, into a FIFO made when
// missing; with no reader a line is dropped, not waited on.
func TestNotifyFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.fifo")
	f := newFIFO(slog.New(slog.DiscardHandler), func() string { return path })
	t.Cleanup(f.Close)

	// Nobody reads yet: the line goes (the FIFO is made), nothing blocks.
	f.line("INSTANCE", "VI_0", "BACKUP", 100)
	deadline := time.Now().Add(5 * time.Second)
	for {
		f.mu.Lock()
		dropped := f.dropped
		f.mu.Unlock()
		if dropped == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a line with no reader was not dropped (%d)", dropped)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("no FIFO made: %v %v", fi, err)
	}

	r, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	f.line("INSTANCE", "VI_1", "MASTER", 150)
	f.line("INSTANCE", "VI_1", "MASTER_RX_LOWER_PRI", 100)
	f.line("INSTANCE", "VI_1", "FAULT", 150)
	want := []string{`INSTANCE "VI_1" MASTER 150`, `INSTANCE "VI_1" MASTER_RX_LOWER_PRI 100`, `INSTANCE "VI_1" FAULT 150`}
	var got []string
	br := bufio.NewReader(r)
	for len(got) < len(want) && time.Now().Before(deadline) {
		l, err := br.ReadString('\n')
		if err == io.EOF || err != nil && strings.Contains(err.Error(), "resource temporarily unavailable") {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, strings.TrimSuffix(l, "\n"))
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("lines %q, want %q", got, want)
	}
}

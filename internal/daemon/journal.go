package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"syscall"
)

// toJournal reports whether w is the stream systemd connected to the
// journal: JOURNAL_STREAM names its device and inode.
func toJournal(w io.Writer, env string) bool {
	f, ok := w.(*os.File)
	if !ok || env == "" {
		return false
	}
	var dev, ino uint64
	if _, err := fmt.Sscanf(env, "%d:%d", &dev, &ino); err != nil {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return st.Dev == dev && st.Ino == ino
}

// journalHandler writes for the journal: each line starts with its
// syslog priority ("<4>"), which journald takes as the entry's priority
// (journalctl -p warning), and carries no time of its own (the journal
// stamps every entry).
type journalHandler struct {
	inner slog.Handler
	out   *prefixWriter
}

// prefixWriter puts the record's prefix before the one Write a handler
// makes per record; mu keeps prefix and write together.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix); err != nil {
		return 0, err
	}
	return p.w.Write(b)
}

func newJournalHandler(w io.Writer, json bool, opts *slog.HandlerOptions) *journalHandler {
	o := *opts
	o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		if opts.ReplaceAttr != nil {
			return opts.ReplaceAttr(groups, a)
		}
		return a
	}
	pw := &prefixWriter{w: w}
	var inner slog.Handler = slog.NewTextHandler(pw, &o)
	if json {
		inner = slog.NewJSONHandler(pw, &o)
	}
	return &journalHandler{inner: inner, out: pw}
}

// priority is syslog's for a level: err 3, warning 4, info 6, debug 7.
func priority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	}
	return "<7>"
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.prefix = priority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), out: h.out}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), out: h.out}
}

var _ slog.Handler = (*journalHandler)(nil)

package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"syscall"
)

// fifo writes keepalived's notify_fifo lines, `INSTANCE "NAME" STATE
// PRIORITY`, in order, from a queue of its own: a reader that is slow or
// absent never holds up VRRP. A line that cannot be written (no reader
// has the FIFO open) is dropped and counted, and logged once until a
// write succeeds again.
type fifo struct {
	log  *slog.Logger
	path func() string // the path in force (a reload may change it)

	lines chan string
	done  chan struct{}

	mu      sync.Mutex
	dropped uint64
	failing bool
}

const fifoQueue = 256

func newFIFO(log *slog.Logger, path func() string) *fifo {
	f := &fifo{log: log, path: path, lines: make(chan string, fifoQueue), done: make(chan struct{})}
	go f.run()
	return f
}

// line queues one notice; it returns at once.
func (f *fifo) line(kind, name, state string, prio uint8) {
	if f.path() == "" {
		return
	}
	select {
	case f.lines <- fmt.Sprintf("%s %q %s %d\n", kind, name, state, prio):
	default:
		f.drop(errors.New("queue full"))
	}
}

func (f *fifo) run() {
	defer close(f.done)
	for l := range f.lines {
		if err := f.write(l); err != nil {
			f.drop(err)
			continue
		}
		f.mu.Lock()
		f.failing = false
		f.mu.Unlock()
	}
}

// write appends one line. A missing path is made a FIFO, as keepalived
// does; opening without blocking fails at once when nobody reads.
func (f *fifo) write(l string) error {
	path := f.path()
	if path == "" {
		return nil
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if err := syscall.Mkfifo(path, 0o600); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("make FIFO %s: %w", path, err)
		}
	}
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer w.Close()
	if _, err := w.WriteString(l); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func (f *fifo) drop(err error) {
	f.mu.Lock()
	f.dropped++
	first := !f.failing
	f.failing = true
	f.mu.Unlock()
	if first {
		f.log.Warn("notify_fifo: a line was dropped (logged once until a write succeeds)", "path", f.path(), "err", err)
	}
}

// Close writes what is queued and stops.
func (f *fifo) Close() {
	close(f.lines)
	<-f.done
}

package vrrp

import (
	"fmt"
	"os"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Timer is an instance loop's next deadline. It may wake the loop early
// (never late): the loop checks its deadlines when woken.
type Timer interface {
	C() <-chan struct{}
	// Reset fires the timer after d (at once when d <= 0), replacing any
	// earlier setting.
	Reset(d time.Duration)
	Stop()
}

// runtimeTimer is a Timer on the Go runtime's timers: tests, and hosts
// without timerfd.
type runtimeTimer struct {
	t *time.Timer
	c chan struct{}
	f func()
}

// NewRuntimeTimer returns a Timer on the Go runtime's timers.
func NewRuntimeTimer() Timer {
	rt := &runtimeTimer{c: make(chan struct{}, 1)}
	rt.f = func() {
		select {
		case rt.c <- struct{}{}:
		default:
		}
	}
	rt.t = time.AfterFunc(time.Hour, rt.f)
	rt.t.Stop()
	return rt
}

func (rt *runtimeTimer) C() <-chan struct{} { return rt.c }

func (rt *runtimeTimer) Reset(d time.Duration) {
	rt.t.Stop()
	rt.drain()
	rt.t.Reset(d)
}

func (rt *runtimeTimer) Stop() { rt.t.Stop(); rt.drain() }

func (rt *runtimeTimer) drain() {
	select {
	case <-rt.c:
	default:
	}
}

// fdTimer is a Timer on a timerfd in the runtime's poller. The runtime's
// own timers wake its monitor thread at each expiry besides the thread
// that runs the timer: two context switches per advert, which at 10 ms
// adverts were most of an idle pair's CPU. A timerfd wakes only the
// poller. Its calls are non-blocking and go to the kernel with RawSyscall
// (see rawio.go).
type fdTimer struct {
	f    *os.File
	rc   syscall.RawConn
	c    chan struct{}
	gen  chan struct{} // closed by Stop: the reader ends
	done chan struct{}
}

// NewFDTimer returns a Timer on a timerfd, or an error where there is
// none (the caller falls back to NewRuntimeTimer).
func NewFDTimer() (Timer, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "timerfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	t := &fdTimer{f: f, rc: rc, c: make(chan struct{}, 1), gen: make(chan struct{}), done: make(chan struct{})}
	go t.read()
	return t, nil
}

// read turns the timerfd's expiries into sends on c.
func (t *fdTimer) read() {
	defer close(t.done)
	var buf [8]byte
	for {
		var errno syscall.Errno
		err := t.rc.Read(func(fd uintptr) bool {
			_, _, errno = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), 8)
			return errno != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if errno != 0 {
			select {
			case <-t.gen:
				return
			default:
			}
			continue
		}
		select {
		case t.c <- struct{}{}:
		default:
		}
	}
}

func (t *fdTimer) C() <-chan struct{} { return t.c }

func (t *fdTimer) Reset(d time.Duration) {
	// An expiry the loop has not taken yet is stale now. (One the reader
	// holds may still come: a wake-up early, which the loop, checking
	// its deadlines, takes for nothing.)
	select {
	case <-t.c:
	default:
	}
	// A setting of zero would disarm the timer: fire now instead.
	d = max(d, time.Microsecond)
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(d.Nanoseconds())}
	_ = t.rc.Control(func(fd uintptr) {
		unix.RawSyscall6(unix.SYS_TIMERFD_SETTIME, fd, 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
	})
}

func (t *fdTimer) Stop() {
	select {
	case <-t.gen:
		return
	default:
	}
	close(t.gen)
	t.f.Close()
	<-t.done
}

package lab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Process is a program running inside a host.
type Process struct {
	Name string
	cmd  *exec.Cmd
	out  *Buffer
	done chan struct{}
	err  error // of Wait, valid once done is closed
}

// Buffer collects a process's output while it runs and is read.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Start runs a program inside the host in its own process group, with its
// output collected. The lab kills it on Close.
func (h *Host) Start(name string, args ...string) *Process {
	// ip netns exec execs the program, so the pid is the program's own.
	cmd := h.Command(name, args...)
	buf := &Buffer{}
	cmd.Stdout, cmd.Stderr = buf, buf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &Process{Name: fmt.Sprintf("%s@%s", name, h.Name), cmd: cmd, out: buf, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		h.lab.fail("%s: start %s: %v", h.Name, name, err)
		return p
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	h.lab.mu.Lock()
	h.lab.procs = append(h.lab.procs, p)
	h.lab.mu.Unlock()
	h.lab.onClose(p.Kill)
	return p
}

// Pid is the program's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output is everything the program wrote so far.
func (p *Process) Output() string { return p.out.String() }

// Signal sends sig to the program.
func (p *Process) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Kill stops the program and everything it started, and waits for it.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// ErrStillRunning is returned by Wait when the program outlived the timeout.
var ErrStillRunning = errors.New("still running")

// Wait waits up to timeout for the program to exit and returns its exit
// code (-1 when killed by a signal).
func (p *Process) Wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return 0, fmt.Errorf("%s after %s: %w", p.Name, timeout, ErrStillRunning)
	}
	if p.err == nil {
		return 0, nil
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode(), nil
	}
	return 0, p.err
}

// Exited reports whether the program has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Eventually polls cond every 10ms until it holds or timeout passes, and
// returns the last error cond gave. Tests wait with it instead of sleeping.
func Eventually(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Throughout polls cond every 10ms for d and returns its first error: a
// state that must last (a held backup staying backup), not one awaited.
func Throughout(d time.Duration, cond func() error) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := cond(); err != nil {
			return fmt.Errorf("after %s of %s: %w", d-time.Until(deadline).Round(time.Millisecond), d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

// AcceptAndClose accepts connections on ln and closes each at once, until
// ln is closed: a target for tcp checks and connection probes.
func AcceptAndClose(ln net.Listener) {
	AcceptEach(ln, func(c net.Conn) { c.Close() })
}

// AcceptEach hands every connection ln accepts to handle, in a goroutine
// of its own, until ln is closed.
func AcceptEach(ln net.Listener, handle func(net.Conn)) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
}

package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// MaxOutput is how much of a program's output is kept.
const MaxOutput = 64 << 10

// Programs runs external programs (exec checks, and the daemon's track
// scripts and notify programs) the one way directord runs any: from an
// argument vector, never a shell; with only PATH in the environment; as
// Credential's user when set; in a process group of its own, killed whole
// when the context ends; output capped at MaxOutput; at most a bounded
// number at once.
type Programs struct {
	cred  *syscall.Credential
	slots chan struct{}
}

// NewPrograms runs programs as cred (nil: as this process), at most max
// at once.
func NewPrograms(cred *syscall.Credential, max int) *Programs {
	return &Programs{cred: cred, slots: make(chan struct{}, max)}
}

// As runs programs as cred, within the same bound as p.
func (p *Programs) As(cred *syscall.Credential) *Programs {
	return &Programs{cred: cred, slots: p.slots}
}

// ErrBusy: every slot stayed taken until the program's deadline.
var ErrBusy = errors.New("too many programs running at once")

// minimalPath is all the environment a program gets from directord.
const minimalPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Run runs argv until it exits or ctx ends. out is its combined output,
// cut at MaxOutput; err is an *exec.ExitError for a non-zero exit, and
// ctx's error when it was killed for it.
func (p *Programs) Run(ctx context.Context, argv []string) (out []byte, err error) {
	if len(argv) == 0 {
		return nil, errors.New("no program")
	}
	var cred *syscall.Credential
	if p != nil { // nil: as this process, without a bound (tests)
		select {
		case p.slots <- struct{}{}:
			defer func() { <-p.slots }()
		case <-ctx.Done():
			return nil, ErrBusy
		}
		cred = p.cred
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = []string{minimalPath}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	var buf capped
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err = cmd.Run()
	if ctx.Err() != nil {
		return buf.Bytes(), ctx.Err()
	}
	if err != nil && !errors.As(err, new(*exec.ExitError)) {
		return buf.Bytes(), fmt.Errorf("run %s: %w", argv[0], err)
	}
	return buf.Bytes(), err
}

// capped keeps the first MaxOutput bytes written to it and drops the
// rest, so that a chatty program cannot grow the daemon.
type capped struct {
	mu sync.Mutex
	b  []byte
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := MaxOutput - len(c.b); room > 0 {
		c.b = append(c.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *capped) Bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b
}

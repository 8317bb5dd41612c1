package daemon

import (
	"context"
	"errors"
	"os/exec"
	"syscall"
	"time"
)

// runProgram runs args[0] with args[1:] directly, never through a shell,
// in a process group of its own that is killed when timeout passes. It
// returns the combined output, the error of the run, and whether it was
// killed for the timeout.
func runProgram(args []string, timeout time.Duration) (out []byte, err error, timedOut bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	out, err = cmd.CombinedOutput()
	return out, err, errors.Is(ctx.Err(), context.DeadlineExceeded)
}

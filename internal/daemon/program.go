package daemon

import (
	"context"
	"errors"
	"syscall"
	"time"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/internal/config"
)

// runProgram runs args with p (no shell, minimal environment, as the
// script user, a process group of its own killed when timeout passes,
// output capped). It returns the combined output, the error of the run, and whether it was
// killed for the timeout.
func runProgram(p *healthcheck.Programs, args []string, timeout time.Duration) (out []byte, err error, timedOut bool) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err = p.Run(ctx, args)
	return out, err, errors.Is(ctx.Err(), context.DeadlineExceeded)
}

// newPrograms runs the programs of cfg: as [node] script_user (root
// without one), at most maxPrograms at once.
func newPrograms(n config.Node) *healthcheck.Programs {
	var cred *syscall.Credential
	if n.ScriptUser != "" {
		cred = &syscall.Credential{Uid: n.ScriptUID, Gid: n.ScriptGID, Groups: n.ScriptGroups}
	}
	return healthcheck.NewPrograms(cred, maxPrograms)
}

// maxPrograms bounds the programs running at once (checks, track
// scripts, notify programs): a burst of transitions cannot fork without
// limit.
const maxPrograms = 64

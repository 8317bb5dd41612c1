package daemon

import (
	"context"
	"log/slog"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
)

// scriptRunner runs the [[vrrp_script]] checks, each on its own ticker,
// and reports their dampened verdicts (rise/fall) to VRRP. A script
// starts as passing, like keepalived's without init_fail. Reloads keep
// the scripts that did not change running, and carry the verdict over to
// the ones that did, so a reload causes no flap.
type scriptRunner struct {
	log      *slog.Logger
	report   func(name string, ok bool)
	programs *healthcheck.Programs

	mu      sync.Mutex
	ctx     context.Context
	running map[string]*script
}

type script struct {
	cfg    config.VRRPScript
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	status api.ScriptStatus
}

func newScriptRunner(log *slog.Logger, report func(string, bool), programs *healthcheck.Programs) *scriptRunner {
	return &scriptRunner{log: log, report: report, programs: programs, running: map[string]*script{}}
}

// Run runs the scripts until ctx ends.
func (r *scriptRunner) Run(ctx context.Context, scripts []config.VRRPScript) error {
	r.mu.Lock()
	r.ctx = ctx
	r.mu.Unlock()
	r.Update(scripts)
	<-ctx.Done()
	r.Update(nil)
	return nil
}

// Update applies a new set of scripts.
func (r *scriptRunner) Update(scripts []config.VRRPScript) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil {
		return
	}
	carried := map[string]bool{}
	for name, s := range r.running {
		i := slices.IndexFunc(scripts, func(c config.VRRPScript) bool { return c.Name == name })
		if i >= 0 && reflect.DeepEqual(scripts[i], s.cfg) {
			continue
		}
		s.cancel()
		<-s.done
		carried[name] = s.snapshot().OK
		delete(r.running, name)
	}
	if r.ctx.Err() != nil {
		return
	}
	for _, c := range scripts {
		if _, ok := r.running[c.Name]; ok {
			continue
		}
		ok, known := carried[c.Name]
		s := &script{cfg: c, done: make(chan struct{}), status: api.ScriptStatus{Name: c.Name, OK: !known || ok}}
		ctx, cancel := context.WithCancel(r.ctx)
		s.cancel = cancel
		r.running[c.Name] = s
		go s.loop(ctx, r)
	}
}

// Status lists the scripts by name.
func (r *scriptRunner) Status() []api.ScriptStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.ScriptStatus, 0, len(r.running))
	for _, s := range r.running {
		out = append(out, s.snapshot())
	}
	slices.SortFunc(out, func(a, b api.ScriptStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func (s *script) snapshot() api.ScriptStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

func (s *script) loop(ctx context.Context, r *scriptRunner) {
	defer close(s.done)
	log := r.log.With("vrrp_script", s.cfg.Name)
	r.report(s.cfg.Name, s.snapshot().OK)
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	programs := r.programs
	if s.cfg.User != "" && programs != nil {
		programs = programs.As(&syscall.Credential{Uid: s.cfg.UID, Gid: s.cfg.GID, Groups: s.cfg.Groups})
	}
	for {
		_, err, timedOut := runProgram(programs, s.cfg.Script, s.cfg.Timeout)
		result := "ok"
		switch {
		case timedOut:
			result = "timed out after " + s.cfg.Timeout.String()
		case err != nil:
			result = err.Error()
		}
		passed := result == "ok"

		s.mu.Lock()
		st := &s.status
		st.Runs++
		st.LastRun, st.LastResult = time.Now(), result
		flipped := false
		if passed == st.OK {
			st.InARow = 0
		} else {
			st.InARow++
			need := s.cfg.Fall
			if passed {
				need = s.cfg.Rise
			}
			if st.InARow >= need {
				st.OK, st.InARow, flipped = passed, 0, true
			}
		}
		ok := st.OK
		s.mu.Unlock()
		if flipped {
			if ok {
				log.Info("vrrp_script passes again", "result", result)
			} else {
				log.Warn("vrrp_script failed", "result", result)
			}
			r.report(s.cfg.Name, ok)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

package healthcheck

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"sync"
	"time"
)

// ID names one check: the virtual server and the real server it checks.
type ID struct {
	Service string         `json:"service"`
	Real    netip.AddrPort `json:"real_server"`
}

// Transition is a change of a real server's state.
type Transition struct {
	ID     ID
	Up     bool
	Weight int    // from an exec check with dynamic weights, else -1
	Reason string // the last check's error, or "" when up
}

// Status is what a check has seen.
type Status struct {
	ID          ID        `json:"id"`
	Check       string    `json:"check"`
	Up          bool      `json:"up"`
	Weight      int       `json:"weight"` // -1: the configured weight
	Since       time.Time `json:"since"`
	Transitions int       `json:"transitions"`
	Checks      uint64    `json:"checks"`
	Failures    uint64    `json:"failures"`
	LastAt      time.Time `json:"last_at,omitzero"`
	LastOK      bool      `json:"last_ok"`
	LastError   string    `json:"last_error,omitempty"`
	Latency     string    `json:"latency"`
	LatencySecs float64   `json:"latency_seconds"`
	// Missed counts checks that started later than one interval after
	// the previous one was due.
	Missed uint64 `json:"missed"`
}

// Runner runs every check, each in its own goroutine on its own timer, so
// a slow server delays only its own check, and a check never overlaps
// itself.
type Runner struct {
	log      *slog.Logger
	onChange func(Transition)
	newCheck func(Spec) (Checker, error)
	tcp      *tcpProber // shared by the tcp checks

	mu     sync.Mutex
	checks map[ID]*check
	wg     sync.WaitGroup
	ctx    context.Context
}

type check struct {
	id     ID
	spec   Spec
	cancel context.CancelFunc
	done   chan struct{}

	mu sync.Mutex
	st Status
	d  dampener
}

// NewRunner returns a runner that calls onChange on every transition,
// from the check's goroutine: it must not block for long.
func NewRunner(log *slog.Logger, onChange func(Transition)) *Runner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Runner{log: log, onChange: onChange, tcp: newTCPProber(false), checks: map[ID]*check{}}
	r.newCheck = func(s Spec) (Checker, error) { return newChecker(s, r.tcp) }
	return r
}

// Run starts the checks given to Update and stops them all when ctx ends.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	r.ctx = ctx
	for _, c := range r.checks {
		r.start(c)
	}
	r.mu.Unlock()
	<-ctx.Done()
	r.wg.Wait()
	if err := r.tcp.Close(); err != nil {
		r.log.Warn("closing the tcp checks' epoll instance", "err", err)
	}
	return nil
}

// Update sets the checks: new ones start (down if alpha, else up),
// removed ones stop, changed ones restart with their state kept, and
// unchanged ones go on untouched. It returns an error for a spec no
// checker can be made for, changing nothing.
func (r *Runner) Update(specs map[ID]Spec) error {
	for _, s := range specs {
		if _, err := r.newCheck(s); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, c := range r.checks {
		if s, ok := specs[id]; !ok || !reflect.DeepEqual(s, c.spec) {
			c.stop()
			delete(r.checks, id)
			if ok {
				// Keep what is known of the server across the change.
				n := r.newState(id, s)
				c.mu.Lock()
				n.st.Up, n.st.Weight, n.st.Since, n.st.Transitions = c.st.Up, c.st.Weight, c.st.Since, c.st.Transitions
				n.d.up = c.st.Up
				c.mu.Unlock()
				r.checks[id] = n
				r.start(n)
			}
		}
	}
	for id, s := range specs {
		if _, ok := r.checks[id]; !ok {
			c := r.newState(id, s)
			r.checks[id] = c
			r.start(c)
			if s.Alpha && r.onChange != nil {
				// The load balancer assumes up until told otherwise.
				r.onChange(Transition{ID: id, Up: false, Weight: -1, Reason: "alpha: down until it passes"})
			}
		}
	}
	return nil
}

func (r *Runner) newState(id ID, s Spec) *check {
	c := &check{id: id, spec: s, done: make(chan struct{})}
	c.st = Status{ID: id, Check: s.String(), Up: !s.Alpha, Weight: -1, Since: time.Now()}
	c.d = dampener{rise: max(s.Rise, 1), fall: max(s.Fall, 1), up: !s.Alpha}
	return c
}

// start runs c if the runner is running; called with r.mu held.
func (r *Runner) start(c *check) {
	if r.ctx == nil || c.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.ctx)
	c.cancel = cancel
	chk, _ := r.newCheck(c.spec)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(c.done)
		r.loop(ctx, c, chk)
	}()
}

func (c *check) stop() {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
}

func (r *Runner) loop(ctx context.Context, c *check, chk Checker) {
	s := c.spec
	var first time.Duration
	if s.Warmup > 0 {
		first = rand.N(s.Warmup)
	}
	t := time.NewTimer(first)
	defer t.Stop()
	next := time.Now().Add(first)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		if late := start.Sub(next); late > s.Interval {
			c.mu.Lock()
			c.st.Missed++
			c.mu.Unlock()
		}
		res := r.attempt(ctx, c, chk)
		if ctx.Err() != nil {
			return
		}
		r.record(c, res, start, time.Since(start))
		// The next check is due one interval after this one started;
		// a check that took longer is followed at once.
		next = start.Add(s.Interval)
		t.Reset(max(time.Until(next), 0))
	}
}

// attempt runs the check, with retry further attempts on failure.
func (r *Runner) attempt(ctx context.Context, c *check, chk Checker) Result {
	var res Result
	for try := 0; ; try++ {
		if dc, ok := chk.(deadlineChecker); ok {
			res = dc.CheckBy(ctx, time.Now().Add(c.spec.Timeout))
		} else {
			actx, cancel := context.WithTimeout(ctx, c.spec.Timeout)
			res = chk.Check(actx)
			cancel()
		}
		if res.Err == nil || try >= c.spec.Retry || ctx.Err() != nil {
			return res
		}
		select {
		case <-ctx.Done():
			return res
		case <-time.After(c.spec.DelayBeforeRetry):
		}
	}
}

func (r *Runner) record(c *check, res Result, at time.Time, latency time.Duration) {
	c.mu.Lock()
	st := &c.st
	st.Checks++
	st.LastAt, st.LastOK = at, res.Err == nil
	st.Latency, st.LatencySecs = latency.Round(time.Microsecond).String(), latency.Seconds()
	st.LastError = ""
	if res.Err != nil {
		st.Failures++
		st.LastError = res.Err.Error()
	}
	changed := c.d.observe(res.Err == nil)
	weightChanged := res.Err == nil && res.Weight != st.Weight && c.d.up
	var tr *Transition
	if changed || weightChanged {
		if changed {
			st.Up = c.d.up
			st.Since = at
			st.Transitions++
		}
		if st.Up {
			st.Weight = res.Weight
		}
		tr = &Transition{ID: c.id, Up: st.Up, Weight: st.Weight, Reason: st.LastError}
	}
	c.mu.Unlock()

	if res.Warn == "" && tr == nil && (res.Err == nil || !c.spec.LogAllFailures) {
		return // the common case: nothing to say
	}
	log := r.log.With("service", c.id.Service, "real_server", c.id.Real.String(), "check", c.spec.String())
	if res.Warn != "" {
		log.Warn("health check warning", "warning", res.Warn)
	}
	if res.Err != nil && (c.spec.LogAllFailures || changed) {
		log.Warn("health check failed", "err", res.Err, "latency", latency.String())
	}
	if tr == nil {
		return
	}
	switch {
	case changed && tr.Up:
		log.Info("real server up", "weight", tr.Weight)
	case changed:
		log.Warn("real server down", "reason", tr.Reason)
	default:
		log.Info("real server weight changed", "weight", tr.Weight)
	}
	if r.onChange != nil {
		r.onChange(*tr)
	}
}

// States returns every check's status.
func (r *Runner) States() []Status {
	r.mu.Lock()
	cs := make([]*check, 0, len(r.checks))
	for _, c := range r.checks {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	out := make([]Status, 0, len(cs))
	for _, c := range cs {
		c.mu.Lock()
		out = append(out, c.st)
		c.mu.Unlock()
	}
	return out
}

// dampener turns check results into a state: rise successes in a row to
// come up, fall failures in a row to go down.
type dampener struct {
	rise, fall int
	up         bool
	ok, bad    int
}

// observe records a result and reports whether the state changed.
func (d *dampener) observe(ok bool) bool {
	if ok {
		d.ok, d.bad = d.ok+1, 0
		if !d.up && d.ok >= d.rise {
			d.up = true
			return true
		}
		return false
	}
	d.bad, d.ok = d.bad+1, 0
	if d.up && d.bad >= d.fall {
		d.up = false
		return true
	}
	return false
}

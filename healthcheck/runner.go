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

// ID names one check: the virtual server, the real server it checks and,
// as a server may have several checks, which one.
type ID struct {
	Service string         `json:"service"`
	Real    netip.AddrPort `json:"real_server"`
	Check   string         `json:"check,omitempty"`
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

// Runner runs every check from one queue ordered by when each is next
// due. A tcp check in flight is a socket in the prober's epoll set, not a
// goroutine; the other checks get a goroutine for the length of an
// attempt. A check is queued again only when its attempt has ended, so it
// never overlaps itself, and a slow server delays only its own check.
type Runner struct {
	log      *slog.Logger
	onChange func(Transition)
	newCheck func(Spec) (Checker, error)
	tcp      *tcpProber // shared by the tcp checks

	update  sync.Mutex // one Update at a time
	observe func(id ID, latency time.Duration, ok bool)

	// mu guards the checks, the queue and every check's schedule.
	mu     sync.Mutex
	checks map[ID]*check
	queue  timeHeap[*check] // by when each is next due
	ctx    context.Context  // of Run; nil before it and after
	wake   chan struct{}    // the queue's head changed
	wg     sync.WaitGroup   // goroutines of attempts in flight
}

type check struct {
	id   ID
	spec Spec
	chk  Checker
	end  func(Result) // r.end for c, made once

	// Under Runner.mu.
	busy    bool // an attempt is in flight
	cancel  func() bool
	stopped bool
	idle    chan struct{} // closed once stopped and no attempt is in flight

	// Of the attempt in flight, touched only by its starter and its end.
	planned time.Time // when this round was meant to start
	round   time.Time // when its first attempt started
	try     int

	mu sync.Mutex
	st Status
	d  dampener
}

// NewRunner returns a runner that calls onChange on every transition,
// from the goroutine that ended the check: it must not block for long.
func NewRunner(log *slog.Logger, onChange func(Transition)) *Runner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Runner{log: log, onChange: onChange, tcp: newTCPProber(false), checks: map[ID]*check{}, wake: make(chan struct{}, 1)}
	r.newCheck = func(s Spec) (Checker, error) { return newChecker(s, r.tcp) }
	return r
}

// Observe has f called with every check's result, from the goroutine
// that ended it (for a latency histogram). Call it before Run.
func (r *Runner) Observe(f func(id ID, latency time.Duration, ok bool)) { r.observe = f }

// slack is how early a check may start to share a wakeup with the one
// due before it: thousands of checks a second then cost hundreds of
// wakeups, not thousands.
func slack(interval time.Duration) time.Duration { return min(5*time.Millisecond, interval/10) }

// Run starts the checks given to Update and stops them all when ctx ends.
func (r *Runner) Run(ctx context.Context) error {
	r.mu.Lock()
	r.ctx = ctx
	now := time.Now()
	for _, c := range r.checks {
		r.plan(c, firstDue(c.spec, now))
	}
	r.mu.Unlock()

	t := time.NewTimer(time.Hour)
	defer t.Stop()
	var batch []*check
	for {
		r.mu.Lock()
		now := time.Now()
		batch = batch[:0]
		for r.queue.len() > 0 {
			due, c := r.queue.head()
			if due.After(now.Add(slack(c.spec.Interval))) {
				break
			}
			r.queue.pop()
			if c.stopped {
				continue // halted while queued (a stopped check is skipped, not taken out)
			}
			c.busy = true
			batch = append(batch, c)
		}
		wait := time.Hour
		if r.queue.len() > 0 {
			due, _ := r.queue.head()
			wait = due.Sub(now)
		}
		r.mu.Unlock()
		for _, c := range batch {
			r.begin(ctx, c)
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			r.stopAll()
			return nil
		case <-t.C:
		case <-r.wake:
		}
	}
}

// stopAll stops every check and waits for the attempts in flight.
func (r *Runner) stopAll() {
	r.mu.Lock()
	cs := make([]*check, 0, len(r.checks))
	for _, c := range r.checks {
		r.halt(c)
		cs = append(cs, c)
	}
	r.ctx = nil
	r.mu.Unlock()
	for _, c := range cs {
		<-c.idle
	}
	r.wg.Wait()
	r.mu.Lock()
	// The checks stay, stopped, for Update and a later Run to renew.
	for id, c := range r.checks {
		r.checks[id] = r.renew(c, c.spec)
	}
	r.mu.Unlock()
	if err := r.tcp.Close(); err != nil {
		r.log.Warn("closing the tcp checks' epoll instance", "err", err)
	}
}

func firstDue(s Spec, now time.Time) time.Time {
	if s.Warmup > 0 {
		return now.Add(rand.N(s.Warmup))
	}
	return now
}

// plan queues c's first round at at; called with r.mu held.
func (r *Runner) plan(c *check, at time.Time) {
	c.planned = at
	r.enqueue(c, at)
}

// enqueue queues c to be due at; called with r.mu held.
func (r *Runner) enqueue(c *check, at time.Time) {
	if r.queue.push(at, c) {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// begin starts an attempt of c, which the queue has just given up.
func (r *Runner) begin(ctx context.Context, c *check) {
	now := time.Now()
	if c.try == 0 {
		if late := now.Sub(c.planned); late > c.spec.Interval {
			c.mu.Lock()
			c.st.Missed++
			c.mu.Unlock()
		}
		c.round = now
	}
	by := now.Add(c.spec.Timeout)
	end := c.end
	var cancel func() bool
	if ac, ok := c.chk.(asyncChecker); ok {
		cancel = ac.start(by, end)
	} else {
		actx, stop := context.WithDeadline(ctx, by)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			res := c.chk.Check(actx)
			stop()
			end(res)
		}()
		cancel = func() bool { stop(); return false }
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !c.busy {
		return // it has ended already
	}
	if !c.stopped {
		c.cancel = cancel
	} else if cancel() {
		// Stopped while it was being started.
		c.busy = false
		close(c.idle)
	}
}

// end takes the result of c's attempt: a retry, or the round's result and
// the next round queued.
func (r *Runner) end(c *check, res Result) {
	r.mu.Lock()
	c.cancel = nil
	if c.stopped {
		c.busy = false
		close(c.idle)
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()

	now := time.Now()
	next := now.Add(c.spec.DelayBeforeRetry)
	if res.Err == nil || c.try >= c.spec.Retry {
		r.record(c, res, c.round, now.Sub(c.round))
		c.try = 0
		// The next round is planned one interval after this one was:
		// a check keeps its phase, so that checks spread by warmup stay
		// spread however the queue batches them. A round that started
		// more than an interval late sets a new phase from its start;
		// one that took longer than the interval is followed at once,
		// and counted late.
		if c.planned = c.planned.Add(c.spec.Interval); c.planned.Before(c.round) {
			c.planned = c.round.Add(c.spec.Interval)
		}
		next = c.planned
	} else {
		c.try++
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	// begin may have stored this attempt's cancel after the first lock.
	c.busy, c.cancel = false, nil
	if c.stopped {
		close(c.idle)
		return
	}
	r.enqueue(c, next)
}

// halt stops c: out of the queue, its attempt in flight cancelled; c.idle
// closes when no attempt is left in flight. Called with r.mu held.
func (r *Runner) halt(c *check) {
	if c.stopped {
		return
	}
	c.stopped = true // a queued check is dropped when it comes up
	if !c.busy {
		close(c.idle)
		return
	}
	if c.cancel != nil && c.cancel() {
		c.busy = false
		close(c.idle)
	}
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
	r.update.Lock()
	defer r.update.Unlock()

	// Stop the removed and changed checks, and wait for their attempts
	// in flight, without holding up the others.
	r.mu.Lock()
	var stopped []*check
	for id, c := range r.checks {
		if s, ok := specs[id]; !ok || !reflect.DeepEqual(s, c.spec) {
			r.halt(c)
			stopped = append(stopped, c)
		}
	}
	r.mu.Unlock()
	for _, c := range stopped {
		<-c.idle
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, c := range stopped {
		delete(r.checks, c.id)
		if s, ok := specs[c.id]; ok {
			// Keep what is known of the server across the change.
			n := r.renew(c, s)
			r.checks[c.id] = n
			if r.ctx != nil {
				r.plan(n, firstDue(s, now))
			}
		}
	}
	for id, s := range specs {
		if _, ok := r.checks[id]; ok {
			continue
		}
		c := r.newState(id, s)
		r.checks[id] = c
		if r.ctx != nil {
			r.plan(c, firstDue(s, now))
		}
		if s.Alpha && r.onChange != nil {
			// The load balancer assumes up until told otherwise.
			r.onChange(Transition{ID: id, Up: false, Weight: -1, Reason: "alpha: down until it passes"})
		}
	}
	return nil
}

func (r *Runner) newState(id ID, s Spec) *check {
	chk, _ := r.newCheck(s)
	c := &check{id: id, spec: s, chk: chk, idle: make(chan struct{})}
	c.end = func(res Result) { r.end(c, res) }
	c.st = Status{ID: id, Check: s.String(), Up: !s.Alpha, Weight: -1, Since: time.Now()}
	c.d = dampener{rise: max(s.Rise, 1), fall: max(s.Fall, 1), up: !s.Alpha}
	return c
}

// renew returns a new check of id to run s, with the state of the
// stopped check c.
func (r *Runner) renew(c *check, s Spec) *check {
	n := r.newState(c.id, s)
	c.mu.Lock()
	n.st.Up, n.st.Weight, n.st.Since, n.st.Transitions = c.st.Up, c.st.Weight, c.st.Since, c.st.Transitions
	n.d.up = c.st.Up
	c.mu.Unlock()
	return n
}

func (r *Runner) record(c *check, res Result, at time.Time, latency time.Duration) {
	c.mu.Lock()
	st := &c.st
	st.Checks++
	st.LastAt, st.LastOK = at, res.Err == nil
	st.LatencySecs = latency.Seconds()
	st.LastError = ""
	if res.Err != nil {
		st.Failures++
		st.LastError = res.Err.Error()
	}
	changed := c.d.observe(res.Err == nil)
	if r.observe != nil {
		r.observe(c.id, latency, res.Err == nil)
	}
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
	case changed && tr.Up && tr.Weight < 0:
		// -1 means the configured weight: nothing for an operator to read.
		log.Info("real server up")
	case changed && tr.Up:
		log.Info("real server up", "weight", tr.Weight)
	case changed:
		log.Warn("real server down", "reason", tr.Reason)
	case tr.Weight < 0:
		log.Info("real server weight back to the configured one")
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
		st := c.st
		c.mu.Unlock()
		// Formatted here, not on each of thousands of checks a second.
		st.Latency = time.Duration(st.LatencySecs * float64(time.Second)).Round(time.Microsecond).String()
		out = append(out, st)
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

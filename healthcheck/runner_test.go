package healthcheck

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestDampener(t *testing.T) {
	for _, tc := range []struct {
		rise, fall int
		start      bool
		results    string // . ok, x failure
		want       string // state after each result: U or D
	}{
		{2, 3, true, "xx.xxx", "UUUUUD"},
		{2, 3, false, ".x..x.", "DDDUUU"},
		{1, 1, true, "x.x.", "DUDU"},
		{3, 2, true, "xx.x.x..", "UDDDDDDD"}, // flapping every check: held down
		{2, 2, false, "..xx", "DUUD"},
	} {
		d := dampener{rise: tc.rise, fall: tc.fall, up: tc.start}
		got := ""
		for _, r := range tc.results {
			d.observe(r == '.')
			got += map[bool]string{true: "U", false: "D"}[d.up]
		}
		if got != tc.want {
			t.Errorf("rise %d fall %d start %v results %s: states %s, want %s", tc.rise, tc.fall, tc.start, tc.results, got, tc.want)
		}
	}
}

// script is a fake checker returning results from a list.
type script struct {
	mu      sync.Mutex
	results []Result
	n       int
	running atomic.Int32
	overlap atomic.Bool
	delay   time.Duration
}

func (s *script) Check(ctx context.Context) Result {
	if s.running.Add(1) > 1 {
		s.overlap.Store(true)
	}
	defer s.running.Add(-1)
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return fail("timeout")
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.results[min(s.n, len(s.results)-1)]
	s.n++
	return r
}

func (s *script) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

var (
	ok   = Result{Weight: -1}
	bad  = Result{Err: errors.New("refused"), Weight: -1}
	rsID = ID{Service: "web", Real: netip.MustParseAddrPort("203.0.113.11:80")}
)

type recorder struct {
	mu sync.Mutex
	tr []Transition
}

func (r *recorder) add(t Transition) {
	r.mu.Lock()
	r.tr = append(r.tr, t)
	r.mu.Unlock()
}

func (r *recorder) get() []Transition {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Transition(nil), r.tr...)
}

func eventually(t *testing.T, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func startRunner(t *testing.T, rec *recorder, fake Checker, s Spec) *Runner {
	t.Helper()
	r := NewRunner(nil, rec.add)
	r.newCheck = func(Spec) (Checker, error) { return fake, nil }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := r.Update(map[ID]Spec{rsID: s}); err != nil {
		t.Fatal(err)
	}
	return r
}

func spec() Spec {
	return Spec{Type: "tcp", Interval: 5 * time.Millisecond, Timeout: 50 * time.Millisecond, Rise: 2, Fall: 2}
}

func TestRunnerTransitions(t *testing.T) {
	rec := &recorder{}
	// up, up, down, down (-> DOWN), up, up (-> UP), then up for ever.
	fake := &script{results: []Result{ok, ok, bad, bad, ok, ok, ok}}
	r := startRunner(t, rec, fake, spec())
	eventually(t, func() error {
		if n := len(rec.get()); n < 2 {
			return fmt.Errorf("%d transitions", n)
		}
		return nil
	})
	tr := rec.get()
	if tr[0].Up || tr[0].Reason != "refused" || !tr[1].Up {
		t.Fatalf("transitions %+v", tr)
	}
	st := r.States()[0]
	if !st.Up || st.Transitions != 2 || st.Failures != 2 {
		t.Fatalf("status %+v", st)
	}
}

func TestRunnerNeverOverlaps(t *testing.T) {
	rec := &recorder{}
	// Each check takes 4 intervals: the next starts only after it ends.
	fake := &script{results: []Result{ok}, delay: 20 * time.Millisecond}
	r := startRunner(t, rec, fake, spec())
	eventually(t, func() error {
		if n := fake.calls(); n < 5 {
			return fmt.Errorf("%d checks", n)
		}
		return nil
	})
	if fake.overlap.Load() {
		t.Fatal("a check overlapped itself")
	}
	if st := r.States()[0]; st.Missed == 0 {
		t.Fatalf("checks slower than the interval are not counted as missed: %+v", st)
	}
}

func TestRunnerRetryAlphaAndWeight(t *testing.T) {
	rec := &recorder{}
	s := spec()
	s.Alpha, s.Retry, s.Rise = true, 1, 1
	// bad then ok: the retry saves the check. Then dynamic weights.
	fake := &script{results: []Result{bad, ok, {Weight: 7}, {Weight: 7}, {Weight: 3}}}
	startRunner(t, rec, fake, s)
	eventually(t, func() error {
		if n := len(rec.get()); n < 4 {
			return fmt.Errorf("%d transitions: %+v", n, rec.get())
		}
		return nil
	})
	tr := rec.get()
	want := []struct {
		up     bool
		weight int
	}{{false, -1}, {true, -1}, {true, 7}, {true, 3}}
	for i, w := range want {
		if tr[i].Up != w.up || tr[i].Weight != w.weight {
			t.Fatalf("transition %d: %+v, want %+v (all: %+v)", i, tr[i], w, tr)
		}
	}
}

func TestRunnerUpdateKeepsState(t *testing.T) {
	rec := &recorder{}
	fake := &script{results: []Result{bad}}
	r := startRunner(t, rec, fake, spec())
	eventually(t, func() error {
		if len(rec.get()) != 1 {
			return errors.New("not down yet")
		}
		return nil
	})
	s := spec()
	s.Interval = 7 * time.Millisecond
	if err := r.Update(map[ID]Spec{rsID: s}); err != nil {
		t.Fatal(err)
	}
	st := r.States()[0]
	if st.Up || st.Transitions != 1 {
		t.Fatalf("a changed check lost its state: %+v", st)
	}
	if err := r.Update(nil); err != nil {
		t.Fatal(err)
	}
	if n := len(r.States()); n != 0 {
		t.Fatalf("%d checks left after removing them", n)
	}
}

// TestRunnerTCPChecks runs the runner's own tcp checks, which are sockets
// in the prober's epoll set rather than goroutines: a listening port stays
// up, a closed one goes down with the kernel's reason, a check stuck on a
// port that drops SYNs is cancelled at once when Update removes it, and
// stopping the runner leaves no descriptor open.
func TestRunnerTCPChecks(t *testing.T) {
	open, closed, full := openListener(t), closedPort(t), fullListener(t)
	before := openFDs(t)
	rec := &recorder{}
	r := NewRunner(nil, rec.add)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})
	tcp := func(a netip.AddrPort, timeout time.Duration) Spec {
		s := spec()
		s.Addr, s.Timeout = a, timeout
		return s
	}
	ids := map[string]ID{}
	specs := map[ID]Spec{}
	for name, s := range map[string]Spec{"open": tcp(open, time.Second), "closed": tcp(closed, time.Second), "full": tcp(full, time.Hour)} {
		ids[name] = ID{Service: name, Real: s.Addr}
		specs[ids[name]] = s
	}
	if err := r.Update(specs); err != nil {
		t.Fatal(err)
	}
	byName := func() map[string]Status {
		m := map[string]Status{}
		for _, st := range r.States() {
			m[st.ID.Service] = st
		}
		return m
	}
	eventually(t, func() error {
		m := byName()
		if m["open"].Checks < 5 || !m["open"].Up || m["open"].Failures > 0 {
			return fmt.Errorf("open port: %+v", m["open"])
		}
		if m["closed"].Up || !strings.Contains(m["closed"].LastError, "connection refused") {
			return fmt.Errorf("closed port: %+v", m["closed"])
		}
		return nil
	})
	tr := rec.get()
	if len(tr) != 1 || tr[0].ID != ids["closed"] || tr[0].Up {
		t.Fatalf("transitions %+v, want only the closed port's going down", tr)
	}
	if m := byName(); m["full"].Checks != 0 {
		t.Fatalf("a check with an hour's timeout ended: %+v", m["full"])
	}
	// The stuck check is in flight: removing it must not wait for its
	// timeout.
	delete(specs, ids["full"])
	updateWithin(t, r, specs, 2*time.Second)
	if _, ok := byName()["full"]; ok {
		t.Fatal("the removed check is still listed")
	}
	cancel()
	<-done
	stopped = true
	sameFDs(t, before)
}

// TestRunnerUpdateCancelsAttempt: a changed check whose attempt is in
// flight (a checker that waits on its context) is cancelled, not waited
// for until its timeout.
func TestRunnerUpdateCancelsAttempt(t *testing.T) {
	rec := &recorder{}
	s := spec()
	s.Timeout = time.Hour
	fake := &script{results: []Result{ok}, delay: time.Hour}
	r := startRunner(t, rec, fake, s)
	eventually(t, func() error {
		if fake.running.Load() != 1 {
			return errors.New("the first attempt has not started")
		}
		return nil
	})
	s.Interval = 7 * time.Millisecond
	updateWithin(t, r, map[ID]Spec{rsID: s}, 2*time.Second)
	if st := r.States()[0]; st.Checks != 0 || !st.Up {
		t.Fatalf("the cancelled attempt was recorded: %+v", st)
	}
}

// updateWithin fails the test if Update has not returned within d.
func updateWithin(t *testing.T, r *Runner, specs map[ID]Spec, d time.Duration) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- r.Update(specs) }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(d):
		t.Fatalf("Update waited more than %s for a check in flight", d)
	}
}

// TestTimeHeap: the heap gives its entries back earliest first, and push
// tells when the new entry is the head (the runner's cue to wake).
func TestTimeHeap(t *testing.T) {
	var h timeHeap[int]
	base := time.Now()
	dues := []time.Duration{5, 3, 9, 3, 1, 8, 2, 7, 7, 0, 6, 4}
	earliest := time.Duration(1 << 62)
	for i, d := range dues {
		head := h.push(base.Add(d), i)
		if wantHead := d < earliest; head != wantHead {
			t.Fatalf("push %d: head %v, want %v", d, head, wantHead)
		}
		earliest = min(earliest, d)
	}
	var got []time.Duration
	for h.len() > 0 {
		at, i := h.head()
		if at.Sub(base) != dues[i] {
			t.Fatalf("entry %d came back at %s, pushed at %s", i, at.Sub(base), dues[i])
		}
		got = append(got, at.Sub(base))
		h.pop()
	}
	want := slices.Sorted(slices.Values(dues))
	if !slices.Equal(got, want) {
		t.Fatalf("popped %v, want %v", got, want)
	}
}

// A server coming up with its configured weight logs no weight: on main
// the line showed weight=-1, an internal placeholder.
func TestUpLogHasNoPlaceholder(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	rec := &recorder{}
	r := NewRunner(log, rec.add)
	fake := &script{results: []Result{bad, bad, ok, ok, ok}}
	r.newCheck = func(Spec) (Checker, error) { return fake, nil }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := r.Update(map[ID]Spec{rsID: spec()}); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error {
		mu.Lock()
		defer mu.Unlock()
		if !strings.Contains(buf.String(), "real server up") {
			return errors.New("no up line yet")
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if strings.Contains(buf.String(), "weight=-1") {
		t.Fatalf("log:\n%s", buf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

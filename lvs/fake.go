package lvs

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
)

// Fake is a map-backed Dataplane for unit tests. It refuses what the
// kernel refuses (adding what exists, touching what does not), so a
// reconciler bug shows up as an error rather than as a silent overwrite.
type Fake struct {
	mu      sync.Mutex
	entries map[Key]*Entry
	// Ops lists every operation applied, in order.
	Ops []Op
	// Fail, if set, is asked before each operation; an error stops Apply.
	Fail func(Op) error
}

var _ Dataplane = (*Fake)(nil)

// NewFake returns an empty fake data plane.
func NewFake() *Fake { return &Fake{entries: map[Key]*Entry{}} }

func (f *Fake) Name() string                   { return "fake" }
func (f *Fake) Close() error                   { return nil }
func (f *Fake) Supports(Service, []Real) error { return nil }

func (f *Fake) List() ([]Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Entry, 0, len(f.entries))
	for _, e := range f.entries {
		c := *e
		c.Reals = slices.Clone(e.Reals)
		out = append(out, c)
	}
	Sort(out)
	return out, nil
}

func (f *Fake) Apply(ops []Op) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, op := range ops {
		if f.Fail != nil {
			if err := f.Fail(op); err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
		}
		if err := f.apply(op); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		f.Ops = append(f.Ops, op)
	}
	return nil
}

func (f *Fake) apply(op Op) error {
	e, ok := f.entries[op.Service.Key]
	switch op.Kind {
	case AddService:
		if ok {
			return fmt.Errorf("service exists")
		}
		f.entries[op.Service.Key] = &Entry{Service: op.Service}
		return nil
	case UpdateService:
		if !ok {
			return fmt.Errorf("no such service")
		}
		e.Service = op.Service
		return nil
	case DelService:
		if !ok {
			return fmt.Errorf("no such service")
		}
		delete(f.entries, op.Service.Key)
		return nil
	}
	if !ok {
		return fmt.Errorf("no such service")
	}
	i := slices.IndexFunc(e.Reals, func(r RealState) bool { return r.Addr == op.Real.Addr })
	switch op.Kind {
	case AddReal:
		if i >= 0 {
			return fmt.Errorf("real server exists")
		}
		e.Reals = append(e.Reals, RealState{Real: op.Real})
	case UpdateReal:
		if i < 0 {
			return fmt.Errorf("no such real server")
		}
		e.Reals[i].Real = op.Real
	case DelReal:
		if i < 0 {
			return fmt.Errorf("no such real server")
		}
		e.Reals = slices.Delete(e.Reals, i, i+1)
	default:
		return fmt.Errorf("unknown operation")
	}
	return nil
}

// SetConns sets a real server's connection counts, as traffic would.
func (f *Fake) SetConns(k Key, addr netip.AddrPort, active, inactive int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e, ok := f.entries[k]; ok {
		for i := range e.Reals {
			if e.Reals[i].Addr == addr {
				e.Reals[i].Active, e.Reals[i].Inactive = active, inactive
			}
		}
	}
}

// Put installs an entry directly, as a hand-made ipvsadm rule would.
func (f *Fake) Put(e Entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := e
	c.Reals = slices.Clone(e.Reals)
	f.entries[e.Key] = &c
}

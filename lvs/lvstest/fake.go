// Package lvstest has test doubles for the load balancer: a map-backed
// data plane and synthetic tables.
package lvstest

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/directord/directord/lvs"
)

// Fake is a map-backed lvs.Dataplane for unit tests. It refuses what the
// kernel refuses (adding what exists, touching what does not), so a
// reconciler bug shows up as an error rather than as a silent overwrite.
type Fake struct {
	mu      sync.Mutex
	entries map[lvs.Key]*lvs.Entry
	// Ops lists every operation applied, in order.
	Ops []lvs.Op
	// Fail, if set, is asked before each operation; an error stops Apply
	// (and undoes the batch when Caps says Atomic).
	Fail func(lvs.Op) error
	// Caps, if set, is the capability table to report.
	Caps   *lvs.Capabilities
	flows  []lvs.Flow // what Flows returns (SetFlows)
	zeroed int        // calls of Zero
}

var (
	_ lvs.Dataplane  = (*Fake)(nil)
	_ lvs.FlowLister = (*Fake)(nil)
	_ lvs.Zeroer     = (*Fake)(nil)
)

// NewFake returns an empty fake data plane.
func NewFake() *Fake { return &Fake{entries: map[lvs.Key]*lvs.Entry{}} }

func (f *Fake) Name() string { return "fake" }
func (f *Fake) Close() error { return nil }

// Capabilities is IPVS's table unless Caps is set.
func (f *Fake) Capabilities() lvs.Capabilities {
	if f.Caps != nil {
		return *f.Caps
	}
	c := lvs.IPVSCapabilities
	c.Name = "fake"
	return c
}

func (f *Fake) List() ([]lvs.Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]lvs.Entry, 0, len(f.entries))
	for _, e := range f.entries {
		c := *e
		c.Reals = slices.Clone(e.Reals)
		out = append(out, c)
	}
	lvs.Sort(out)
	return out, nil
}

// Zero counts the calls (ipvsadm -Z's double).
func (f *Fake) Zero() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.zeroed++
	return nil
}

// Zeroes is how many times Zero was called.
func (f *Fake) Zeroes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.zeroed
}

// Flows returns what SetFlows set.
func (f *Fake) Flows() ([]lvs.Flow, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.flows), nil
}

// SetFlows sets what Flows returns.
func (f *Fake) SetFlows(fs []lvs.Flow) {
	f.mu.Lock()
	f.flows = slices.Clone(fs)
	f.mu.Unlock()
}

// SetFail sets Fail while the data plane is in use.
func (f *Fake) SetFail(fail func(lvs.Op) error) {
	f.mu.Lock()
	f.Fail = fail
	f.mu.Unlock()
}

// Apply stops at the first operation that fails, like IPVS; with Caps
// Atomic it then undoes the ones before, like nftables.
func (f *Fake) Apply(ops []lvs.Op) error {
	atomic := f.Capabilities().Atomic
	f.mu.Lock()
	defer f.mu.Unlock()
	var before map[lvs.Key]*lvs.Entry
	if atomic {
		before = make(map[lvs.Key]*lvs.Entry, len(f.entries))
		for k, e := range f.entries {
			c := *e
			c.Reals = slices.Clone(e.Reals)
			before[k] = &c
		}
	}
	done := len(f.Ops)
	for _, op := range ops {
		err := error(nil)
		if f.Fail != nil {
			err = f.Fail(op)
		}
		if err == nil {
			err = f.apply(op)
		}
		if err != nil {
			if atomic {
				f.entries, f.Ops = before, f.Ops[:done]
			}
			return fmt.Errorf("%s: %w", op, err)
		}
		f.Ops = append(f.Ops, op)
	}
	return nil
}

func (f *Fake) apply(op lvs.Op) error {
	e, ok := f.entries[op.Service.Key]
	switch op.Kind {
	case lvs.AddService:
		if ok {
			return fmt.Errorf("service exists")
		}
		f.entries[op.Service.Key] = &lvs.Entry{Service: op.Service}
		return nil
	case lvs.UpdateService:
		if !ok {
			return fmt.Errorf("no such service")
		}
		e.Service = op.Service
		return nil
	case lvs.DelService:
		if !ok {
			return fmt.Errorf("no such service")
		}
		delete(f.entries, op.Service.Key)
		return nil
	}
	if !ok {
		return fmt.Errorf("no such service")
	}
	i := slices.IndexFunc(e.Reals, func(r lvs.RealState) bool { return r.Addr == op.Real.Addr })
	switch op.Kind {
	case lvs.AddReal:
		if i >= 0 {
			return fmt.Errorf("real server exists")
		}
		e.Reals = append(e.Reals, lvs.RealState{Real: op.Real})
	case lvs.UpdateReal:
		if i < 0 {
			return fmt.Errorf("no such real server")
		}
		e.Reals[i].Real = op.Real
	case lvs.DelReal:
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
func (f *Fake) SetConns(k lvs.Key, addr netip.AddrPort, active, inactive int) {
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
func (f *Fake) Put(e lvs.Entry) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := e
	c.Reals = slices.Clone(e.Reals)
	f.entries[e.Key] = &c
}

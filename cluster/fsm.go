// Package cluster replicates the load-balancer table between directors with
// Raft (github.com/hashicorp/raft) and finds the peers with memberlist
// (github.com/hashicorp/memberlist). The table's virtual servers are
// opaque JSON documents here, named by the virtual server's name: the
// daemon decides what they hold. Overrides (drain, disable, weight) are
// typed. Nothing in the failover path waits on this package: a director
// keeps using the last committed state whatever Raft is doing.
package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	"github.com/hashicorp/raft"
)

// CommandVersion is the format of the commands this build writes and
// reads. A command of another version is refused, not half-applied.
const CommandVersion = 1

// Ops of a Command.
const (
	OpApply   = "apply"     // replace every virtual server with Services
	OpPutVS   = "vs.put"    // add or replace one virtual server
	OpDelVS   = "vs.del"    // remove one, and its overrides
	OpDrain   = "rs.drain"  // a real server takes no new connections
	OpEnable  = "rs.enable" // clear a real server's overrides
	OpWeight  = "rs.weight" // set a real server's weight by hand
	OpDisable = "rs.disable"
	OpInit    = "cluster.init" // the first leader names the cluster (Name is its ID)
	OpLeave   = "node.leave"   // the node Name left: never re-added as a voter
	OpRejoin  = "node.rejoin"  // the node Name may be a voter again
)

// Command is one change of the replicated state, as written to the log.
type Command struct {
	V        int                        `json:"v"`
	Op       string                     `json:"op"`
	Services map[string]json.RawMessage `json:"services,omitempty"` // apply
	Name     string                     `json:"name,omitempty"`     // the virtual server
	Service  json.RawMessage            `json:"service,omitempty"`  // vs.put
	Real     string                     `json:"real,omitempty"`     // rs.*: the real server's IP:port
	Weight   int                        `json:"weight,omitempty"`   // rs.weight
	// Seed makes an apply a no-op once any apply was committed: the
	// file's virtual servers seed the cluster once, at its formation.
	Seed bool `json:"seed,omitempty"`
}

// Override is what an operator set on one real server.
type Override struct {
	Drain    bool `json:"drain,omitempty"`
	Disabled bool `json:"disabled,omitempty"`
	// Weight replaces the configured weight when set.
	Weight *int `json:"weight,omitempty"`
}

// State is the replicated state.
type State struct {
	// Index is the Raft index of the last command applied.
	Index uint64 `json:"index"`
	// Seeded: an apply was committed; a seeding apply does nothing more.
	Seeded   bool                       `json:"seeded"`
	Services map[string]json.RawMessage `json:"services"`
	// Overrides by virtual server name, then real server.
	Overrides map[string]map[string]Override `json:"overrides"`
	// Refused are the virtual servers a committed command carried that
	// the validator refused, by name, with why: they were left out. A
	// leader refuses them before they are committed; these came from
	// elsewhere (an older build, a forged entry).
	Refused map[string]string `json:"refused,omitempty"`
	// ClusterID names this cluster: two that formed apart never merge.
	ClusterID string `json:"cluster_id,omitempty"`
	// Left are the nodes that left with directorctl cluster leave.
	Left map[string]bool `json:"left,omitempty"`
}

func (s State) clone() State {
	c := State{Index: s.Index, Seeded: s.Seeded, Services: maps.Clone(s.Services), Overrides: map[string]map[string]Override{},
		Refused: maps.Clone(s.Refused), ClusterID: s.ClusterID, Left: maps.Clone(s.Left)}
	if c.Services == nil {
		c.Services = map[string]json.RawMessage{}
	}
	for k, v := range s.Overrides {
		c.Overrides[k] = maps.Clone(v)
	}
	return c
}

// Names lists the virtual servers in order.
func (s State) Names() []string { return slices.Sorted(maps.Keys(s.Services)) }

// ErrCommand is wrapped by the errors of commands the state machine
// refuses.
var ErrCommand = errors.New("command refused")

// Validator judges one virtual server's document as the file's validator
// would; nil accepts everything.
type Validator func(name string, doc json.RawMessage) error

// check refuses a command carrying a virtual server that valid refuses.
func (c Command) check(valid Validator) error {
	if valid == nil {
		return nil
	}
	docs := c.Services
	if c.Op == OpPutVS {
		docs = map[string]json.RawMessage{c.Name: c.Service}
	}
	for _, name := range slices.Sorted(maps.Keys(docs)) {
		if err := valid(name, docs[name]); err != nil {
			return fmt.Errorf("%w: %v", ErrCommand, err)
		}
	}
	return nil
}

// apply changes s by c, or refuses c and leaves s as it was. Virtual
// servers that valid refuses are left out and listed in s.Refused.
func (s *State) apply(c Command, valid Validator) error {
	if c.V != CommandVersion {
		return fmt.Errorf("%w: format version %d, this directord reads %d", ErrCommand, c.V, CommandVersion)
	}
	needVS := func() error {
		if _, ok := s.Services[c.Name]; !ok {
			return fmt.Errorf("%w: no virtual server %q", ErrCommand, c.Name)
		}
		if c.Real == "" {
			return fmt.Errorf("%w: no real server given", ErrCommand)
		}
		return nil
	}
	override := func(f func(*Override)) {
		m := s.Overrides[c.Name]
		if m == nil {
			m = map[string]Override{}
			s.Overrides[c.Name] = m
		}
		o := m[c.Real]
		f(&o)
		m[c.Real] = o
	}
	switch c.Op {
	case OpApply:
		if c.Seed && s.Seeded {
			return nil
		}
		s.Seeded = true
		s.Services = map[string]json.RawMessage{}
		s.Refused = nil
		for name, doc := range c.Services {
			if s.admit(name, doc, valid) {
				s.Services[name] = doc
			}
		}
		for name := range s.Overrides {
			if _, ok := s.Services[name]; !ok {
				delete(s.Overrides, name)
			}
		}
	case OpPutVS:
		if c.Name == "" || len(c.Service) == 0 {
			return fmt.Errorf("%w: vs.put needs a name and a service", ErrCommand)
		}
		delete(s.Refused, c.Name)
		if s.admit(c.Name, c.Service, valid) {
			s.Services[c.Name] = c.Service
		} else {
			delete(s.Services, c.Name)
		}
	case OpDelVS:
		if _, ok := s.Services[c.Name]; !ok {
			return fmt.Errorf("%w: no virtual server %q", ErrCommand, c.Name)
		}
		delete(s.Services, c.Name)
		delete(s.Overrides, c.Name)
	case OpDrain, OpDisable, OpWeight:
		if err := needVS(); err != nil {
			return err
		}
		if c.Op == OpWeight && (c.Weight < 0 || c.Weight > 65535) {
			return fmt.Errorf("%w: weight %d is out of range [0, 65535]", ErrCommand, c.Weight)
		}
		override(func(o *Override) {
			switch c.Op {
			case OpDrain:
				o.Drain = true
			case OpDisable:
				o.Disabled = true
			case OpWeight:
				w := c.Weight
				o.Weight = &w
			}
		})
	case OpInit:
		if c.Name == "" {
			return fmt.Errorf("%w: cluster.init needs an ID", ErrCommand)
		}
		if s.ClusterID == "" {
			s.ClusterID = c.Name
		}
	case OpLeave, OpRejoin:
		if c.Name == "" {
			return fmt.Errorf("%w: %s needs a node", ErrCommand, c.Op)
		}
		if c.Op == OpRejoin {
			delete(s.Left, c.Name)
			break
		}
		if s.Left == nil {
			s.Left = map[string]bool{}
		}
		s.Left[c.Name] = true
	case OpEnable:
		if err := needVS(); err != nil {
			return err
		}
		delete(s.Overrides[c.Name], c.Real)
		if len(s.Overrides[c.Name]) == 0 {
			delete(s.Overrides, c.Name)
		}
	default:
		return fmt.Errorf("%w: unknown operation %q", ErrCommand, c.Op)
	}
	return nil
}

// admit reports whether a virtual server may enter the table, recording
// why not.
func (s *State) admit(name string, doc json.RawMessage, valid Validator) bool {
	if valid == nil {
		return true
	}
	if err := valid(name, doc); err != nil {
		if s.Refused == nil {
			s.Refused = map[string]string{}
		}
		s.Refused[name] = err.Error()
		return false
	}
	return true
}

// fsm is the Raft state machine: deterministic, and its state is only
// ever replaced whole, so readers get consistent copies.
type fsm struct {
	mu       sync.Mutex
	state    State
	onChange func(State) // called after every applied command, in order
	valid    Validator
}

var _ raft.FSM = (*fsm)(nil)

func newFSM(onChange func(State), valid Validator) *fsm {
	return &fsm{state: State{Services: map[string]json.RawMessage{}, Overrides: map[string]map[string]Override{}}, onChange: onChange,
		valid: valid}
}

// Apply returns nil or the error refusing the command.
func (f *fsm) Apply(l *raft.Log) any {
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("%w: %v", ErrCommand, err)
	}
	f.mu.Lock()
	next := f.state.clone()
	err := next.apply(c, f.valid)
	if err == nil {
		next.Index = l.Index
		f.state = next
	}
	cur := f.state
	f.mu.Unlock()
	if err == nil && f.onChange != nil {
		f.onChange(cur)
	}
	return err
}

// State returns the current state; callers must not change it.
func (f *fsm) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := json.Marshal(f.state)
	if err != nil {
		return nil, err
	}
	return snapshot(b), nil
}

func (f *fsm) Restore(r io.ReadCloser) error {
	defer r.Close()
	var s State
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	s = s.clone()
	for _, name := range s.Names() {
		if !s.admit(name, s.Services[name], f.valid) {
			delete(s.Services, name)
			delete(s.Overrides, name)
		}
	}
	f.mu.Lock()
	f.state = s
	f.mu.Unlock()
	if f.onChange != nil {
		f.onChange(s)
	}
	return nil
}

type snapshot []byte

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snapshot) Release() {}

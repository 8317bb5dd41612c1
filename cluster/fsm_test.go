package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/hashicorp/raft"
)

func cmd(c Command) []byte {
	if c.V == 0 {
		c.V = CommandVersion
	}
	b, _ := json.Marshal(c)
	return b
}

func TestFSM(t *testing.T) {
	var seen []uint64
	f := newFSM(func(s State) { seen = append(seen, s.Index) }, nil)
	web := json.RawMessage(`{"address":"192.0.2.100:80"}`)
	dns := json.RawMessage(`{"address":"192.0.2.100:53"}`)
	steps := []struct {
		c   Command
		err bool
	}{
		{Command{Op: OpApply, Services: map[string]json.RawMessage{"web": web, "dns": dns}}, false},
		{Command{Op: OpDrain, Name: "web", Real: "203.0.113.11:80"}, false},
		{Command{Op: OpWeight, Name: "web", Real: "203.0.113.12:80", Weight: 5}, false},
		{Command{Op: OpWeight, Name: "web", Real: "203.0.113.12:80", Weight: 70000}, true},
		{Command{Op: OpDrain, Name: "nope", Real: "203.0.113.11:80"}, true},
		{Command{V: 2, Op: OpDelVS, Name: "dns"}, true}, // a newer format is refused
		{Command{Op: "rs.explode", Name: "web", Real: "203.0.113.11:80"}, true},
		{Command{Op: OpEnable, Name: "web", Real: "203.0.113.11:80"}, false},
		{Command{Op: OpDelVS, Name: "dns"}, false},
	}
	for i, st := range steps {
		res := f.Apply(&raft.Log{Index: uint64(i + 1), Data: cmd(st.c)})
		err, _ := res.(error)
		if (err != nil) != st.err || (err != nil && !errors.Is(err, ErrCommand)) {
			t.Fatalf("step %d %+v: %v", i, st.c, res)
		}
	}
	s := f.State()
	if s.Index != 9 || !reflect.DeepEqual(s.Names(), []string{"web"}) {
		t.Fatalf("state %+v", s)
	}
	w := 5
	if want := map[string]map[string]Override{"web": {"203.0.113.12:80": {Weight: &w}}}; !reflect.DeepEqual(s.Overrides, want) {
		t.Fatalf("overrides %+v", s.Overrides)
	}
	if !reflect.DeepEqual(seen, []uint64{1, 2, 3, 8, 9}) {
		t.Fatalf("onChange saw indexes %v: refused commands must not count", seen)
	}

	// Snapshot and restore give the same state.
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := newFSM(nil, nil)
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g.State(), f.State()) {
		t.Fatalf("restored %+v, want %+v", g.State(), f.State())
	}

	// Replacing the table drops the overrides of services that went.
	f.Apply(&raft.Log{Index: 10, Data: cmd(Command{Op: OpApply, Services: map[string]json.RawMessage{"dns": dns}})})
	if s := f.State(); len(s.Overrides) != 0 || !reflect.DeepEqual(s.Names(), []string{"dns"}) {
		t.Fatalf("after apply: %+v", s)
	}
}

type memSink struct{ bytes.Buffer }

func (*memSink) ID() string    { return "mem" }
func (*memSink) Cancel() error { return nil }
func (*memSink) Close() error  { return nil }

// TestFSMValidates: a committed command the validator refuses (a forged
// entry, an older leader) never enters the table, is listed with why,
// and never stops the state machine; the leader refuses it up front.
func TestFSMValidates(t *testing.T) {
	valid := func(name string, doc json.RawMessage) error {
		if bytes.Contains(doc, []byte("bad")) {
			return errors.New("virtual_server." + name + ": bad")
		}
		return nil
	}
	f := newFSM(nil, valid)
	good, bad := json.RawMessage(`{"a":1}`), json.RawMessage(`{"bad":1}`)
	for i, c := range []Command{
		{Op: OpApply, Services: map[string]json.RawMessage{"web": good, "evil": bad}},
		{Op: OpPutVS, Name: "web", Service: bad},
		{Op: OpPutVS, Name: "dns", Service: good},
	} {
		if res := f.Apply(&raft.Log{Index: uint64(i + 1), Data: cmd(c)}); res != nil {
			t.Fatalf("step %d: %v", i, res)
		}
	}
	s := f.State()
	if !reflect.DeepEqual(s.Names(), []string{"dns"}) || len(s.Refused) != 2 || s.Refused["web"] != "virtual_server.web: bad" {
		t.Fatalf("state %+v", s)
	}
	// A snapshot carrying what the validator refuses is filtered too.
	b, _ := json.Marshal(State{Seeded: true, Services: map[string]json.RawMessage{"web": good, "evil": bad}})
	g := newFSM(nil, valid)
	if err := g.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	if s := g.State(); !reflect.DeepEqual(s.Names(), []string{"web"}) || s.Refused["evil"] == "" {
		t.Fatalf("restored %+v", s)
	}
	c := Command{Op: OpApply, Services: map[string]json.RawMessage{"evil": bad}}
	if err := c.check(valid); !errors.Is(err, ErrCommand) {
		t.Fatalf("check: %v", err)
	}
}

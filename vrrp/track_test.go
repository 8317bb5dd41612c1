package vrrp

import (
	"net/netip"
	"testing"
	"time"
)

// TestTrackWeights: the effective priority counts tracked interfaces and
// scripts as keepalived does (vrrp_track.c): a positive weight is added
// while the interface is up or the script passes, a negative one while it
// is down or failing; weight 0 means FAULT. On main the weight was added on
// failure whatever its sign, so a migrated configuration made the failing
// director the master.
func TestTrackWeights(t *testing.T) {
	cfg := Config{Name: "VI_1", Interface: "eth0", Priority: 100,
		Track:        []Track{{Interface: "eth1", Weight: 30}, {Interface: "eth2", Weight: -20}},
		TrackScripts: []TrackScript{{Name: "up", Weight: 20}, {Name: "down", Weight: -10}}}
	for _, tc := range []struct {
		name           string
		eth1, eth2     bool
		scriptUp, down bool // the scripts' verdicts
		want           uint8
		fault          bool
	}{
		{"all well", true, true, true, true, 150, false},       // 100 +30 +20
		{"all failing", false, false, false, false, 70, false}, // 100 -20 -10
		{"positive ones failing", false, true, false, true, 100, false},
		{"negative ones failing", true, false, true, false, 120, false}, // 100 +30 +20 -20 -10
	} {
		g := NewGroup(Deps{})
		g.links = map[string]bool{"eth0": true, "eth1": tc.eth1, "eth2": tc.eth2}
		g.scripts = map[string]bool{"up": tc.scriptUp, "down": tc.down}
		fault, prio := (&instance{cfg: cfg}).health(g)
		if (fault != "") != tc.fault || prio != tc.want {
			t.Errorf("%s: priority %d (fault %q), want %d", tc.name, prio, fault, tc.want)
		}
	}
	// Weight 0: FAULT; the bounds 1 and 254 hold.
	g := NewGroup(Deps{})
	g.links = map[string]bool{"eth1": false}
	if fault, _ := (&instance{cfg: Config{Interface: "eth0", Priority: 100, Track: []Track{{Interface: "eth1"}}}}).health(g); fault == "" {
		t.Error("a down interface tracked with weight 0 is not a FAULT")
	}
	g.links = map[string]bool{"eth1": true}
	if _, prio := (&instance{cfg: Config{Interface: "eth0", Priority: 250, Track: []Track{{Interface: "eth1", Weight: 100}}}}).health(g); prio != 254 {
		t.Errorf("priority %d above 254", prio)
	}
	g.links = map[string]bool{"eth1": false}
	if _, prio := (&instance{cfg: Config{Interface: "eth0", Priority: 10, Track: []Track{{Interface: "eth1", Weight: -100}}}}).health(g); prio != 1 {
		t.Errorf("priority %d below 1", prio)
	}
}

// TestSetFault: the daemon's FAULT holds every instance, whatever its
// links and scripts, until it is lifted.
func TestSetFault(t *testing.T) {
	g := NewGroup(Deps{})
	in := &instance{cfg: Config{Interface: "eth0", Priority: 150}}
	g.SetFault("this node left the cluster")
	if fault, _ := in.health(g); fault != "this node left the cluster" {
		t.Fatalf("fault %q", fault)
	}
	g.SetFault("")
	if fault, prio := in.health(g); fault != "" || prio != 150 {
		t.Fatalf("after lifting: fault %q priority %d", fault, prio)
	}
}

// TestOwnAdvertIgnored: a master that hears its own advert back (an
// echoing link, or its address among the unicast peers) drops it. On main
// an equal-priority advert from its own address fell into the "lower
// master" branch and was answered with an advert and a GARP, a storm.
func TestOwnAdvertIgnored(t *testing.T) {
	for _, c := range []Config{cfg(100), cfg(100, func(c *Config) { c.UnicastPeers = []netip.Addr{me, peer} })} {
		m := NewMachine(c, me)
		m.Start(t0)
		m.Tick(at(4 * time.Second)) // no master heard: MASTER
		mustState(t, m, Master)
		e, r := m.Receive(at(5*time.Second), me, adv(100))
		if r != DropSelf || e.Send || e.GARP || e.Transition != nil {
			t.Fatalf("own advert (unicast peers %v): %+v, %q", c.UnicastPeers, e, r)
		}
		mustState(t, m, Master)
	}
}

// TestFaultFromMasterResigns: a master going to FAULT (a tracked
// interface or script) sends priority 0, so the backup takes over after
// Skew_Time; on main it sent nothing and the backup waited the whole
// Master_Down_Interval. A backup going to FAULT sends nothing.
func TestFaultFromMasterResigns(t *testing.T) {
	m := NewMachine(cfg(150), me)
	m.Start(t0)
	m.Tick(at(4 * time.Second))
	mustState(t, m, Master)
	e := m.LinkDown(at(5*time.Second), "tracked script chk failed")
	if !e.Send || e.SendPriority != PriorityResign || e.Transition == nil || e.Transition.To != Fault {
		t.Fatalf("master to FAULT: %+v", e)
	}
	b := NewMachine(cfg(100), me)
	b.Start(t0)
	b.Receive(at(time.Second), peer, adv(150))
	if e := b.LinkDown(at(2*time.Second), "eth1 is down"); e.Send || e.Transition == nil {
		t.Fatalf("backup to FAULT: %+v", e)
	}
}

// TestResignedIsForgotten: a backup that took over from a resigning master
// and later steps down again reports a silent master death as such, not
// as another resignation (on main the flag was never cleared).
func TestResignedIsForgotten(t *testing.T) {
	m := NewMachine(cfg(100), me)
	m.Start(t0)
	m.Receive(at(time.Second), peer, adv(150))
	m.Receive(at(2*time.Second), peer, adv(PriorityResign))
	e := m.Tick(at(3 * time.Second))
	if e.Transition == nil || e.Transition.Reason != "the master resigned (priority 0)" {
		t.Fatalf("takeover after the resignation: %+v", e.Transition)
	}
	if _, err := m.Resign(at(4*time.Second), 0); err != nil { // a planned failover back
		t.Fatal(err)
	}
	mustState(t, m, Backup)
	// The peer takes over but dies before its first advert reaches us.
	e = m.Tick(m.Deadline())
	if e.Transition == nil || e.Transition.To != Master || e.Transition.Reason == "the master resigned (priority 0)" {
		t.Fatalf("takeover after a silent death: %+v", e.Transition)
	}
}

// TestBackupPriorityMovesMasterDown: a backup whose priority changes (a
// tracked script) recomputes its Master_Down_Interval, whose skew depends
// on the priority; on main the timer kept the old skew.
func TestBackupPriorityMovesMasterDown(t *testing.T) {
	m := NewMachine(cfg(100, func(c *Config) { c.Preempt = false }), me)
	m.Start(t0)
	m.Receive(at(time.Second), peer, adv(150))
	if want := at(4*time.Second + skewOf(100, time.Second)); !m.Deadline().Equal(want) {
		t.Fatalf("deadline %v, want %v", m.Deadline().Sub(t0), want.Sub(t0))
	}
	m.SetPriority(at(1500*time.Millisecond), 200)
	if want := at(4*time.Second + skewOf(200, time.Second)); !m.Deadline().Equal(want) {
		t.Fatalf("deadline after the priority rose: %v, want %v", m.Deadline().Sub(t0), want.Sub(t0))
	}
}

// TestAddrListMismatchV3: a v3 advert whose address list differs from
// ours is processed (RFC 9568 §7.1 does not drop it) but reported, so
// that the instance counts and logs it (SHOULD log); on main nothing
// noticed it. The owner's and a matching list are not reported.
func TestAddrListMismatchV3(t *testing.T) {
	m := NewMachine(cfg(100), me)
	m.Start(t0)
	other := adv(150)
	other.Addrs = []netip.Addr{netip.MustParseAddr("192.0.2.200")}
	e, drop := m.Receive(at(time.Second), peer, other)
	if drop != "" || !e.AddrListMismatch {
		t.Fatalf("a different list: drop %q, effects %+v", drop, e)
	}
	if m.Info().Master != peer.String() {
		t.Fatal("the advert was not processed")
	}
	if e, _ := m.Receive(at(2*time.Second), peer, adv(150)); e.AddrListMismatch {
		t.Fatal("the same list reported")
	}
}

// TestPreemptDelayAfterPriorityRise: a backup whose priority rises above
// its master's waits preempt_delay from the first advert of the now lower
// master before it preempts, as keepalived does ("after startup or seeing
// a lower priority master"); on main the delay counted from start only,
// so it preempted within Master_Down_Interval.
func TestPreemptDelayAfterPriorityRise(t *testing.T) {
	m := NewMachine(cfg(100, func(c *Config) { c.PreemptDelay = 5 * time.Second }), me)
	m.Start(t0)
	var s int
	for s = 1; s <= 20; s++ {
		m.Receive(at(time.Duration(s)*time.Second), peer, adv(150))
	}
	m.SetPriority(at(20500*time.Millisecond), 200) // a tracked script came up
	rose := at(21 * time.Second)
	for s = 21; s <= 40; s++ {
		now := at(time.Duration(s) * time.Second)
		if e := m.Tick(now); e.Transition != nil {
			if now.Before(rose.Add(5 * time.Second)) {
				t.Fatalf("preempted at %ds, within preempt_delay of seeing a lower master at 21s", s)
			}
			return
		}
		m.Receive(now, peer, adv(150))
	}
	t.Fatal("never preempted")
}

// keepalived's instance keys that change the state machine: state MASTER
// takes over at start; lower_prio_no_advert keeps a master quiet (but
// announcing) when it hears a lower priority; skip_check_adv_addr
// accepts a v2 advert listing other addresses.
func TestKeepalivedInstanceKeys(t *testing.T) {
	m := NewMachine(cfg(100, func(c *Config) { c.InitialMaster = true }), me)
	if e := m.Start(t0); e.Transition == nil || e.Transition.To != Master || !e.Send {
		t.Fatalf("state MASTER at start: %+v", e)
	}
	// A higher priority still wins.
	if e, _ := m.Receive(at(time.Second), peer, adv(150)); e.Transition == nil || e.Transition.To != Backup {
		t.Fatalf("state MASTER against a higher priority: %+v", e)
	}

	quiet := NewMachine(cfg(150, func(c *Config) { c.LowerPrioNoAdvert = true }), me)
	quiet.Start(t0)
	quiet.Tick(at(4 * time.Second))
	mustState(t, quiet, Master)
	if e, _ := quiet.Receive(at(5*time.Second), lowIP, adv(50)); e.Send || !e.GARP {
		t.Fatalf("lower_prio_no_advert: %+v", e)
	}

	// higher_prio_send_advert (on by default): one advert at our own
	// priority when stepping down; off, none.
	for _, on := range []bool{true, false} {
		hm := NewMachine(cfg(150, func(c *Config) { c.HigherPrioNoAdvert = !on }), me)
		hm.Start(t0)
		hm.Tick(at(4 * time.Second))
		mustState(t, hm, Master)
		e, _ := hm.Receive(at(5*time.Second), peer, adv(200))
		if e.Transition == nil || e.Transition.To != Backup || e.Send != on || on && e.SendPriority != 150 {
			t.Fatalf("higher_prio_send_advert %v: %+v", on, e)
		}
	}

	v2 := func(c *Config) { c.Version = 2 }
	other := adv(150, func(a *Advert) { a.Version = 2; a.Addrs = []netip.Addr{netip.MustParseAddr("192.0.2.200")} })
	if _, drop := NewMachine(cfg(100, v2), me).Receive(at(time.Second), peer, other); drop != DropAddrList {
		t.Fatalf("v2 address list checked: %q", drop)
	}
	skip := NewMachine(cfg(100, v2, func(c *Config) { c.SkipCheckAdvAddr = true }), me)
	skip.Start(t0)
	if _, drop := skip.Receive(at(time.Second), peer, other); drop != "" {
		t.Fatalf("skip_check_adv_addr: dropped %q", drop)
	}
}

// Reverse negates a weight's effect, as keepalived does (measured side by
// side in TestKeepalivedTrackWeights); dont_track_primary ignores the
// instance's own interface.
func TestTrackReverseAndPrimary(t *testing.T) {
	g := NewGroup(Deps{})
	g.links = map[string]bool{"eth0": false, "eth1": false, "eth2": true}
	g.scripts = map[string]bool{"chk": true, "bad": false}
	in := &instance{cfg: Config{Interface: "eth0", Priority: 100, DontTrackPrimary: true,
		Track:        []Track{{Interface: "eth1", Weight: -20, Reverse: true}, {Interface: "eth2", Weight: -7, Reverse: true}},
		TrackScripts: []TrackScript{{Name: "chk", Weight: 30, Reverse: true}, {Name: "bad", Weight: 11, Reverse: true}}}}
	// eth0 down is ignored; eth1 down with -20 reversed: +20; eth2 up with
	// a negative weight: nothing; chk passing with +30 reversed: -30; bad
	// failing with a positive weight: nothing. On main reverse inverted
	// up and down instead: 100-20+0+0+11 = 91.
	if fault, prio := in.health(g); fault != "" || prio != 90 {
		t.Fatalf("fault %q, priority %d, want 90", fault, prio)
	}
	in.cfg.DontTrackPrimary = false
	if fault, _ := in.health(g); fault != "eth0 is down" {
		t.Fatalf("without dont_track_primary: %q", fault)
	}
}

// init_fail: a tracked script that has not reported yet counts as failed,
// so the instance starts in FAULT; without it, as passing.
func TestInitFail(t *testing.T) {
	g := NewGroup(Deps{})
	in := &instance{cfg: Config{Interface: "eth0", Priority: 100, InitFail: true, TrackScripts: []TrackScript{{Name: "chk"}}}}
	if fault, _ := in.health(g); fault == "" {
		t.Fatal("init_fail: a script not run yet is not a FAULT")
	}
	g.scripts["chk"] = true
	if fault, _ := in.health(g); fault != "" {
		t.Fatalf("after the script passed: %q", fault)
	}
	delete(g.scripts, "chk")
	in.cfg.InitFail = false
	if fault, _ := in.health(g); fault != "" {
		t.Fatalf("without init_fail: %q", fault)
	}
}

// Tracked files, keepalived's track_file: the value times the weight moves
// the priority (reverse negates it); with weight 0 a non-zero value is a
// FAULT; a file not reported yet counts as 0.
func TestTrackFiles(t *testing.T) {
	g := NewGroup(Deps{})
	in := &instance{cfg: Config{Interface: "eth0", Priority: 100,
		TrackFiles: []TrackFile{{Name: "load", Weight: 5}, {Name: "drain", Weight: 2, Reverse: true}, {Name: "maint"}}}}
	if fault, prio := in.health(g); fault != "" || prio != 100 {
		t.Fatalf("nothing reported: %q %d", fault, prio)
	}
	g.files = map[string]int{"load": 3, "drain": 4}
	if fault, prio := in.health(g); fault != "" || prio != 107 { // +15 -8
		t.Fatalf("values: %q %d", fault, prio)
	}
	g.files["maint"] = 1
	if fault, _ := in.health(g); fault != "tracked file maint holds 1" {
		t.Fatalf("weight 0: %q", fault)
	}
}

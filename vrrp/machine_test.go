package vrrp

import (
	"net/netip"
	"testing"
	"time"
)

var (
	t0    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	me    = netip.MustParseAddr("192.0.2.11")
	peer  = netip.MustParseAddr("192.0.2.12") // higher than me
	lowIP = netip.MustParseAddr("192.0.2.5")  // lower than me
)

func cfg(prio uint8, mod ...func(*Config)) Config {
	c := Config{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, Version: 3,
		AdvertInt: time.Second, Preempt: true, VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}}
	for _, f := range mod {
		f(&c)
	}
	return c
}

func adv(prio uint8, mod ...func(*Advert)) Advert {
	a := Advert{Version: 3, VRID: 51, Priority: prio, Interval: time.Second, Addrs: []netip.Addr{vip1}}
	for _, f := range mod {
		f(&a)
	}
	return a
}

func at(d time.Duration) time.Time { return t0.Add(d) }

// skewOf is (256-prio)/256 of interval.
func skewOf(prio int, interval time.Duration) time.Duration {
	return time.Duration(256-prio) * interval / 256
}

func mustState(t *testing.T, m *Machine, want State) {
	t.Helper()
	if m.State() != want {
		t.Fatalf("state %s, want %s", m.State(), want)
	}
}

func TestBackupTakesOverAfterMasterDownInterval(t *testing.T) {
	m := NewMachine(cfg(100), me)
	e := m.Start(t0)
	if e.Transition == nil || e.Transition.To != Backup || e.Send {
		t.Fatalf("start: %+v", e)
	}
	mdi := 3*time.Second + skewOf(100, time.Second)
	if m.Deadline() != at(mdi) {
		t.Fatalf("deadline %v, want %v", m.Deadline().Sub(t0), mdi)
	}
	if e := m.Tick(at(mdi - time.Nanosecond)); e.Transition != nil {
		t.Fatal("took over before the master down interval")
	}
	e = m.Tick(at(mdi))
	if e.Transition == nil || e.Transition.To != Master || !e.Send || e.SendPriority != 100 || !e.GARP {
		t.Fatalf("takeover: %+v", e)
	}
	// Adverts every interval from then on.
	if m.Deadline() != at(mdi+time.Second) {
		t.Fatalf("next advert at %v", m.Deadline().Sub(t0))
	}
	if e := m.Tick(at(mdi + time.Second)); !e.Send || e.Transition != nil {
		t.Fatalf("advert timer: %+v", e)
	}
	// After a stall the next advert is one interval from now, not a burst.
	m.Tick(at(mdi + 10*time.Second))
	if m.Deadline() != at(mdi+11*time.Second) {
		t.Fatalf("after stall next advert at %v", m.Deadline().Sub(t0))
	}
}

func TestOwnerIsMasterAtOnce(t *testing.T) {
	m := NewMachine(cfg(255), me)
	e := m.Start(t0)
	if e.Transition == nil || e.Transition.To != Master || !e.Send || !e.GARP {
		t.Fatalf("owner start: %+v", e)
	}
	// An owner ignores adverts (RFC 5798 §7.1).
	if _, r := m.Receive(at(time.Second), peer, adv(254)); r != DropOwner {
		t.Fatalf("owner accepted an advert: %q", r)
	}
}

func TestBackupFollowsMaster(t *testing.T) {
	m := NewMachine(cfg(100), me)
	m.Start(t0)
	// A master with a 100ms interval: a v3 backup learns it.
	m.Receive(at(time.Second), peer, adv(150, func(a *Advert) { a.Interval = 100 * time.Millisecond }))
	want := at(time.Second + 300*time.Millisecond + skewOf(100, 100*time.Millisecond))
	if m.Deadline() != want {
		t.Fatalf("master down at %v, want %v", m.Deadline().Sub(t0), want.Sub(t0))
	}
	if i := m.Info(); i.Master != peer.String() || i.MasterPriority != 150 || i.MasterAdverInt != 100*time.Millisecond {
		t.Fatalf("info %+v", i)
	}
	// The master resigns: take over after the skew only.
	m.Receive(at(2*time.Second), peer, adv(0))
	if want := at(2*time.Second + skewOf(100, 100*time.Millisecond)); m.Deadline() != want {
		t.Fatalf("after priority 0, master down at %v, want %v", m.Deadline().Sub(t0), want.Sub(t0))
	}
	if e := m.Tick(m.Deadline()); e.Transition == nil || e.Transition.Reason != "the master resigned (priority 0)" {
		t.Fatalf("takeover after resign: %+v", e.Transition)
	}
}

func TestPreemption(t *testing.T) {
	lower := adv(50)
	for _, tc := range []struct {
		name     string
		cfg      Config
		wantTake bool
	}{
		{"preempt", cfg(100), true},
		{"nopreempt", cfg(100, func(c *Config) { c.Preempt = false }), false},
		{"preempt_delay holds off, then preempts", cfg(100, func(c *Config) { c.PreemptDelay = 5 * time.Second }), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMachine(tc.cfg, me)
			m.Start(t0)
			// A lower-priority master advertises every second for 20s.
			for s := 1; s <= 20; s++ {
				now := at(time.Duration(s) * time.Second)
				if e := m.Tick(now); e.Transition != nil {
					if !tc.wantTake {
						t.Fatalf("took over at %ds", s)
					}
					if tc.cfg.PreemptDelay > 0 && now.Before(at(tc.cfg.PreemptDelay)) {
						t.Fatalf("preempted at %ds, within preempt_delay", s)
					}
					return
				}
				m.Receive(now, lowIP, lower)
			}
			if tc.wantTake {
				t.Fatal("never preempted the lower master")
			}
			mustState(t, m, Backup)
		})
	}
}

func TestMasterMeetsAnotherMaster(t *testing.T) {
	for _, tc := range []struct {
		name      string
		src       netip.Addr
		prio      uint8
		wantState State
		wantSend  bool
		wantGARP  bool
	}{
		// The loser's last advert makes the winner re-announce (split brain).
		{"higher priority wins", lowIP, 200, Backup, true, false},
		{"equal priority, higher address wins", peer, 100, Backup, true, false},
		{"equal priority, lower address loses", lowIP, 100, Master, true, true},
		{"lower priority: re-advertise and re-GARP at once", peer, 50, Master, true, true},
		{"priority 0: advertise at once", peer, 0, Master, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMachine(cfg(100), me)
			m.Start(t0)
			m.Tick(at(4 * time.Second))
			mustState(t, m, Master)
			e, r := m.Receive(at(4500*time.Millisecond), tc.src, adv(tc.prio))
			if r != "" {
				t.Fatalf("dropped: %s", r)
			}
			mustState(t, m, tc.wantState)
			if e.Send != tc.wantSend || e.GARP != tc.wantGARP || e.Send && e.SendPriority != 100 {
				t.Fatalf("effects %+v", e)
			}
			if tc.wantSend && tc.wantState == Master && m.Deadline() != at(5500*time.Millisecond) {
				t.Fatalf("advert timer not restarted: %v", m.Deadline().Sub(t0))
			}
		})
	}
}

func TestStopAndFault(t *testing.T) {
	m := NewMachine(cfg(100), me)
	m.Start(t0)
	m.Tick(at(4 * time.Second))
	e := m.Stop(at(5 * time.Second))
	if !e.Send || e.SendPriority != 0 || e.Transition == nil || e.Transition.From != Master || e.Transition.To != Init {
		t.Fatalf("stop as master: %+v", e)
	}

	m = NewMachine(cfg(100), me)
	m.Start(t0)
	m.Tick(at(4 * time.Second))
	e = m.LinkDown(at(5*time.Second), "eth0 down")
	// A master resigns on its way to FAULT (see TestFaultFromMasterResigns).
	if e.Transition == nil || e.Transition.To != Fault || !e.Send || e.SendPriority != PriorityResign {
		t.Fatalf("link down: %+v", e)
	}
	if m.Deadline() != (time.Time{}) {
		t.Fatal("a timer runs in Fault")
	}
	if _, r := m.Receive(at(6*time.Second), peer, adv(50)); r != "" {
		t.Fatalf("receive in fault: %q", r)
	}
	mustState(t, m, Fault)
	e = m.LinkUp(at(7 * time.Second))
	if e.Transition == nil || e.Transition.To != Backup {
		t.Fatalf("link up: %+v", e)
	}
}

func TestReceiveChecks(t *testing.T) {
	v2 := func(c *Config) { c.Version = 2 }
	v2adv := func(a *Advert) { a.Version = 2 }
	for _, tc := range []struct {
		name string
		cfg  Config
		src  netip.Addr
		adv  Advert
		want DropReason
	}{
		{"accepted", cfg(100), peer, adv(150), ""},
		{"other version", cfg(100), peer, adv(150, v2adv), DropVersion},
		{"other VRID", cfg(100), peer, adv(150, func(a *Advert) { a.VRID = 52 }), DropVRID},
		{"IPv6 advert for IPv4 router", cfg(100), netip.MustParseAddr("fe80::1"), adv(150, func(a *Advert) { a.Addrs = []netip.Addr{netip.MustParseAddr("2001:db8::1")} }), DropFamily},
		{"unicast: unknown source", cfg(100, func(c *Config) { c.UnicastPeers = []netip.Addr{lowIP} }), peer, adv(150), DropUnicastSrc},
		{"unicast: known source", cfg(100, func(c *Config) { c.UnicastPeers = []netip.Addr{peer} }), peer, adv(150), ""},
		{"v2 accepted", cfg(100, v2), peer, adv(150, v2adv), ""},
		{"v2 interval mismatch", cfg(100, v2), peer, adv(150, v2adv, func(a *Advert) { a.Interval = 2 * time.Second }), DropInterval},
		{"v2 address list mismatch", cfg(100, v2), peer, adv(150, v2adv, func(a *Advert) { a.Addrs = []netip.Addr{vip2} }), DropAddrList},
		{"v2 address list mismatch from owner", cfg(100, v2), peer, adv(255, v2adv, func(a *Advert) { a.Addrs = []netip.Addr{vip2} }), ""},
		{"v3 address list mismatch is only a MAY", cfg(100), peer, adv(150, func(a *Advert) { a.Addrs = []netip.Addr{vip2} }), ""},
		{"v2 auth expected", cfg(100, v2, func(c *Config) { c.AuthPass = "secret" }), peer, adv(150, v2adv), DropAuth},
		{"v2 auth matches", cfg(100, v2, func(c *Config) { c.AuthPass = "secret" }), peer, adv(150, v2adv, func(a *Advert) {
			a.AuthType = AuthSimple
			copy(a.AuthData[:], "secret")
		}), ""},
		{"v2 auth wrong", cfg(100, v2, func(c *Config) { c.AuthPass = "secret" }), peer, adv(150, v2adv, func(a *Advert) {
			a.AuthType = AuthSimple
			copy(a.AuthData[:], "guess")
		}), DropAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMachine(tc.cfg, me)
			m.Start(t0)
			if _, got := m.Receive(at(time.Second), tc.src, tc.adv); got != tc.want {
				t.Fatalf("reason %q, want %q", got, tc.want)
			}
		})
	}
}

func TestV2Timing(t *testing.T) {
	// RFC 3768: skew is (256-prio)/256 s whatever the interval.
	m := NewMachine(cfg(100, func(c *Config) { c.Version = 2; c.AdvertInt = 2 * time.Second }), me)
	m.Start(t0)
	if want := at(6*time.Second + skewOf(100, time.Second)); m.Deadline() != want {
		t.Fatalf("v2 master down at %v, want %v", m.Deadline().Sub(t0), want.Sub(t0))
	}
}

func TestSetPriority(t *testing.T) {
	m := NewMachine(cfg(100), me)
	m.Start(t0)
	m.Tick(at(4 * time.Second))
	e := m.SetPriority(at(5*time.Second), 80)
	if !e.Send || e.SendPriority != 80 || m.Info().Priority != 80 {
		t.Fatalf("master lowering its priority: %+v", e)
	}
	// A backup at 90 now outranks us: its advert makes us step down.
	if _, r := m.Receive(at(5500*time.Millisecond), peer, adv(90)); r != "" || m.State() != Backup {
		t.Fatalf("after a 90 advert: %s %q", m.State(), r)
	}
	if e := m.SetPriority(at(6*time.Second), 0); e.Send || m.Info().Priority != 80 {
		t.Fatal("tracking must not reach priority 0")
	}
	owner := NewMachine(cfg(255), me)
	owner.Start(t0)
	if owner.SetPriority(at(time.Second), 200); owner.Info().Priority != 255 {
		t.Fatal("the owner's priority moved")
	}
}

func TestResign(t *testing.T) {
	m := NewMachine(cfg(150), me)
	m.Start(t0)
	if _, err := m.Resign(at(time.Second), time.Minute); err == nil {
		t.Fatal("a backup resigned")
	}
	m.Tick(at(4 * time.Second))
	e, err := m.Resign(at(5*time.Second), 10*time.Second)
	if err != nil || !e.Send || e.SendPriority != 0 || e.Transition == nil || e.Transition.To != Backup {
		t.Fatalf("resign: %+v %v", e, err)
	}
	// The lower-priority peer takes over; we follow it during the hold...
	for s := 6; s < 15; s++ {
		m.Receive(at(time.Duration(s)*time.Second), lowIP, adv(100))
		if e := m.Tick(at(time.Duration(s)*time.Second + 500*time.Millisecond)); e.Transition != nil {
			t.Fatalf("preempted at %ds, within the hold", s)
		}
	}
	// ...and preempt once it is over.
	for s := 15; s < 25; s++ {
		m.Receive(at(time.Duration(s)*time.Second), lowIP, adv(100))
		if e := m.Tick(at(time.Duration(s)*time.Second + 500*time.Millisecond)); e.Transition != nil && e.Transition.To == Master {
			return
		}
	}
	t.Fatal("never preempted after the hold")
}

// TestEndHold: a resigned master held for an hour preempts within one
// Master_Down_Interval once its hold is ended.
func TestEndHold(t *testing.T) {
	m := NewMachine(cfg(150), me)
	m.Start(t0)
	m.Tick(at(4 * time.Second))
	if _, err := m.Resign(at(5*time.Second), time.Hour); err != nil {
		t.Fatal(err)
	}
	for s := 6; s < 10; s++ {
		m.Receive(at(time.Duration(s)*time.Second), lowIP, adv(100))
		if e := m.Tick(at(time.Duration(s)*time.Second + 500*time.Millisecond)); e.Transition != nil {
			t.Fatalf("preempted at %ds, within the hold", s)
		}
	}
	m.EndHold(at(10 * time.Second))
	// The last advert heard was at 9s; adverts after the hold are
	// ignored, so the timer set then runs out: 3 intervals + skew.
	for ms := 10000; ms < 13500; ms += 100 {
		if ms%1000 == 0 {
			m.Receive(at(time.Duration(ms)*time.Millisecond), lowIP, adv(100))
		}
		if e := m.Tick(at(time.Duration(ms) * time.Millisecond)); e.Transition != nil {
			if e.Transition.To != Master || ms < 12000 {
				t.Fatalf("at %dms: %+v", ms, e.Transition)
			}
			return
		}
	}
	t.Fatal("no preemption after the hold was ended")
}

func TestForcedBySyncGroup(t *testing.T) {
	m := NewMachine(cfg(100), me)
	m.Start(t0)
	if e := m.ForceBackup(at(time.Second), "x"); e.Transition != nil || e.Send {
		t.Fatalf("forcing a backup to backup: %+v", e)
	}
	e := m.ForceMaster(at(time.Second), "sync group G: VI_2 is MASTER")
	if e.Transition == nil || e.Transition.To != Master || !e.Send || !e.GARP || e.Transition.Reason != "sync group G: VI_2 is MASTER" {
		t.Fatalf("force master: %+v", e)
	}
	if e := m.ForceMaster(at(2*time.Second), "again"); e.Transition != nil {
		t.Fatal("forcing a master to master changed something")
	}
	e = m.ForceBackup(at(3*time.Second), "sync group G: VI_2 is BACKUP")
	if e.Transition == nil || e.Transition.To != Backup || !e.Send || e.SendPriority != 0 {
		t.Fatalf("force backup: %+v", e)
	}
}

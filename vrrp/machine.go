package vrrp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"
)

// State is an RFC 5798 state, plus Fault as keepalived has it.
type State int

const (
	Init State = iota
	Backup
	Master
	Fault
)

func (s State) String() string {
	switch s {
	case Init:
		return "INIT"
	case Backup:
		return "BACKUP"
	case Master:
		return "MASTER"
	case Fault:
		return "FAULT"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

func (s *State) UnmarshalText(b []byte) error {
	for _, c := range []State{Init, Backup, Master, Fault} {
		if c.String() == string(b) {
			*s = c
			return nil
		}
	}
	return fmt.Errorf("unknown VRRP state %q", b)
}

// Config is one virtual router.
type Config struct {
	Name      string
	Interface string
	VRID      uint8
	Priority  uint8
	Version   int // 2 or 3
	// AdvertInt is this router's advertisement interval.
	AdvertInt    time.Duration
	Preempt      bool
	PreemptDelay time.Duration
	VIPs         []netip.Prefix
	// Excluded are held with the VIPs but never advertised (keepalived's
	// virtual_ipaddress_excluded); VIPs that do not fit an advert on the
	// link's MTU (or beyond 255) are held the same way.
	Excluded []netip.Prefix
	// UnicastPeers, when set, replace multicast and are the only accepted
	// sources.
	UnicastPeers []netip.Addr
	// UnicastSrc overrides the interface's primary address as source.
	UnicastSrc netip.Addr
	// ChecksumAsV2 sends version 3 IPv4 checksums without the pseudo-header
	// (RFC 9568 peers), keepalived's v3_checksum_as_v2.
	ChecksumAsV2 bool
	// AuthPass is version 2's simple password (keepalived auth_type PASS).
	AuthPass string
	// Track lists other links the router depends on; TrackScripts the
	// checks whose verdicts Group.SetScript reports.
	Track        []Track
	TrackScripts []TrackScript
	TrackFiles   []TrackFile
	// SyncGroup names the vrrp_sync_group the router belongs to: its
	// members go to FAULT, MASTER and BACKUP together.
	SyncGroup string
	// GARPRepeat is how many gratuitous ARPs a burst sends (default 1);
	// GARPDelay is when a second burst follows becoming master (0: none);
	// GARPRefresh repeats a burst that often while master (0: never).
	GARPRepeat  int
	GARPDelay   time.Duration
	GARPRefresh time.Duration
	// GARPLowerPrioRepeat and GARPLowerPrioDelay replace them when a
	// master hears a lower priority (0: the same as above).
	GARPLowerPrioRepeat int
	GARPLowerPrioDelay  time.Duration
	// InitialMaster (keepalived's state MASTER) takes over at start rather
	// than after Master_Down_Interval; a higher priority still wins.
	InitialMaster bool
	// DontTrackPrimary: the instance's own interface going down does not
	// make it FAULT (keepalived's dont_track_primary).
	DontTrackPrimary bool
	// SkipCheckAdvAddr: adverts' address lists are not compared
	// (keepalived's skip_check_adv_addr).
	SkipCheckAdvAddr bool
	// NoAccept: as master, refuse packets addressed to the virtual
	// addresses (keepalived's no_accept, RFC 9568 Accept_Mode false);
	// enforced by Deps.Acceptor.
	NoAccept bool
	// InitFail: tracked interfaces and scripts that have not reported yet
	// count as down, so the instance starts in FAULT (keepalived's
	// init_fail).
	InitFail bool
	// LowerPrioNoAdvert: a master hearing a lower priority does not answer
	// with an advert (keepalived's lower_prio_no_advert); it still
	// re-announces the addresses.
	LowerPrioNoAdvert bool
	// HigherPrioNoAdvert: a master hearing a higher priority steps down
	// without the one advert at its own priority it sends otherwise
	// (keepalived's higher_prio_send_advert, which directord has on by
	// default, turned off).
	HigherPrioNoAdvert bool
	// VMAC, when set, is the macvlan interface with the virtual router's
	// MAC (RFC 9568 §7.3) the instance holds its addresses on and, unless
	// VMACXmitBase, sends and hears its adverts on (keepalived's
	// use_vmac, vmac_xmit_base).
	VMAC         string
	VMACXmitBase bool
	// Routes and Rules are present while master (keepalived's
	// virtual_routes and virtual_rules).
	Routes []Route
	Rules  []Rule
}

// sockIf is the interface the adverts go and come on.
func (c Config) sockIf() string {
	if c.VMAC != "" && !c.VMACXmitBase {
		return c.VMAC
	}
	return c.Interface
}

// addrIf is the interface that holds the virtual addresses.
func (c Config) addrIf() string {
	if c.VMAC != "" {
		return c.VMAC
	}
	return c.Interface
}

// VirtualMAC is the virtual router's MAC address (RFC 9568 §7.3):
// 00-00-5E-00-01-{VRID} for IPv4, 00-00-5E-00-02-{VRID} for IPv6.
func VirtualMAC(vrid uint8, ipv6 bool) net.HardwareAddr {
	if ipv6 {
		return net.HardwareAddr{0, 0, 0x5e, 0, 2, vrid}
	}
	return net.HardwareAddr{0, 0, 0x5e, 0, 1, vrid}
}

// TrackScript is a check the router depends on: when it fails the router
// goes to FAULT if Weight is 0. Otherwise, as in keepalived, a positive
// Weight is added to the priority while the check passes, a negative one
// while it fails.
type TrackScript struct {
	Name    string
	Weight  int
	Reverse bool // success counts as failure (keepalived's reverse)
}

// TrackFile is a file holding a number (keepalived's track_file): with
// Weight 0 a non-zero number means FAULT; otherwise the number times the
// weight (negated with Reverse) is added to the priority.
type TrackFile struct {
	Name    string
	Weight  int
	Reverse bool
}

// Track is a link the router depends on: when it is down the router goes
// to FAULT if Weight is 0. Otherwise, as in keepalived, a positive Weight
// is added to the priority while the link is up, a negative one while it
// is down.
type Track struct {
	Interface string
	Weight    int
	Reverse   bool // up counts as down (keepalived's reverse)
}

// IPv6 reports whether the router carries IPv6 addresses.
func (c *Config) IPv6() bool { return len(c.VIPs) > 0 && c.VIPs[0].Addr().Is6() }

// held is every address the master holds: the advertised and the
// excluded ones.
func (c *Config) held() []netip.Prefix { return append(slices.Clip(c.VIPs), c.Excluded...) }

// advertisable is how many addresses an advert carries on a link of mtu
// bytes: what fits with the IP and VRRP headers (and v2's
// authentication), at most 255, as keepalived counts.
func advertisable(ipv6 bool, version, mtu int) int {
	overhead, per := 20+8, 4
	if ipv6 {
		overhead, per = 40+8, 16
	}
	if version == 2 {
		overhead += 8
	}
	return max(min((mtu-overhead)/per, 255), 1)
}

// fitted is c as its Machine sees it: the VIPs an advert on a link of mtu
// bytes carries, the rest excluded.
func (c Config) fitted(mtu int) Config {
	if k := advertisable(c.IPv6(), c.Version, mtu); len(c.VIPs) > k {
		c.Excluded = append(slices.Clone(c.VIPs[k:]), c.Excluded...)
		c.VIPs = c.VIPs[:k]
	}
	return c
}

// Transition records a change of state.
type Transition struct {
	From     State     `json:"from"`
	To       State     `json:"to"`
	Reason   string    `json:"reason"`
	At       time.Time `json:"at"`
	Priority uint8     `json:"priority"` // effective, at the transition
}

// Effects are what the runner must do after a call into the Machine.
type Effects struct {
	// Send asks for an advertisement at SendPriority.
	Send         bool
	SendPriority uint8
	// GARP asks for gratuitous ARP / unsolicited NA for the addresses.
	GARP bool
	// Transition is set when the state changed: entering Master means add
	// the addresses, leaving it means remove them.
	Transition *Transition
	// LowerPrio: the master heard a lower priority (its GARP is
	// garp_lower_prio_*'s).
	LowerPrio bool
	// AddrListMismatch: a v3 advert listed other addresses than ours. It
	// was processed (RFC 9568 §7.1), and is to be counted and logged.
	AddrListMismatch bool
}

// Machine is the VRRP state machine of one virtual router. It holds no
// clock and does no I/O: every call gets the current time and returns the
// effects, so each decision can be tested with exact times.
type Machine struct {
	cfg     Config
	primary netip.Addr // our source address, for equal-priority tie breaks

	state          State
	priority       uint8 // effective priority
	masterAdverInt time.Duration
	masterDown     time.Time // Backup: when the master is declared dead
	adverDue       time.Time // Master: when the next advert is due
	holdUntil      time.Time // preempt_delay: a lower master is tolerated until then
	sawLower       bool      // the last master heard ranks below us
	resigned       bool      // the master sent priority 0
	master         netip.Addr
	masterPriority uint8
	last           *Transition
}

// NewMachine returns a router in Init.
func NewMachine(cfg Config, primary netip.Addr) *Machine {
	return &Machine{cfg: cfg, primary: primary, priority: cfg.Priority, masterAdverInt: cfg.AdvertInt}
}

// State is the current state.
func (m *Machine) State() State { return m.state }

func (m *Machine) transition(now time.Time, to State, reason string) *Transition {
	t := &Transition{From: m.state, To: to, Reason: reason, At: now, Priority: m.priority}
	m.state, m.last = to, t
	return t
}

// skew is RFC 5798's Skew_Time (RFC 3768's for version 2).
func (m *Machine) skew() time.Duration {
	if m.cfg.Version == 2 {
		return time.Duration(256-int(m.priority)) * time.Second / 256
	}
	return time.Duration(256-int(m.priority)) * m.masterAdverInt / 256
}

// masterDownInterval is 3 × the master's interval + skew.
func (m *Machine) masterDownInterval() time.Duration {
	if m.cfg.Version == 2 {
		return 3*m.cfg.AdvertInt + m.skew()
	}
	return 3*m.masterAdverInt + m.skew()
}

// Start leaves Init: the address owner becomes Master at once, every other
// router waits as Backup for a master.
func (m *Machine) Start(now time.Time) Effects {
	m.holdUntil = now.Add(m.cfg.PreemptDelay)
	if m.priority == PriorityOwner {
		return m.becomeMaster(now, "address owner (priority 255)")
	}
	if m.cfg.InitialMaster {
		return m.becomeMaster(now, "state MASTER in the configuration")
	}
	m.masterAdverInt = m.cfg.AdvertInt
	m.masterDown = now.Add(m.masterDownInterval())
	m.master = netip.Addr{}
	return Effects{Transition: m.transition(now, Backup, "started")}
}

func (m *Machine) becomeMaster(now time.Time, reason string) Effects {
	m.resigned = false // a master that resigned later must not explain a silent death
	m.adverDue = now.Add(m.cfg.AdvertInt)
	m.master, m.masterPriority = m.primary, m.priority
	return Effects{Send: true, SendPriority: m.priority, GARP: true, Transition: m.transition(now, Master, reason)}
}

func (m *Machine) becomeBackup(now time.Time, reason string) Effects {
	m.masterDown = now.Add(m.masterDownInterval())
	m.sawLower = false
	return Effects{Transition: m.transition(now, Backup, reason)}
}

// Deadline is when Tick must next be called; zero when no timer runs.
func (m *Machine) Deadline() time.Time {
	switch m.state {
	case Backup:
		return m.masterDown
	case Master:
		return m.adverDue
	}
	return time.Time{}
}

// Tick runs the timers that are due at now.
func (m *Machine) Tick(now time.Time) Effects {
	switch m.state {
	case Backup:
		if !now.Before(m.masterDown) {
			if m.resigned {
				return m.becomeMaster(now, "the master resigned (priority 0)")
			}
			return m.becomeMaster(now, fmt.Sprintf("no advertisement from the master for %s", m.masterDownInterval()))
		}
	case Master:
		if !now.Before(m.adverDue) {
			m.adverDue = m.adverDue.Add(m.cfg.AdvertInt)
			if m.adverDue.Before(now) { // we were stalled: don't burst
				m.adverDue = now.Add(m.cfg.AdvertInt)
			}
			return Effects{Send: true, SendPriority: m.priority}
		}
	}
	return Effects{}
}

// check applies the receive rules that need the configuration (RFC 3768
// and RFC 5798 §7.1, after the codec's own checks).
func (m *Machine) check(src netip.Addr, a *Advert) DropReason {
	switch {
	case a.Version != m.cfg.Version:
		return DropVersion
	case a.VRID != m.cfg.VRID:
		return DropVRID
	case src.Is6() != m.cfg.IPv6() || a.Addrs[0].Is6() != m.cfg.IPv6():
		return DropFamily
	case src == m.primary:
		// Our own advert come back (an echoing link, or our address
		// among the unicast peers): answering it would storm.
		// keepalived ignores it too.
		return DropSelf
	case len(m.cfg.UnicastPeers) > 0 && !slices.Contains(m.cfg.UnicastPeers, src):
		return DropUnicastSrc
	case m.cfg.Priority == PriorityOwner:
		return DropOwner
	}
	if a.Version == 2 {
		if !m.authOK(a) {
			return DropAuth
		}
		if a.Interval != m.cfg.AdvertInt {
			return DropInterval
		}
		if a.Priority != PriorityOwner && !m.cfg.SkipCheckAdvAddr && !m.sameAddrs(a.Addrs) {
			return DropAddrList
		}
	}
	return ""
}

func (m *Machine) authOK(a *Advert) bool {
	if m.cfg.AuthPass == "" {
		return a.AuthType == AuthNone
	}
	var want [8]byte
	copy(want[:], m.cfg.AuthPass)
	return a.AuthType == AuthSimple && a.AuthData == want
}

func (m *Machine) sameAddrs(addrs []netip.Addr) bool {
	if len(addrs) != len(m.cfg.VIPs) {
		return false
	}
	for _, p := range m.cfg.VIPs {
		if !slices.Contains(addrs, p.Addr()) {
			return false
		}
	}
	return true
}

// Receive handles an advertisement that passed Parse. It returns the drop
// reason when a configuration-dependent check rejects it.
func (m *Machine) Receive(now time.Time, src netip.Addr, a Advert) (Effects, DropReason) {
	if r := m.check(src, &a); r != "" {
		return Effects{}, r
	}
	e, r := m.receive(now, src, a)
	e.AddrListMismatch = a.Version == 3 && a.Priority != PriorityOwner && !m.cfg.SkipCheckAdvAddr && !m.sameAddrs(a.Addrs)
	return e, r
}

func (m *Machine) receive(now time.Time, src netip.Addr, a Advert) (Effects, DropReason) {
	switch m.state {
	case Backup:
		if a.Priority == PriorityResign {
			// The master is leaving: take over after the skew only.
			m.masterDown = now.Add(m.skew())
			m.resigned = true
			return Effects{}, ""
		}
		m.resigned = false
		lower := a.Priority < m.priority
		if lower && !m.sawLower && m.cfg.Preempt && m.cfg.PreemptDelay > 0 {
			// keepalived's preempt_delay runs "after startup or seeing a
			// lower priority master": a backup whose priority rose above
			// its master's waits too.
			m.Hold(now, m.cfg.PreemptDelay)
		}
		m.sawLower = lower
		if !m.cfg.Preempt || !lower || now.Before(m.holdUntil) {
			if m.cfg.Version == 3 {
				m.masterAdverInt = a.Interval // v3 backups learn the master's interval
			}
			m.masterDown = now.Add(m.masterDownInterval())
			m.master, m.masterPriority = src, a.Priority
		}
		// A lower-priority master is ignored: our timer runs out and we
		// preempt it.
		return Effects{}, ""
	case Master:
		if a.Priority == PriorityResign {
			m.adverDue = now.Add(m.cfg.AdvertInt)
			return Effects{Send: true, SendPriority: m.priority}, ""
		}
		if a.Priority > m.priority || a.Priority == m.priority && bytes.Compare(src.AsSlice(), m.primary.AsSlice()) > 0 {
			if m.cfg.Version == 3 {
				m.masterAdverInt = a.Interval
			}
			m.master, m.masterPriority = src, a.Priority
			// Two masters means the link was split and some hosts may have
			// learnt our MAC for the addresses. One last advert at our own
			// priority tells the winner so: hearing a lower master, it
			// re-announces the addresses at once (below), instead of the
			// hosts waiting for their neighbour entries to expire.
			e := m.becomeBackup(now, fmt.Sprintf("master %s has priority %d (ours %d)", src, a.Priority, m.priority))
			if !m.cfg.HigherPrioNoAdvert {
				e.Send, e.SendPriority = true, m.priority
			}
			return e, ""
		}
		// Another master with lower priority: a partition has healed or a
		// peer missed us. Assert ourselves at once so it steps down and
		// the switches relearn where the addresses are.
		if m.cfg.LowerPrioNoAdvert {
			return Effects{GARP: true, LowerPrio: true}, ""
		}
		m.adverDue = now.Add(m.cfg.AdvertInt)
		return Effects{Send: true, SendPriority: m.priority, GARP: true, LowerPrio: true}, ""
	}
	return Effects{}, ""
}

// Reconfigure takes settings that keep the router's identity (see
// Group.Update): the state is kept. The base priority takes effect through
// SetPriority, which the caller derives from it and the tracked links.
func (m *Machine) Reconfigure(now time.Time, cfg Config) {
	old := m.cfg
	m.cfg = cfg
	if m.state == Master && cfg.AdvertInt != old.AdvertInt {
		m.adverDue = now.Add(cfg.AdvertInt)
	}
	if m.state != Master && (cfg.Version == 2 || !m.master.IsValid()) {
		m.masterAdverInt = cfg.AdvertInt
	}
}

// SetPrimary changes the address adverts are sent from (the interface was
// renumbered): it breaks ties and names a master here.
func (m *Machine) SetPrimary(src netip.Addr) {
	m.primary = src
	if m.state == Master {
		m.master = src
	}
}

// SetPriority changes the effective priority (tracking). A master
// advertises the new priority at once, so that a backup that now ranks
// higher can preempt it without waiting. The owner's priority is fixed.
func (m *Machine) SetPriority(now time.Time, p uint8) Effects {
	if p == m.priority || m.cfg.Priority == PriorityOwner || p == PriorityOwner || p == PriorityResign {
		return Effects{}
	}
	// A backup's Master_Down_Interval (after a resignation, its
	// Skew_Time) depends on its priority: the running timer moves with it.
	wait := m.masterDownInterval
	if m.resigned {
		wait = m.skew
	}
	before := wait()
	m.priority = p
	if m.state == Backup {
		m.masterDown = m.masterDown.Add(wait() - before)
	}
	if m.state == Master {
		m.master, m.masterPriority = m.primary, p
		m.adverDue = now.Add(m.cfg.AdvertInt)
		return Effects{Send: true, SendPriority: p}
	}
	return Effects{}
}

// Resign hands over as a planned failover: a master sends priority 0,
// becomes backup, and does not preempt until hold has passed.
func (m *Machine) Resign(now time.Time, hold time.Duration) (Effects, error) {
	if m.state != Master {
		return Effects{}, fmt.Errorf("%s is %s here, not MASTER", m.cfg.Name, m.state)
	}
	m.holdUntil = now.Add(hold)
	e := m.becomeBackup(now, fmt.Sprintf("planned failover (no preemption for %s)", hold))
	m.master, m.masterPriority = netip.Addr{}, 0
	e.Send, e.SendPriority = true, PriorityResign
	return e, nil
}

// Hold keeps a backup from preempting until now+d at least: a sync
// group's other members are held with the one that resigned.
func (m *Machine) Hold(now time.Time, d time.Duration) {
	if until := now.Add(d); until.After(m.holdUntil) {
		m.holdUntil = until
	}
}

// EndHold ends a hold set by Resign (or preempt_delay) early: a backup
// with preemption and the higher priority then takes its addresses back
// as if the hold had run out, after one Master_Down_Interval.
func (m *Machine) EndHold(now time.Time) {
	if now.Before(m.holdUntil) {
		m.holdUntil = now
	}
}

// ForceMaster makes a backup master because another member of its sync
// group became master.
func (m *Machine) ForceMaster(now time.Time, reason string) Effects {
	if m.state != Backup {
		return Effects{}
	}
	return m.becomeMaster(now, reason)
}

// ForceBackup makes a master step down because another member of its sync
// group did; a priority-0 advert lets the peer take over at once.
func (m *Machine) ForceBackup(now time.Time, reason string) Effects {
	if m.state != Master {
		return Effects{}
	}
	e := m.becomeBackup(now, reason)
	m.master, m.masterPriority = netip.Addr{}, 0
	e.Send, e.SendPriority = true, PriorityResign
	return e
}

// Stop resigns: a master sends priority 0 so a backup takes over after its
// skew time alone.
func (m *Machine) Stop(now time.Time) Effects {
	if m.state == Master {
		return Effects{Send: true, SendPriority: PriorityResign, Transition: m.transition(now, Init, "stopping")}
	}
	if m.state == Init {
		return Effects{}
	}
	return Effects{Transition: m.transition(now, Init, "stopping")}
}

// LinkDown moves to Fault: the router cannot serve and must not hold the
// addresses. A master resigns on its way (priority 0, as keepalived does),
// so the backup takes over after Skew_Time rather than the whole
// Master_Down_Interval; with the link itself down the advert cannot go,
// and the backup waits, as it must.
func (m *Machine) LinkDown(now time.Time, why string) Effects {
	if m.state == Fault {
		return Effects{}
	}
	wasMaster := m.state == Master
	e := Effects{Transition: m.transition(now, Fault, why)}
	if wasMaster {
		e.Send, e.SendPriority = true, PriorityResign
	}
	return e
}

// LinkUp leaves Fault and starts over.
func (m *Machine) LinkUp(now time.Time) Effects {
	if m.state != Fault {
		return Effects{}
	}
	return m.Start(now)
}

// Info is a snapshot for status.
type Info struct {
	State          State         `json:"state"`
	Priority       uint8         `json:"priority"`
	Master         string        `json:"master,omitempty"`
	MasterPriority uint8         `json:"master_priority,omitempty"`
	AdvertInt      time.Duration `json:"advert_int_ns"`
	MasterAdverInt time.Duration `json:"master_advert_int_ns"`
	LastTransition *Transition   `json:"last_transition,omitempty"`
}

func (m *Machine) Info() Info {
	i := Info{
		State:          m.state,
		Priority:       m.priority,
		MasterPriority: m.masterPriority,
		AdvertInt:      m.cfg.AdvertInt,
		MasterAdverInt: m.masterAdverInt,
		LastTransition: m.last,
	}
	if m.master.IsValid() && (m.state == Master || m.state == Backup) {
		i.Master = m.master.String()
	}
	return i
}

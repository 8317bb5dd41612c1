package sync

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	stdsync "sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
)

// Config configures a Syncer.
type Config struct {
	// Listen is where the peer's master connects to send its flows.
	Listen netip.AddrPort
	// Peer is where this node sends its flows while it is master.
	Peer netip.AddrPort
	// Key authenticates both ends; each session's messages are encrypted
	// and authenticated with a key derived from it and the session's
	// nonces (AES-256-GCM), and numbered.
	Key  []byte
	VIPs []netip.Addr
	// Services are what a backup takes flows for: a flow whose original
	// destination is not one of them, or whose NAT target is not one of
	// its real servers, is dropped and counted (SetServices updates them).
	Services []Service
	// Secure, when set, wraps each connection before the key handshake:
	// the daemon runs the cluster's mutual TLS there when it has a
	// [cluster], so the sync is authenticated by the members'
	// certificates as well as by Key.
	Secure func(c net.Conn, client bool) (net.Conn, error)
	// NetNS is an open namespace file for the conntrack table (tests);
	// 0 is the daemon's own.
	NetNS int
	// QueueLen bounds the events waiting to be sent; beyond it they are
	// dropped, counted, and covered by the next resync.
	QueueLen int
	// MaxRate caps the events sent a second (default 50,000); the excess
	// is dropped and counted the same way.
	MaxRate int
	// Resync is how often the master sends its whole table, which also
	// refreshes the backup's timeouts.
	Resync time.Duration
	// Persist, when set, gives the data plane's persistence entries, sent
	// every PersistEvery (default 2 s) and applied on the backup.
	Persist      PersistStore
	PersistEvery time.Duration
	Logger       *slog.Logger
}

// Service is a virtual service whose flows a backup writes.
type Service struct {
	Proto uint8
	VIP   netip.AddrPort
	Reals []netip.AddrPort
}

type serviceKey struct {
	proto uint8
	vip   netip.AddrPort
}

// Longest timeouts a synced flow may carry: the kernel's own defaults for
// an established TCP (and SCTP) flow and an assured UDP one.
const (
	maxTimeoutStream = 5 * 24 * 3600
	maxTimeoutUDP    = 180
)

// Reasons a backup rejects a flow or a message (Status.Rejected).
const (
	RejectNotService = "not_a_virtual_server"
	RejectNotReal    = "not_a_real_server"
	RejectProtocol   = "protocol"
	RejectReplay     = "replay"
	RejectAuth       = "authentication"
	RejectPeer       = "not_the_peer"
	RejectBusy       = "handshake_in_progress"
)

// PersistEntry is a persistence entry on the wire: a client held on a
// real server of a service.
type PersistEntry struct {
	Service string         `json:"s"` // as the data plane names it
	Real    netip.AddrPort `json:"r"`
	Client  netip.Addr     `json:"c"`
	TTL     time.Duration  `json:"t"`
}

// PersistStore reads and writes the persistence entries of a data plane.
type PersistStore interface {
	Entries() ([]PersistEntry, error)
	Apply([]PersistEntry) error
}

// Status is what the syncer has done.
type Status struct {
	Role      string `json:"role"` // master (sending) or backup (receiving)
	Peer      string `json:"peer"`
	Connected bool   `json:"connected"`
	// TLS: connections run the cluster's mutual TLS (Config.Secure).
	TLS      bool   `json:"tls"`
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	Applied  uint64 `json:"applied"`
	Failed   uint64 `json:"failed"`
	Dropped  uint64 `json:"dropped"`
	Refused  uint64 `json:"refused"` // connections or messages failing authentication
	// Rejected counts what a backup refused, by reason (Reject*).
	Rejected   map[string]uint64 `json:"rejected,omitempty"`
	LastResync time.Time         `json:"last_resync,omitzero"`
	// LagMillis is the lag of the last message applied: for events, from
	// the master's conntrack event (the oldest of the message) to the
	// write here, so it includes the master's queue and batching.
	LagMillis float64 `json:"lag_ms"`
}

// Syncer sends the master's flows to the peer and applies the peer's.
type Syncer struct {
	cfg    Config
	log    *slog.Logger
	table  flowTable
	vips   map[netip.Addr]bool
	master atomic.Bool
	wake   chan struct{}
	// resyncNow asks the sender for a resync at once (events were lost).
	resyncNow chan struct{}
	queue     chan event

	sent, received, applied, failed, dropped, refused atomic.Uint64
	connected                                         atomic.Bool
	mu                                                stdsync.Mutex
	lastResync                                        time.Time
	lag                                               time.Duration
	rejected                                          map[string]uint64
	services                                          map[serviceKey]map[netip.AddrPort]bool
	handshaking                                       bool      // a connection from the peer is being authenticated
	lastWarn                                          time.Time // of a refusal: at most one a minute is logged
}

// flowTable is the conntrack table as the syncer uses it; *Table is the
// kernel's.
type flowTable interface {
	Flows(vips map[netip.Addr]bool) ([]Flow, error)
	WriteBatch(fs []Flow) (int, error)
	Delete(f Flow) error
	Close() error
}

var _ flowTable = (*Table)(nil)

// New opens the conntrack table; Run does the rest.
func New(cfg Config) (*Syncer, error) {
	if len(cfg.Key) < 16 {
		return nil, errors.New("sync: the key must be at least 16 bytes")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 65536
	}
	if cfg.MaxRate == 0 {
		cfg.MaxRate = 50000
	}
	if cfg.Resync == 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.PersistEvery == 0 {
		cfg.PersistEvery = 2 * time.Second
	}
	t, err := OpenTable(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	s := &Syncer{cfg: cfg, log: cfg.Logger, table: t, vips: map[netip.Addr]bool{},
		wake: make(chan struct{}, 1), resyncNow: make(chan struct{}, 1), queue: make(chan event, cfg.QueueLen)}
	for _, v := range cfg.VIPs {
		s.vips[v.Unmap()] = true
	}
	s.SetServices(cfg.Services)
	return s, nil
}

// SetServices replaces the services a backup takes flows for.
func (s *Syncer) SetServices(svcs []Service) {
	m := map[serviceKey]map[netip.AddrPort]bool{}
	for _, sv := range svcs {
		k := serviceKey{sv.Proto, unmap(sv.VIP)}
		if m[k] == nil {
			m[k] = map[netip.AddrPort]bool{}
		}
		for _, r := range sv.Reals {
			m[k][unmap(r)] = true
		}
	}
	s.mu.Lock()
	s.services = m
	s.mu.Unlock()
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }

// admit checks a flow from the peer against this node's services and caps
// its timeout; reason is why it is refused, or "".
func (s *Syncer) admit(f Flow) (Flow, string) {
	switch f.Proto {
	case syscall.IPPROTO_TCP, syscall.IPPROTO_SCTP:
		f.Timeout = min(f.Timeout, maxTimeoutStream)
	case syscall.IPPROTO_UDP:
		f.Timeout = min(f.Timeout, maxTimeoutUDP)
	default:
		return f, RejectProtocol
	}
	s.mu.Lock()
	reals, ok := s.services[serviceKey{f.Proto, unmap(f.VIP)}]
	s.mu.Unlock()
	switch {
	case !ok:
		return f, RejectNotService
	case !reals[unmap(f.Real)]:
		return f, RejectNotReal
	}
	return f, ""
}

// reject counts a refusal by reason.
func (s *Syncer) reject(reason string, n int) {
	s.mu.Lock()
	if s.rejected == nil {
		s.rejected = map[string]uint64{}
	}
	s.rejected[reason] += uint64(n)
	s.mu.Unlock()
}

// filter keeps the flows admit takes, counting the others.
func (s *Syncer) filter(fs []Flow) []Flow {
	out := fs[:0:0]
	for _, f := range fs {
		g, why := s.admit(f)
		if why != "" {
			s.reject(why, 1)
			continue
		}
		out = append(out, g)
	}
	return out
}

// warn logs a refusal at most once a minute: a scan or a flood must not
// fill the log. Everything is counted.
func (s *Syncer) warn(msg string, args ...any) {
	s.mu.Lock()
	now := time.Now()
	quiet := now.Sub(s.lastWarn) < time.Minute
	if !quiet {
		s.lastWarn = now
	}
	s.mu.Unlock()
	if !quiet {
		s.log.Warn(msg, args...)
	}
}

// SetMaster makes this node send (true) or receive (false). It is safe to
// call from the VRRP transitions: it never blocks.
func (s *Syncer) SetMaster(m bool) {
	if s.master.Swap(m) != m {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// Run listens for the peer and, while master, streams to it.
func (s *Syncer) Run(ctx context.Context) error {
	defer s.table.Close()
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", s.cfg.Listen.String())
	if err != nil {
		return fmt.Errorf("sync listen %s: %w", s.cfg.Listen, err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	go s.accept(ctx, ln)
	vips := make([]netip.Addr, 0, len(s.vips))
	for v := range s.vips {
		vips = append(vips, v)
	}
	if remove, err := eventFilter(s.cfg.NetNS, vips); err != nil {
		s.log.Warn("sync: conntrack events not limited to assured and destroy; under load some may be lost (the resyncs cover them)", "err", err)
	} else {
		defer func() {
			if err := remove(); err != nil {
				s.log.Warn("sync: leaving", "err", err)
			}
		}()
	}
	if err := s.watch(ctx); err != nil {
		return err
	}
	for {
		if s.master.Load() {
			s.send(ctx)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		case <-time.After(time.Second):
		}
	}
}

// watch queues the conntrack events of flows to the VIPs, dropping (and
// counting) what does not fit: a flood of short connections must not
// grow memory without bound. When the kernel reports lost events (its
// socket buffer overflowed), it listens again and asks for a resync.
func (s *Syncer) watch(ctx context.Context) error {
	c, evs, errs, err := s.listen()
	if err != nil {
		return err
	}
	go func() {
		defer func() { c.Close() }()
		// A fixed one-second window: at most MaxRate events in each.
		rate := rateWindow{max: s.cfg.MaxRate, start: time.Now()}
		for {
			select {
			case <-ctx.Done():
				return
			case err := <-errs:
				if ctx.Err() != nil {
					return
				}
				// The library's listener stops at an error: without a new
				// one no event would come again.
				s.dropped.Add(1)
				s.log.Warn("sync: conntrack events lost; listening again and resyncing", "err", err)
				c.Close()
				for {
					if c, evs, errs, err = s.listen(); err == nil {
						break
					}
					s.log.Warn("sync: conntrack events", "err", err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Second):
					}
				}
				select {
				case s.resyncNow <- struct{}{}:
				default:
				}
			case ev := <-evs:
				if !s.master.Load() || ev.Flow == nil {
					continue
				}
				f, ok := fromConntrack(*ev.Flow, s.vips)
				if !ok {
					continue
				}
				m := event{Flow: f, At: time.Now().UnixMicro()}
				switch {
				case ev.Type == conntrack.EventDestroy:
					m.Del = true
				case f.Proto == syscall.IPPROTO_TCP && f.TCPState != tcpEstablished:
					// Only an established TCP flow is worth carrying on:
					// handshakes and closings would triple the traffic,
					// and the resync refreshes what changes later.
					continue
				}
				if !rate.allow(time.Now()) {
					s.dropped.Add(1)
					continue
				}
				select {
				case s.queue <- m:
				default:
					s.dropped.Add(1)
				}
			}
		}
	}()
	return nil
}

// listen subscribes to the conntrack events.
func (s *Syncer) listen() (*conntrack.Conn, chan conntrack.Event, chan error, error) {
	c, err := conntrack.Dial(&netlink.Config{NetNS: s.cfg.NetNS})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("conntrack events: %w", err)
	}
	c.SetReadBuffer(8 << 20)
	evs := make(chan conntrack.Event, 1024)
	errs, err := c.Listen(evs, 1, []netfilter.NetlinkGroup{netfilter.GroupCTNew, netfilter.GroupCTUpdate, netfilter.GroupCTDestroy})
	if err != nil {
		c.Close()
		return nil, nil, nil, fmt.Errorf("conntrack events: %w", err)
	}
	return c, evs, errs, nil
}

// send connects to the peer, sends the whole table and then the events,
// until the connection fails or this node is no longer master.
func (s *Syncer) send(ctx context.Context) {
	// From the listen address: the peer takes connections from that
	// address only.
	d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: s.cfg.Listen.Addr().AsSlice()}}
	conn, err := d.DialContext(ctx, "tcp", s.cfg.Peer.String())
	if err != nil {
		s.log.Debug("sync: peer unreachable", "peer", s.cfg.Peer.String(), "err", err)
		return
	}
	defer conn.Close()
	if s.cfg.Secure != nil {
		if conn, err = s.cfg.Secure(conn, true); err != nil {
			s.warn("sync: peer refused", "peer", s.cfg.Peer.String(), "err", err)
			return
		}
		defer conn.Close()
	}
	key, err := s.handshake(conn, true)
	if err != nil {
		s.warn("sync: peer refused", "peer", s.cfg.Peer.String(), "err", err)
		return
	}
	s.connected.Store(true)
	defer s.connected.Store(false)
	s.log.Info("sync: sending flows to the peer", "peer", s.cfg.Peer.String())
	w := bufio.NewWriter(conn)
	c := &sealer{aead: sessionAEAD(key)}
	write := func(m message) error {
		if _, err := w.Write(c.seal(m, time.Now())); err != nil {
			return err
		}
		s.sent.Add(1)
		return nil
	}
	writeAll := func(ms []message) error {
		for _, m := range ms {
			if err := write(m); err != nil {
				return err
			}
		}
		return w.Flush()
	}
	resync := func() error {
		flows, err := s.table.Flows(s.vips)
		if err != nil {
			return err
		}
		if err := writeAll(resyncMessages(flows)); err != nil {
			return err
		}
		s.mu.Lock()
		s.lastResync = time.Now()
		s.mu.Unlock()
		return nil
	}
	persist := func() error {
		if s.cfg.Persist == nil {
			return nil
		}
		es, err := s.cfg.Persist.Entries()
		if err != nil || len(es) == 0 {
			return nil // nothing to say this time
		}
		return writeAll(persistMessages(es))
	}
	if resync() != nil || persist() != nil {
		return
	}
	tick := time.NewTicker(s.cfg.Resync)
	defer tick.Stop()
	ptick := time.NewTicker(s.cfg.PersistEvery)
	defer ptick.Stop()
	for s.master.Load() {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-s.resyncNow:
			if resync() != nil {
				return
			}
		case <-ptick.C:
			if persist() != nil {
				return
			}
		case <-tick.C:
			if resync() != nil {
				return
			}
		case ev := <-s.queue:
			var ms []message
			for _, evs := range batches(ev, s.queue) {
				ms = append(ms, message{Op: "events", Events: evs})
			}
			if writeAll(ms) != nil {
				return
			}
		}
	}
}

// accept takes connections from the peer's address only, one being
// authenticated at a time: others are closed at once, counted, and
// logged at most once a minute.
func (s *Syncer) accept(ctx context.Context, ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		from, _ := netip.ParseAddrPort(conn.RemoteAddr().String())
		if from.Addr().Unmap() != s.cfg.Peer.Addr().Unmap() {
			s.refuse(conn, RejectPeer, errors.New("not the peer's address"))
			continue
		}
		s.mu.Lock()
		busy := s.handshaking
		s.handshaking = true
		s.mu.Unlock()
		if busy {
			s.refuse(conn, RejectBusy, errors.New("another connection from the peer is being authenticated"))
			continue
		}
		go s.receive(ctx, conn)
	}
}

func (s *Syncer) refuse(conn net.Conn, reason string, err error) {
	conn.Close()
	s.refused.Add(1)
	s.reject(reason, 1)
	s.warn("sync: connection refused", "from", conn.RemoteAddr().String(), "err", err)
}

// receive applies a master's flows while this node is backup.
func (s *Syncer) receive(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	var err error
	if s.cfg.Secure != nil {
		var tc net.Conn
		if tc, err = s.cfg.Secure(conn, false); err == nil {
			conn = tc
			defer conn.Close()
		}
	}
	var key []byte
	if err == nil {
		key, err = s.handshake(conn, false)
	}
	s.mu.Lock()
	s.handshaking = false
	s.mu.Unlock()
	if err != nil {
		s.refused.Add(1)
		s.reject(RejectAuth, 1)
		s.warn("sync: connection refused", "from", conn.RemoteAddr().String(), "err", err)
		return
	}
	s.log.Info("sync: receiving flows", "from", conn.RemoteAddr().String())
	r := bufio.NewReaderSize(conn, 64<<10)
	c := &opener{aead: sessionAEAD(key)}
	st := newReceiveState()
	for {
		frame, err := readFrame(r)
		if err != nil {
			if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				s.refused.Add(1)
				s.warn("sync: connection closed", "from", conn.RemoteAddr().String(), "err", err)
			}
			return
		}
		m, err := c.open(frame)
		if errors.Is(err, errAuth) || errors.Is(err, errFormat) || errors.Is(err, errReplay) {
			s.refused.Add(1)
			reason := RejectAuth
			if errors.Is(err, errReplay) {
				reason = RejectReplay
			}
			s.reject(reason, 1)
			s.warn("sync: "+err.Error()+"; closing", "from", conn.RemoteAddr().String())
			return
		}
		if err != nil {
			s.failed.Add(1)
			continue
		}
		s.received.Add(1)
		if s.master.Load() {
			continue // the peer thinks it is master too; ours wins here
		}
		s.apply(m, st)
		// The lag of events runs from the master's conntrack event to
		// the write here; of other messages, from their sending.
		since := m.At
		if t := oldest(m.Events); t != 0 {
			since = t
		}
		s.mu.Lock()
		s.lag = time.Since(time.UnixMicro(since))
		s.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
	}
}

// receiveState is what a backup keeps of one master's connection.
type receiveState struct {
	synced map[string]Flow // written from this connection, by key
	seen   map[string]bool // flows of the resync in progress
}

func newReceiveState() *receiveState {
	return &receiveState{synced: map[string]Flow{}, seen: map[string]bool{}}
}

// apply carries out one message of the master's.
func (s *Syncer) apply(m message, st *receiveState) {
	switch m.Op {
	case "events":
		s.applyEvents(m.Events, st.synced)
	case "flow", "del": // one event, as earlier versions sent it
		if m.Flow != nil {
			s.applyEvents([]event{{Del: m.Op == "del", Flow: *m.Flow}}, st.synced)
		}
	case "persist":
		if s.cfg.Persist != nil {
			if err := s.cfg.Persist.Apply(m.Persist); err != nil {
				s.failed.Add(1)
				s.log.Debug("sync: persistence entries not written", "err", err)
			} else {
				s.applied.Add(uint64(len(m.Persist)))
			}
		}
	case "resync":
		s.write(s.filter(m.Flows), st.synced)
		for _, f := range m.Flows {
			st.seen[f.Key()] = true
		}
		if m.More {
			return
		}
		// Flows the master no longer has go.
		for k, f := range st.synced {
			if !st.seen[k] {
				if err := s.table.Delete(f); err != nil {
					s.failed.Add(1)
				}
				delete(st.synced, k)
			}
		}
		clear(st.seen)
		s.mu.Lock()
		s.lastResync = time.Now()
		s.mu.Unlock()
	}
}

// applyEvents writes and deletes flows in order, the writes between two
// deletions in one batch.
func (s *Syncer) applyEvents(evs []event, synced map[string]Flow) {
	var adds []Flow
	for _, ev := range evs {
		f, why := s.admit(ev.Flow)
		if why != "" {
			// A deletion too: the peer may end only flows of our services.
			s.reject(why, 1)
			continue
		}
		ev.Flow = f
		if !ev.Del {
			adds = append(adds, ev.Flow)
			continue
		}
		s.write(adds, synced)
		adds = adds[:0]
		if err := s.table.Delete(ev.Flow); err != nil {
			s.failed.Add(1)
			s.log.Debug("sync: flow not deleted", "err", err)
		}
		delete(synced, ev.Flow.Key())
	}
	s.write(adds, synced)
}

func (s *Syncer) write(fs []Flow, synced map[string]Flow) {
	if len(fs) == 0 {
		return
	}
	n, err := s.table.WriteBatch(fs)
	s.applied.Add(uint64(n))
	if err != nil {
		s.failed.Add(uint64(len(fs) - n))
		s.log.Debug("sync: flows not written", "written", n, "of", len(fs), "err", err)
	}
	for _, f := range fs {
		synced[f.Key()] = f
	}
}

// handshake authenticates both ends with the shared key and returns the
// session's message key: each side sends a nonce and proves the key on
// the other's.
func (s *Syncer) handshake(conn net.Conn, client bool) ([]byte, error) {
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	defer conn.SetDeadline(time.Time{})
	mine := make([]byte, 32)
	rand.Read(mine)
	if _, err := conn.Write(mine); err != nil {
		return nil, err
	}
	theirs := make([]byte, 32)
	if _, err := io.ReadFull(conn, theirs); err != nil {
		return nil, err
	}
	proof := func(role string, nonce []byte) []byte {
		m := hmac.New(sha256.New, s.cfg.Key)
		m.Write([]byte(role))
		m.Write(nonce)
		return m.Sum(nil)
	}
	me, them := "backup", "master"
	if client {
		me, them = "master", "backup"
	}
	if _, err := conn.Write(proof(me, theirs)); err != nil {
		return nil, err
	}
	got := make([]byte, sha256.Size)
	if _, err := io.ReadFull(conn, got); err != nil {
		return nil, err
	}
	if !hmac.Equal(got, proof(them, mine)) {
		return nil, errors.New("the peer does not have the key")
	}
	m := hmac.New(sha256.New, s.cfg.Key)
	if client {
		m.Write(mine)
		m.Write(theirs)
	} else {
		m.Write(theirs)
		m.Write(mine)
	}
	return m.Sum(nil), nil
}

// Status reports the counters.
func (s *Syncer) Status() Status {
	st := Status{Role: "backup", Peer: s.cfg.Peer.String(), Connected: s.connected.Load(), TLS: s.cfg.Secure != nil,
		Sent: s.sent.Load(), Received: s.received.Load(), Applied: s.applied.Load(), Failed: s.failed.Load(),
		Dropped: s.dropped.Load(), Refused: s.refused.Load()}
	if s.master.Load() {
		st.Role = "master"
	}
	s.mu.Lock()
	st.LastResync, st.LagMillis = s.lastResync, float64(s.lag)/float64(time.Millisecond)
	if len(s.rejected) > 0 {
		st.Rejected = maps.Clone(s.rejected)
	}
	s.mu.Unlock()
	return st
}

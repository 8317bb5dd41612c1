// Package probe measures what a client sees of a failover: it sends an
// ICMP echo (or opens a TCP connection) to a virtual address at a fixed
// interval and records when each probe was answered, so the gap around an
// event can be read off.
package probe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	"math/rand/v2"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Listen opens the raw ICMP socket; call it inside the client's network
// namespace (lab.Host.Do) so that probes leave from there.
func Listen() (net.PacketConn, error) {
	c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return nil, fmt.Errorf("ICMP socket: %w", err)
	}
	return c, nil
}

// Prober sends one probe every interval until stopped.
type Prober struct {
	target   string
	interval time.Duration
	// fire sends probe seq; it, or a receiver, calls answer(seq).
	fire func(seq int)

	mu   sync.Mutex
	sent []time.Time // by sequence number
	// answered holds when each probe's answer came (zero: none yet).
	answered []time.Time
	done     chan struct{}
}

// maxProbes keeps sequence numbers unique (16 bits).
const maxProbes = 1 << 16

// Start probes target over conn until ctx ends or Stop is called.
func Start(ctx context.Context, conn net.PacketConn, target netip.Addr, interval time.Duration) *Prober {
	p := &Prober{target: target.String(), interval: interval, done: make(chan struct{})}
	ctx = p.context(ctx)
	// The identifier keeps apart the echoes of two probers of one host,
	// which a raw socket all sees.
	id := (os.Getpid() ^ int(rand.Uint32())) & 0xffff
	dst := &net.IPAddr{IP: target.AsSlice()}
	p.fire = func(seq int) {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq & 0xffff, Data: []byte("directord probe")}}
		if b, err := msg.Marshal(nil); err == nil {
			_, _ = conn.WriteTo(b, dst) // an unreachable VIP is what we measure
		}
	}
	go p.receive(ctx, conn, target, id)
	go p.send(ctx)
	return p
}

// Dial opens a connection; StartTCP's tests pass one that dials from
// another network namespace.
type Dial func(ctx context.Context, network, addr string) (net.Conn, error)

// StartTCP probes target by opening a TCP connection every interval; a
// probe is answered when its connection is established within timeout.
// dial may be nil.
func StartTCP(ctx context.Context, target netip.AddrPort, interval, timeout time.Duration, dial Dial) *Prober {
	p := &Prober{target: target.String(), interval: interval, done: make(chan struct{})}
	ctx = p.context(ctx)
	if dial == nil {
		d := net.Dialer{KeepAlive: -1}
		dial = d.DialContext
	}
	p.fire = func(seq int) {
		go func() {
			dctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			c, err := dial(dctx, "tcp", target.String())
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT socket per probe
			c.Close()
			p.answer(seq)
		}()
	}
	go p.send(ctx)
	return p
}

// context returns ctx, ended by Stop as well.
func (p *Prober) context(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-p.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	return ctx
}

func (p *Prober) answer(seq int) {
	p.mu.Lock()
	if seq < len(p.answered) && p.answered[seq].IsZero() {
		p.answered[seq] = time.Now()
	}
	p.mu.Unlock()
}

// Stop ends the probing.
func (p *Prober) Stop() {
	select {
	case <-p.done:
	default:
		close(p.done)
	}
}

func (p *Prober) send(ctx context.Context) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		p.mu.Lock()
		seq := len(p.sent)
		if seq >= maxProbes {
			p.mu.Unlock()
			return
		}
		p.sent = append(p.sent, time.Now())
		p.answered = append(p.answered, time.Time{})
		p.mu.Unlock()
		p.fire(seq)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Prober) receive(ctx context.Context, conn net.PacketConn, target netip.Addr, id int) {
	buf := make([]byte, 1500)
	for ctx.Err() == nil {
		_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			continue
		}
		if ip, ok := from.(*net.IPAddr); !ok || !ip.IP.Equal(target.AsSlice()) {
			continue
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != id {
			continue
		}
		p.answer(e.Seq)
	}
}

// AnsweredAfter reports whether a probe sent after t has been answered.
func (p *Prober) AnsweredAfter(t time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.sent) - 1; i >= 0 && p.sent[i].After(t); i-- {
		if !p.answered[i].IsZero() {
			return true
		}
	}
	return false
}

// WaitAnswered waits until a probe sent after t has been answered.
func (p *Prober) WaitAnswered(t time.Time, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !p.AnsweredAfter(t) {
		if time.Now().After(deadline) {
			return fmt.Errorf("no probe of %s answered within %s", p.target, timeout)
		}
		time.Sleep(p.interval)
	}
	return nil
}

// Gap is the client-visible outage of an event at t: the longest time
// in which no answer came, from the last answer before t on. Read it
// once service is known to be back (WaitAnswered); its resolution is the
// probe interval. Answers are timed when they arrive, not by their
// probe's sending: a probe held back while its next hop is resolved (a
// director probing a VIP it just gave away) and answered late says
// nothing of the time it was sent.
func (p *Prober) Gap(t time.Time) time.Duration {
	from, to := p.Outage(t)
	return to.Sub(from)
}

// Outage is the longest time after t without an answer: from the answer
// before it (or t) to the one that ended it.
func (p *Prober) Outage(t time.Time) (from, to time.Time) {
	p.mu.Lock()
	var arrivals []time.Time
	for _, a := range p.answered {
		if !a.IsZero() {
			arrivals = append(arrivals, a)
		}
	}
	p.mu.Unlock()
	slices.SortFunc(arrivals, func(a, b time.Time) int { return a.Compare(b) })
	prev := t
	for _, a := range arrivals {
		if !a.After(t) {
			prev = a
			continue
		}
		if d := a.Sub(prev); d > to.Sub(from) {
			from, to = prev, a
		}
		prev = a
	}
	return from, to
}

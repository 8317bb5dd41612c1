// Package probe measures what a client sees of a failover: it sends an
// ICMP echo to a virtual address at a fixed interval and records which
// probes were answered, so the gap around an event can be read off.
package probe

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

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

// Prober sends one echo request every interval until stopped.
type Prober struct {
	conn     net.PacketConn
	target   netip.Addr
	interval time.Duration
	id       int

	mu       sync.Mutex
	sent     []time.Time // by sequence number
	answered []bool
	done     chan struct{}
}

// maxProbes keeps sequence numbers unique (16 bits).
const maxProbes = 1 << 16

// Start probes target over conn until ctx ends or Stop is called.
func Start(ctx context.Context, conn net.PacketConn, target netip.Addr, interval time.Duration) *Prober {
	p := &Prober{conn: conn, target: target, interval: interval, id: os.Getpid() & 0xffff, done: make(chan struct{})}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		<-p.done
		cancel()
	}()
	go p.receive(ctx)
	go p.send(ctx)
	return p
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
	dst := &net.IPAddr{IP: p.target.AsSlice()}
	for {
		p.mu.Lock()
		seq := len(p.sent)
		if seq >= maxProbes {
			p.mu.Unlock()
			return
		}
		p.sent = append(p.sent, time.Now())
		p.answered = append(p.answered, false)
		p.mu.Unlock()
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: p.id, Seq: seq, Data: []byte("directord probe")}}
		if b, err := msg.Marshal(nil); err == nil {
			_, _ = p.conn.WriteTo(b, dst) // an unreachable VIP is what we measure
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *Prober) receive(ctx context.Context) {
	buf := make([]byte, 1500)
	for ctx.Err() == nil {
		_ = p.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			continue
		}
		if ip, ok := from.(*net.IPAddr); !ok || !ip.IP.Equal(p.target.AsSlice()) {
			continue
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != p.id {
			continue
		}
		p.mu.Lock()
		if e.Seq < len(p.answered) {
			p.answered[e.Seq] = true
		}
		p.mu.Unlock()
	}
}

// AnsweredAfter reports whether a probe sent after t has been answered.
func (p *Prober) AnsweredAfter(t time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.sent) - 1; i >= 0 && p.sent[i].After(t); i-- {
		if p.answered[i] {
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
			return fmt.Errorf("no probe to %s answered within %s", p.target, timeout)
		}
		time.Sleep(p.interval)
	}
	return nil
}

// Gap is the client-visible outage of an event at t: the longest time
// between two consecutive answered probes, from the last probe answered
// before t on. Read it once service is known to be back (WaitAnswered);
// its resolution is the probe interval.
func (p *Prober) Gap(t time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	prev := time.Time{}
	var gap time.Duration
	for i := range p.sent {
		if !p.answered[i] {
			continue
		}
		if !p.sent[i].After(t) {
			prev = p.sent[i]
			continue
		}
		if prev.IsZero() {
			prev = t
		}
		gap = max(gap, p.sent[i].Sub(prev))
		prev = p.sent[i]
	}
	return gap
}

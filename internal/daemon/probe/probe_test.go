package probe

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
)

// TestGapOfACutCable: a target whose cable is cut for a while is seen
// unanswered for about that long, and answered before and after, by ICMP
// echo and by TCP connections.
func TestGapOfACutCable(t *testing.T) {
	for _, mode := range []string{"icmp", "tcp"} {
		t.Run(mode, func(t *testing.T) { gapOfACutCable(t, mode) })
	}
}

func gapOfACutCable(t *testing.T, mode string) {
	l := lab.New(t)
	sw := l.AddSwitch("sw")
	client, target := l.AddHost("client"), l.AddHost("target")
	sw.Plug(client, "eth0", "192.0.2.50/24")
	port := sw.Plug(target, "eth0", "192.0.2.60/24")

	var p *Prober
	switch mode {
	case "icmp":
		var conn net.PacketConn
		if err := client.Do(func() (err error) { conn, err = Listen(); return err }); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		p = Start(context.Background(), conn, netip.MustParseAddr("192.0.2.60"), 5*time.Millisecond)
	case "tcp":
		var ln net.Listener
		if err := target.Do(func() (err error) { ln, err = net.Listen("tcp", "192.0.2.60:8080"); return err }); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lab.AcceptAndClose(ln)
		// Each probe's socket is made in the client's namespace.
		dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = client.Do(func() error {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}
		p = StartTCP(context.Background(), netip.MustParseAddrPort("192.0.2.60:8080"), 5*time.Millisecond, 100*time.Millisecond, dial)
	}
	defer p.Stop()
	if err := p.WaitAnswered(time.Time{}, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	sw.IP("link", "set", port, "down")
	// Timed once the link is down: an answer that came while the command
	// ran is before the cut. (Timed before it, such an answer shortened
	// the gap below 300 ms in a CI run: 298.6 ms.)
	cut := time.Now()
	// Keep it cut until at least 300ms of probes have gone unanswered.
	if err := lab.Eventually(5*time.Second, func() error {
		if time.Since(cut) < 300*time.Millisecond {
			return context.DeadlineExceeded
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if p.AnsweredAfter(cut.Add(50 * time.Millisecond)) {
		t.Fatal("probes answered while the cable was cut")
	}
	sw.IP("link", "set", port, "up")
	if err := p.WaitAnswered(time.Now(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	gap := p.Gap(cut)
	if gap < 300*time.Millisecond {
		t.Fatalf("gap %s, but the cable was cut for at least 300ms", gap)
	}
	t.Logf("gap %s", gap)
}

package probe

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/directord/directord/internal/lab"
)

// TestGapOfACutCable: a target whose cable is cut for a while is seen
// unanswered for about that long, and answered before and after.
func TestGapOfACutCable(t *testing.T) {
	l := lab.New(t)
	sw := l.AddSwitch("sw")
	client, target := l.AddHost("client"), l.AddHost("target")
	sw.Plug(client, "eth0", "192.0.2.50/24")
	port := sw.Plug(target, "eth0", "192.0.2.60/24")

	var conn net.PacketConn
	if err := client.Do(func() (err error) { conn, err = Listen(); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	p := Start(context.Background(), conn, netip.MustParseAddr("192.0.2.60"), 5*time.Millisecond)
	defer p.Stop()
	if err := p.WaitAnswered(time.Time{}, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	cut := time.Now()
	sw.IP("link", "set", port, "down")
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

package lab

import (
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func namespaces(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatalf("ip netns list: %v", err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func hasPrefix(names []string, prefix string) []string {
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// TestTwoHostsPing proves the helper: two hosts on a bridge reach each
// other over IPv4 and IPv6, a program runs inside a host, a socket opened
// with Do lives in the host, and nothing is left afterwards.
func TestTwoHostsPing(t *testing.T) {
	Require(t, "ping")
	var mine string
	t.Run("lab", func(t *testing.T) {
		l := New(t)
		mine = Prefix + l.ID() + "-"
		sw := l.AddSwitch("sw")
		a, b := l.AddHost("a"), l.AddHost("b")
		sw.Plug(a, "eth0", "192.0.2.1/24", "2001:db8::1/64")
		sw.Plug(b, "eth0", "192.0.2.2/24", "2001:db8::2/64")

		if got := hasPrefix(namespaces(t), mine); len(got) != 3 {
			t.Fatalf("lab namespaces = %v, want 3", got)
		}
		a.MustRun("ping", "-c", "1", "-W", "2", "192.0.2.2")
		b.MustRun("ping", "-c", "1", "-W", "2", "2001:db8::1")

		// Unrelated hosts are isolated: a third host without a cable
		// cannot reach a.
		c := l.AddHost("c")
		if out, err := c.Run("ping", "-c", "1", "-W", "1", "192.0.2.1"); err == nil {
			t.Fatalf("unplugged host reached 192.0.2.1: %s", out)
		}

		// A listener opened in b through Do answers a's connection.
		var ln net.Listener
		if err := b.Do(func() (err error) {
			ln, err = net.Listen("tcp", "192.0.2.2:7000")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Write([]byte("hello"))
				c.Close()
			}
		}()
		if out := a.MustRun("bash", "-c", "exec 3<>/dev/tcp/192.0.2.2/7000; cat <&3"); out != "hello" {
			t.Fatalf("read %q through the lab, want hello", out)
		}

		// A long-running program is killed at Close.
		p := a.Start("sleep", "600")
		if p.Exited() {
			t.Fatal("sleep exited at once")
		}
		if _, err := p.Wait(20 * time.Millisecond); err == nil {
			t.Fatal("Wait returned for a running program")
		}
	})
	if left := hasPrefix(namespaces(t), mine); len(left) != 0 {
		t.Fatalf("namespaces left behind: %v", left)
	}
}

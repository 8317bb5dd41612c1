package daemon

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/vrrp/vrrptest"
)

// sd_notify against a notify socket the test owns: READY=1 once the
// daemon answers and has reconciled, RELOADING=1 (with MONOTONIC_USEC)
// and READY=1 around a reload, WATCHDOG=1 while the VRRP loops answer,
// STOPPING=1 at the end.
func TestSystemdNotify(t *testing.T) {
	sock, conn := notifySocket(t)
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", "")

	// next returns the next message that is not a watchdog ping, and
	// counts the pings.
	pings := 0
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		for {
			if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no notify message: %v", err)
			}
			if m := string(buf[:n]); m != "WATCHDOG=1" {
				return m
			}
			pings++
		}
	}

	h := startHost(t, &vrrptest.Hub{}, "192.0.2.11", hostConfig(t.TempDir(), 150, []string{"192.0.2.100/24"}, nil))
	if m := next(); m != "READY=1\nSTATUS=running" {
		t.Fatalf("first message %q", m)
	}
	if last, ok := h.d.lvs.lastReconcile(); !ok || last.At.IsZero() {
		t.Fatal("READY=1 before the first reconcile")
	}
	var res api.ReloadResult
	if err := h.client.Post(context.Background(), "/v1/reload", nil, &res); err != nil {
		t.Fatal(err)
	}
	if m := next(); !strings.HasPrefix(m, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("before the reload: %q", m)
	}
	if m := next(); m != "READY=1\nSTATUS=reload applied" {
		t.Fatalf("after the reload: %q", m)
	}
	// The watchdog is fed every 50 ms while VRRP answers.
	deadline := time.Now().Add(5 * time.Second)
	for pings < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d watchdog pings", pings)
		}
		buf := make([]byte, 64)
		_ = conn.SetReadDeadline(deadline)
		if n, err := conn.Read(buf); err == nil && string(buf[:n]) == "WATCHDOG=1" {
			pings++
		}
	}
	h.stop()
	if m := next(); m != "STOPPING=1" {
		t.Fatalf("at the end: %q", m)
	}
}

// A stalled VRRP loop stops the watchdog pings (systemd then restarts the
// daemon); they resume when it answers again.
func TestWatchdogStopsWhenVRRPStalls(t *testing.T) {
	sock, conn := notifySocket(t)
	s := &systemd{addr: sock, watchdog: 40 * time.Millisecond}
	stalled := make(chan bool, 1)
	stalled <- true
	alive := func(ctx context.Context) error {
		st := <-stalled
		stalled <- st
		if st {
			<-ctx.Done() // the loop does not answer
			return ctx.Err()
		}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.watch(ctx, alive, func(error) {})
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 64)); err == nil {
		t.Fatalf("a ping (%d bytes) while VRRP is stalled", n)
	}
	<-stalled
	stalled <- false
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "WATCHDOG=1" {
		t.Fatalf("no ping once VRRP answers: %q %v", buf[:n], err)
	}
}

// notifySocket is a notify socket the test owns, as systemd's.
func notifySocket(t *testing.T) (string, *net.UnixConn) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return sock, conn
}

package lvs

import (
	"testing"
	"time"
)

func TestRates(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := rates{now: func() time.Time { return now }}
	read := func(conns, bytes uint64) Stats {
		s := Stats{Connections: conns, BytesIn: bytes}
		r.fill("x", &s)
		r.done()
		return s
	}
	if s := read(0, 0); s.CPS != 0 {
		t.Fatalf("first reading has a rate: %+v", s)
	}
	now = now.Add(500 * time.Millisecond)
	if s := read(50, 5000); s.CPS != 0 {
		t.Fatalf("rate over half a second: %+v", s)
	}
	now = now.Add(1500 * time.Millisecond)
	s := read(200, 20000) // 2 s after the base
	if s.CPS != 100 || s.BPSIn != 10000 {
		t.Fatalf("rates %+v, want 100 cps and 10000 Bps", s)
	}
	now = now.Add(200 * time.Millisecond)
	if s := read(220, 22000); s.CPS != 100 {
		t.Fatalf("a reading too soon after the base keeps the last rates: %+v", s)
	}
	now = now.Add(time.Second)
	// Against the base of 2 s: 120 connections and 2000 bytes in 1.2 s.
	if s := read(320, 22000); s.CPS != 100 || s.BPSIn != 1666 {
		t.Fatalf("rates %+v, want 100 cps and 1666 Bps", s)
	}
}

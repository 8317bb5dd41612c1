package vrrp

import (
	"testing"
	"time"
)

// Both timers: a reset replaces the earlier setting, a deadline in the
// past fires at once, a stale expiry is not delivered after a reset.
func TestTimers(t *testing.T) {
	for name, mk := range map[string]func(t *testing.T) Timer{
		"timerfd": func(t *testing.T) Timer {
			tm, err := NewFDTimer()
			if err != nil {
				t.Fatal(err)
			}
			return tm
		},
		"runtime": func(*testing.T) Timer { return NewRuntimeTimer() },
	} {
		t.Run(name, func(t *testing.T) {
			tm := mk(t)
			t.Cleanup(tm.Stop)
			fired := func(within time.Duration) bool {
				select {
				case <-tm.C():
					return true
				case <-time.After(within):
					return false
				}
			}

			start := time.Now()
			tm.Reset(30 * time.Millisecond)
			if !fired(5 * time.Second) {
				t.Fatal("a 30ms timer did not fire")
			}
			if e := time.Since(start); e < 30*time.Millisecond {
				t.Fatalf("fired after %s, before its 30ms", e)
			}

			tm.Reset(time.Hour)
			tm.Reset(0)
			if !fired(5 * time.Second) {
				t.Fatal("a reset to 0 did not fire at once")
			}

			tm.Reset(10 * time.Millisecond)
			tm.Reset(time.Hour) // replaces the 10ms
			if fired(100 * time.Millisecond) {
				t.Fatal("a replaced setting fired")
			}

			// An expiry not taken before a reset is stale.
			tm.Reset(time.Millisecond)
			time.Sleep(20 * time.Millisecond)
			tm.Reset(time.Hour)
			if fired(50 * time.Millisecond) {
				t.Fatal("an expiry from before the reset was delivered")
			}
		})
	}
}

package vrrp

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// SetProcessRealtime puts every thread of this process under SCHED_RR at
// prio (keepalived's vrrp_rt_priority). Threads made later inherit it
// from the thread that makes them.
//
// The whole process, not VRRP's goroutines alone: the Go runtime hands an
// advert's arrival or a timer's expiry to whichever thread is waiting in
// its poller, and only then to the goroutine that takes it. A VRRP
// goroutine locked to a SCHED_RR thread still waited for that ordinary
// thread, which a saturated host may not run for tens of milliseconds
// (measured: false takeovers at 10 ms adverts with both cores busy).
// keepalived gives the priority to its whole VRRP process for the same
// reason; directord's VRRP shares its process with the checks and the load
// balancer, which the kernel's limit on realtime time (95 % by default)
// keeps from taking a whole core for ever.
func SetProcessRealtime(prio int) error {
	if prio < 1 || prio > 99 {
		return fmt.Errorf("realtime priority %d: want 1 to 99", prio)
	}
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_RR, Priority: uint32(prio)}
	// A thread may be made while the list is read: go round until a pass
	// finds every thread set already.
	for pass := 0; pass < 10; pass++ {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("realtime priority: %w", err)
		}
		changed := false
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			cur, err := unix.SchedGetAttr(tid, 0)
			if err != nil {
				continue // gone
			}
			if cur.Policy == unix.SCHED_RR && cur.Priority == uint32(prio) {
				continue
			}
			if err := unix.SchedSetAttr(tid, &attr, 0); err != nil {
				if err == unix.ESRCH {
					continue
				}
				return fmt.Errorf("realtime priority %d for thread %d: %w", prio, tid, err)
			}
			changed = true
		}
		if !changed {
			return nil
		}
	}
	return fmt.Errorf("realtime priority %d: threads kept appearing", prio)
}

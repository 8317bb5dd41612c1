package main

import (
	"cmp"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

// cpuResult is the CPU time of each director of a settled pair over a
// window, its whole process tree (keepalived's VRRP child included).
type cpuResult struct {
	master, backup             time.Duration
	masterSwitch, backupSwitch int64 // context switches, every thread
	adverts                    int   // adverts the master sent in the window (interval-based)
}

// cpuWindows is how many windows each CPU median comes from.
const cpuWindows = 5

// cpuRun settles a pair of im at interval and measures what each director
// spends over cpuWindows windows of d (user + system time of the process
// tree, every thread), returning the median window by pair total.
func cpuRun(bins scene.Binaries, im impl, interval, d time.Duration) (cpuResult, error) {
	p, _, _, stop, err := startScene(bins, im, interval, 0)
	if err != nil {
		return cpuResult{}, err
	}
	defer stop()
	var windows []cpuResult
	for range cpuWindows {
		m0, ms0 := treeCPU(p.Procs[p.LB1])
		b0, bs0 := treeCPU(p.Procs[p.LB2])
		time.Sleep(d)
		m1, ms1 := treeCPU(p.Procs[p.LB1])
		b1, bs1 := treeCPU(p.Procs[p.LB2])
		if !scene.HasAddr(p.LB1, scene.VIP) || scene.HasAddr(p.LB2, scene.VIP) {
			return cpuResult{}, fmt.Errorf("the pair did not stay settled during the CPU window")
		}
		windows = append(windows, cpuResult{master: m1 - m0, backup: b1 - b0, masterSwitch: ms1 - ms0, backupSwitch: bs1 - bs0, adverts: int(d / interval)})
	}
	// A clean stop, so that a DIRECTORD_CPUPROFILE is written.
	for _, h := range p.Directors() {
		_ = p.Procs[h].Signal(syscall.SIGTERM)
		_, _ = p.Procs[h].Wait(10 * time.Second)
	}
	slices.SortFunc(windows, func(a, b cpuResult) int { return cmp.Compare(a.master+a.backup, b.master+b.backup) })
	return windows[len(windows)/2], nil
}

// treeCPU sums the time on CPU (schedstat: nanoseconds, every thread) of a
// process and every live descendant, and the times their threads were
// switched out.
func treeCPU(p *lab.Process) (time.Duration, int64) {
	var total time.Duration
	var switches int64
	for _, t := range treeTasks(p) {
		b, err := os.ReadFile(filepath.Join(t, "schedstat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			total += time.Duration(ns)
		}
		// The third field: timeslices run, one per switch in.
		if len(f) > 2 {
			n, _ := strconv.ParseInt(f[2], 10, 64)
			switches += n
		}
	}
	return total, switches
}

// treeRealtime counts the threads of p's process tree running SCHED_RR
// at prio, of all its threads.
func treeRealtime(p *lab.Process, prio int) (rr, all int) {
	for _, t := range treeTasks(p) {
		b, err := os.ReadFile(filepath.Join(t, "stat"))
		if err != nil {
			continue
		}
		all++
		s := string(b)
		// Fields 40 and 41 (rt_priority, policy; 2 is SCHED_RR), counted
		// after the name.
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]); len(f) > 38 && f[37] == strconv.Itoa(prio) && f[38] == "2" {
			rr++
		}
	}
	return rr, all
}

// treeTasks are the /proc task directories of every thread of p and of
// its live descendants.
func treeTasks(p *lab.Process) []string {
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name may hold spaces: fields start after ')'.
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], pid)
	}
	var tasks []string
	var walk func(int)
	walk = func(pid int) {
		ts, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
		tasks = append(tasks, ts...)
		for _, c := range children[pid] {
			walk(c)
		}
	}
	walk(p.Pid())
	return tasks
}

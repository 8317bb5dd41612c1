package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/directord/directord/internal/config"
)

// processTrack is the name a [[vrrp_track_process]] is reported to VRRP
// under, among the tracked scripts (script names cannot hold ':').
func processTrack(name string) string { return "process:" + name }

// trackProcesses counts the processes of each [[vrrp_track_process]]
// every interval and reports up (between quorum and quorum_max) or down
// to VRRP, a fall only after it lasted delay: keepalived's
// vrrp_track_process. keepalived hears process events from the kernel's
// proc connector; this reads /proc, so a death is seen within interval.
func (d *Daemon) trackProcesses(ctx context.Context, proc string) error {
	downSince := map[string]time.Time{}
	reported := map[string]bool{}
	for {
		defs := d.config().TrackProcesses
		wait := time.Minute
		if len(defs) > 0 {
			counts := countProcesses(proc, defs)
			now := time.Now()
			for _, def := range defs {
				n := counts[def.Name]
				up := n >= def.Quorum && (def.QuorumMax == 0 || n <= def.QuorumMax)
				if up {
					delete(downSince, def.Name)
				} else if _, ok := downSince[def.Name]; !ok {
					downSince[def.Name] = now
				}
				report := up || now.Sub(downSince[def.Name]) >= def.Delay
				if !report {
					wait = min(wait, def.Delay-now.Sub(downSince[def.Name]))
				}
				if report {
					if was, ok := reported[def.Name]; !ok || was != up {
						d.log.Info("vrrp_track_process", "name", def.Name, "process", def.Process, "running", n, "up", up)
						reported[def.Name] = up
					}
					d.vrrp.SetScript(processTrack(def.Name), up)
				}
				wait = min(wait, def.Interval)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(max(wait, 10*time.Millisecond)):
		}
	}
}

// countProcesses counts, for each definition, the live processes under
// proc (/proc) that it names: by the kernel's command name (15 bytes at
// most), or, for a name with a '/', by the program path they were started
// with.
func countProcesses(proc string, defs []config.TrackProcessDef) map[string]int {
	counts := make(map[string]int, len(defs))
	ents, err := os.ReadDir(proc)
	if err != nil {
		return counts
	}
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(proc, e.Name(), "comm"))
		if err != nil {
			continue // gone meanwhile
		}
		comm = bytes.TrimSuffix(comm, []byte("\n"))
		var argv0 []byte
		for _, def := range defs {
			match := false
			if bytes.IndexByte([]byte(def.Process), '/') >= 0 {
				if argv0 == nil {
					cmd, _ := os.ReadFile(filepath.Join(proc, e.Name(), "cmdline"))
					argv0, _, _ = bytes.Cut(cmd, []byte{0})
				}
				match = string(argv0) == def.Process
			} else {
				name := def.Process
				if len(name) > 15 {
					name = name[:15] // the kernel keeps 15 bytes of it
				}
				match = string(comm) == name
			}
			if match && !zombie(proc, e.Name()) {
				counts[def.Name]++
			}
		}
	}
	return counts
}

// zombie: the process has exited and waits for its parent.
func zombie(proc, pid string) bool {
	b, err := os.ReadFile(filepath.Join(proc, pid, "stat"))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z'
}

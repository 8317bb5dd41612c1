package daemon

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"
)

// trackFiles reads the [[vrrp_track_file]]s every interval and reports
// their numbers to VRRP: keepalived's vrrp_track_file. A file that is
// missing or does not hold a number counts as 0, which is logged once
// until it changes.
func (d *Daemon) trackFiles(ctx context.Context, interval time.Duration) error {
	problems := map[string]string{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for _, f := range d.config().TrackFiles {
			v, problem := readTrackFile(f.File)
			if problem != problems[f.Name] {
				if problem != "" {
					d.log.Warn("vrrp_track_file counts as 0", "name", f.Name, "file", f.File, "problem", problem)
				}
				problems[f.Name] = problem
			}
			d.vrrp.SetFile(f.Name, v)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// readTrackFile is the number at the start of path, or 0 and why not.
func readTrackFile(path string) (int, string) {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, "no such file"
	case err != nil:
		return 0, err.Error()
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0, "empty"
	}
	n, err := strconv.Atoi(fields[0])
	if err != nil {
		return 0, "not a number: " + fields[0]
	}
	return n, ""
}

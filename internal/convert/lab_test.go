package convert_test

import (
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/directord/directord/internal/testbed/lab"
)

// The test files are keepalived's own syntax: keepalived 2.2.7 reads each
// one without an error or an unknown keyword, on a host that has their
// interfaces (the directord side of the lab runs are in the e2e and
// guest tests).
func TestKeepalivedReadsTestdata(t *testing.T) {
	lab.Require(t, "keepalived")
	l := lab.New(t)
	h := l.AddHost("lb1")
	front, back := l.AddSwitch("front"), l.AddSwitch("back")
	front.Plug(h, "eth0", "192.0.2.11/24")
	back.Plug(h, "eth1", "203.0.113.1/24")
	files, _ := filepath.Glob(filepath.Join("testdata", "*.conf"))
	bad := regexp.MustCompile(`(?i)unknown keyword|error|invalid|not a valid|expected`)
	for _, f := range files {
		if filepath.Base(f) == "broken.conf" {
			continue // keepalived has its own words for what is wrong there
		}
		abs, _ := filepath.Abs(f)
		out, err := h.Command("keepalived", "-t", "-f", abs, "-i", "lb1", "-l").CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !(isExit(err, &ee) && ee.ExitCode() == 0) {
			t.Errorf("keepalived -t %s: %v\n%s", f, err, out)
			continue
		}
		if m := bad.Find(out); m != nil {
			t.Errorf("keepalived -t %s says %q:\n%s", f, m, out)
		}
	}
}

func isExit(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	*ee = e
	return ok
}

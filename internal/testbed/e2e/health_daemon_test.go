package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"

	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

const (
	hcInterval = 200 * time.Millisecond
	hcTimeout  = 100 * time.Millisecond
	hcRise     = 3
	hcFall     = 2
)

func healthConfig(dir, notify string) string {
	return conf.File{
		Node: conf.Node{Name: "dir", DataDir: filepath.Join(dir, "data"), StatusSocket: filepath.Join(dir, "directord.sock")},
		VirtualServers: []conf.VirtualServer{{Name: "web", Address: "192.0.2.100:80", Scheduler: "rr", Reals: realServers(1, 1, 1),
			Check: &conf.Check{Type: "tcp", Interval: hcInterval.String(), Timeout: hcTimeout.String(), Extra: []string{
				fmt.Sprintf("rise = %d", hcRise), fmt.Sprintf("fall = %d", hcFall), `warmup = "0s"`,
				fmt.Sprintf("notify_up = [%q, \"up\"]", notify), fmt.Sprintf("notify_down = [%q, \"down\"]", notify)}}}},
	}.String()
}

func healthStatus(t *testing.T, sock string) map[string]api.CheckStatus {
	t.Helper()
	m, err := readHealth(sock)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func readHealth(sock string) (map[string]api.CheckStatus, error) {
	out, err := exec.Command(directorctl, "--socket", sock, "status", "--json").Output()
	if err != nil {
		return nil, fmt.Errorf("directorctl status --json: %v", err)
	}
	var doc struct{ Health api.HealthStatus }
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, err
	}
	m := map[string]api.CheckStatus{}
	for _, c := range doc.Health.Checks {
		m[c.ID.Real.String()] = c
	}
	return m, nil
}

// inTable reports whether the real server at addr is in web's table.
func inTable(t *testing.T, sock, addr string) bool {
	web := findService(lvsStatus(t, sock), "web")
	if web == nil {
		return false
	}
	for _, r := range web.Reals {
		if r.Addr.String() == addr {
			return true
		}
	}
	return false
}

// TestDaemonHealthChecks: three real servers behind the VIP; one stops
// listening and is out within interval x fall + timeout; it comes back
// after rise good checks; a server flapping every interval stays out.
func TestDaemonHealthChecks(t *testing.T) {
	lab.Require(t, "nft")
	l := lab.New(t)
	s := scene.NewLVS(l, 3)
	dir := t.TempDir()
	file, sock := filepath.Join(dir, "directord.toml"), filepath.Join(dir, "directord.sock")
	notify, notes := filepath.Join(dir, "notify"), filepath.Join(dir, "notes")
	writeFile(t, notify, "#!/bin/sh\necho \"$@\" >> "+notes+"\n")
	if err := os.Chmod(notify, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, file, healthConfig(dir, notify))
	d := s.Director.Start(directord, "-c", file)
	rs2, rs3 := fmt.Sprintf("%s:%d", scene.RealAddr(1), scene.TCPPort), fmt.Sprintf("%s:%d", scene.RealAddr(2), scene.TCPPort)
	if err := lab.Eventually(10*time.Second, func() error {
		if d.Exited() {
			return errors.New("directord exited")
		}
		st, err := readHealth(sock)
		if err != nil {
			return err
		}
		if len(st) != 3 || st[rs2].Checks < 2 {
			return fmt.Errorf("checks not running: %+v", st)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.Output())
	}

	// rs2 stops listening: out of the table within interval x fall +
	// timeout (the deadline adds one interval for the phase of the first
	// failed check, and half a second for the machine).
	bound := hcInterval*hcFall + hcTimeout
	stopped := time.Now()
	s.Stop(s.Reals[1])
	if err := lab.Eventually(bound+hcInterval+500*time.Millisecond, func() error {
		if inTable(t, sock, rs2) {
			return errors.New("rs2 still in the table")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v after %s (bound %s)\n%s", err, time.Since(stopped), bound, d.Output())
	}
	t.Logf("rs2 out %s after its listener stopped (interval x fall + timeout = %s)", time.Since(stopped).Round(time.Millisecond), bound)
	for range 12 {
		name, err := s.Ask("", "192.0.2.100:80")
		if err != nil || name == "rs2" {
			t.Fatalf("new connection with rs2 out: %q, %v", name, err)
		}
	}
	st := healthStatus(t, sock)[rs2]
	if st.Up || st.Transitions != 1 || !strings.Contains(st.LastError, "refused") {
		t.Fatalf("rs2's status: %+v", st)
	}
	if !strings.Contains(d.Output(), `msg="real server down"`) {
		t.Fatalf("no transition in the log:\n%s", d.Output())
	}

	out, err := exec.Command(directorctl, "--socket", sock, "status").CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?m)^web\s+`+regexp.QuoteMeta(rs2)+`\s+DOWN\s.*tcp .*failed.*refused`).Match(out) {
		t.Fatalf("directorctl status does not show rs2 down: %v\n%s", err, out)
	}
	t.Logf("directorctl status:\n%s", out)

	// notify_down ran with the service and the server.
	wantNotes := func(want string) {
		t.Helper()
		if err := lab.Eventually(5*time.Second, func() error {
			b, _ := os.ReadFile(notes)
			if string(b) != want {
				return fmt.Errorf("notify programs wrote %q, want %q", b, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	wantNotes("down web " + rs2 + "\n")

	// rs2 listens again: back after rise good checks.
	s.Serve(s.Reals[1])
	if err := lab.Eventually(hcInterval*(hcRise+1)+time.Second, func() error {
		if !inTable(t, sock, rs2) {
			return errors.New("rs2 not back")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantNotes("down web " + rs2 + "\nup web " + rs2 + "\n")
	got := tally(t, 30, func() (string, error) { return s.Ask("", "192.0.2.100:80") })
	if got["rs1"] != 10 || got["rs2"] != 10 || got["rs3"] != 10 {
		t.Fatalf("after rs2 came back: %v", got)
	}

	// rs3 goes down, then flaps: its listener toggles every interval,
	// so no rise good checks come in a row and it stays out.
	s.Stop(s.Reals[2])
	if err := lab.Eventually(bound+hcInterval+500*time.Millisecond, func() error {
		if inTable(t, sock, rs3) {
			return errors.New("rs3 still in the table")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	before := healthStatus(t, sock)[rs3]
	tick := time.NewTicker(hcInterval)
	defer tick.Stop()
	listening := false
	for range 15 {
		<-tick.C
		if listening {
			s.Stop(s.Reals[2])
		} else {
			s.Serve(s.Reals[2])
		}
		listening = !listening
		if inTable(t, sock, rs3) {
			t.Fatalf("the flapping server was let back in: %+v", healthStatus(t, sock)[rs3])
		}
	}
	after := healthStatus(t, sock)[rs3]
	if after.Up || after.Transitions != before.Transitions || after.Checks < before.Checks+10 {
		t.Fatalf("flapping rs3: before %+v, after %+v", before, after)
	}
	if after.Failures == before.Failures || after.Failures == after.Checks {
		t.Fatalf("the flapping server's checks did not alternate: %+v", after)
	}
}

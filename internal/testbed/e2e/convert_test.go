package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

// The pair's keepalived.conf (internal/convert/testdata/pair.conf, one
// file for both with @lb1 lines, $VARs and an include) converted by
// directorctl convert for each director, then run: lb1 masters both
// instances of its sync group, clients reach the real servers through
// the VIP, and when lb1 dies lb2 takes both addresses and serves.
func TestConvertedPairRuns(t *testing.T) {
	lab.Require(t, "nft")
	l := lab.New(t)
	s := scene.NewLVS(l, 2)
	lb1 := s.Director
	lb2 := l.AddHost("lb2")
	s.Front.Plug(lb2, "eth0", "192.0.2.12/24")
	s.Back.Plug(lb2, "eth1", "203.0.113.2/24")
	s.Sysctl(lb2, "net/ipv4/ip_forward", "1")
	for _, rs := range s.Reals {
		// The gateway is the pair's inside VIP, so that replies follow
		// the master.
		rs.MustRun("ip", "route", "replace", "default", "via", "203.0.113.254")
	}
	dir := t.TempDir()
	conf := repoFile("internal", "convert", "testdata", "pair.conf")
	socks := map[*lab.Host]string{}
	procs := map[*lab.Host]*lab.Process{}
	for _, h := range []*lab.Host{lb1, lb2} {
		id := map[*lab.Host]string{lb1: "lb1", lb2: "lb2"}[h]
		out, err := exec.Command(directorctl, "convert", "--config-id", id, conf).Output()
		if err != nil {
			t.Fatalf("convert for %s: %v\n%s", id, err, out)
		}
		// Each director of the lab keeps its state and socket apart.
		hd := filepath.Join(dir, id)
		socks[h] = filepath.Join(hd, "directord.sock")
		text := strings.Replace(string(out), "[node]\n", fmt.Sprintf("[node]\ndata_dir = %q\nstatus_socket = %q\n", filepath.Join(hd, "data"), socks[h]), 1)
		file := filepath.Join(dir, id+".toml")
		writeFile(t, file, text)
		if out, err := exec.Command(directord, "-t", "-c", file).CombinedOutput(); err != nil {
			t.Fatalf("directord -t on %s's converted file: %v\n%s\n%s", id, err, out, text)
		}
		procs[h] = h.Start(directord, "-c", file)
	}
	states := func(h *lab.Host) (map[string]string, error) {
		out, err := exec.Command(directorctl, "--socket", socks[h], "status", "--json").Output()
		if err != nil {
			return nil, fmt.Errorf("%s: %v", h.Name, err)
		}
		var doc struct{ VRRP api.VRRPStatus }
		if err := json.Unmarshal(out, &doc); err != nil {
			return nil, err
		}
		m := map[string]string{}
		for _, in := range doc.VRRP.Instances {
			m[in.Name] = in.State
		}
		return m, nil
	}
	want := func(h *lab.Host, state string) error {
		m, err := states(h)
		if err != nil {
			return err
		}
		if m["VI_OUT"] != state || m["VI_IN"] != state {
			return fmt.Errorf("%s: %v, want both %s", h.Name, m, state)
		}
		return nil
	}
	if err := lab.Eventually(15*time.Second, func() error {
		if err := want(lb1, api.StateMaster); err != nil {
			return err
		}
		return want(lb2, api.StateBackup)
	}); err != nil {
		t.Fatalf("%v\nlb1:\n%s\nlb2:\n%s", err, procs[lb1].Output(), procs[lb2].Output())
	}
	serve := func() error {
		got := tally(t, 10, func() (string, error) { return s.Ask("", "192.0.2.200:80") })
		if got["rs1"] == 0 || got["rs2"] == 0 {
			return fmt.Errorf("answers through the VIP: %v", got)
		}
		return nil
	}
	if err := lab.Eventually(10*time.Second, serve); err != nil {
		t.Fatalf("%v\n%s", err, procs[lb1].Output())
	}

	procs[lb1].Kill()
	if err := lab.Eventually(10*time.Second, func() error { return want(lb2, api.StateMaster) }); err != nil {
		t.Fatalf("%v\n%s", err, procs[lb2].Output())
	}
	if err := lab.Eventually(10*time.Second, serve); err != nil {
		t.Fatalf("after the failover: %v\n%s", err, procs[lb2].Output())
	}
	if procs[lb2].Exited() {
		t.Fatal(errors.New("lb2's directord exited"))
	}
}

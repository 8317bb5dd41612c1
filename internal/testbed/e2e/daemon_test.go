package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
)

func TestConfigCheck(t *testing.T) {
	out, errOut, code := run(t, directord, "-t", "-c", repoFile("etc", "directord.toml"))
	if code != 0 {
		t.Fatalf("directord -t on etc/directord.toml: exit %d\n%s%s", code, out, errOut)
	}

	bad := filepath.Join(t.TempDir(), "bad.toml")
	writeFile(t, bad, `[node]
name = "lb1"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priorty = 150
virtual_ipaddress = ["192.0.2.100/24"]

[[vrrp_instance]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 51
virtual_ipaddress = ["192.0.2.301/24"]
`)
	_, errOut, code = run(t, directord, "-t", "-c", bad)
	if code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, errOut)
	}
	for _, want := range []string{
		bad + `:8: vrrp_instance.priorty: unknown key (did you mean "priority"?)`,
		bad + `:14: vrrp_instance[1].virtual_router_id: virtual_router_id 51 is already used on interface eth0 by instance "VI_1" (line 7)`,
		bad + `:15: vrrp_instance[1].virtual_ipaddress[0]: "192.0.2.301/24" is not an address in CIDR notation`,
		"directord: 3 problem(s) in the configuration",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("output lacks\n  %s\ngot:\n%s", want, errOut)
		}
	}
}

// daemonConfig is a VRRP-and-LVS file for host lb1 of the lab.
func daemonConfig(dir, extra string) string {
	return fmt.Sprintf(`[node]
name = "lb1"
data_dir = %q
status_socket = %q
metrics_listen = "192.0.2.11:9167"

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 150
advert_int = "1s"
virtual_ipaddress = ["192.0.2.100/24"]

[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
scheduler = "wrr"
  [[virtual_server.real_server]]
  address = "203.0.113.11:8080"
%s`, filepath.Join(dir, "data"), filepath.Join(dir, "directord.sock"), extra)
}

type statusDoc struct {
	APIVersion int `json:"api_version"`
	Node       struct {
		Name string `json:"name"`
		PID  int    `json:"pid"`
	} `json:"node"`
	Config struct {
		Generation    int `json:"generation"`
		ReloadsOK     int `json:"reloads_ok"`
		ReloadsFailed int `json:"reloads_failed"`
		LastReload    *struct {
			OK       bool     `json:"ok"`
			Problems []string `json:"problems"`
			Changes  *struct {
				VRRP struct {
					Added []string `json:"added"`
				} `json:"vrrp_instance"`
			} `json:"changes"`
		} `json:"last_reload"`
	} `json:"config"`
}

func statusJSON(socket string) (*statusDoc, error) {
	cmd := exec.Command(directorctl, "--socket", socket, "status", "--json")
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("directorctl status --json: %v", err)
	}
	var doc statusDoc
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("decode %q: %v", out, err)
	}
	return &doc, nil
}

func TestDaemonLifecycle(t *testing.T) {
	l := lab.New(t)
	sw := l.AddSwitch("sw")
	lb1 := l.AddHost("lb1")
	sw.Plug(lb1, "eth0", "192.0.2.11/24")

	dir := t.TempDir()
	file := filepath.Join(dir, "directord.toml")
	socket := filepath.Join(dir, "directord.sock")
	writeFile(t, file, daemonConfig(dir, ""))

	d := lb1.Start(directord, "-c", file)
	var doc *statusDoc
	if err := lab.Eventually(10*time.Second, func() (err error) {
		if d.Exited() {
			return errors.New("directord exited")
		}
		doc, err = statusJSON(socket)
		return err
	}); err != nil {
		t.Fatalf("daemon never answered: %v\n%s", err, d.Output())
	}
	if doc.APIVersion != 1 || doc.Node.Name != "lb1" || doc.Node.PID != d.Pid() || doc.Config.Generation != 1 {
		t.Fatalf("status document: %+v", doc)
	}

	t.Run("status socket is 0600 root", func(t *testing.T) {
		fi, err := os.Stat(socket)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o600 || st.Uid != 0 || st.Gid != 0 || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("socket mode %v uid %d gid %d", fi.Mode(), st.Uid, st.Gid)
		}
	})

	t.Run("directorctl status prints tables", func(t *testing.T) {
		out, errOut, code := run(t, directorctl, "--socket", socket, "status")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{"directord lb1", "generation 1", "0 ok, 0 failed", "1 vrrp instance(s), 1 virtual server(s), cluster none"} {
			if !strings.Contains(out, want) {
				t.Errorf("status lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("a second daemon on the same socket is refused", func(t *testing.T) {
		second := lb1.Start(directord, "-c", file)
		code, err := second.Wait(10 * time.Second)
		if err != nil || code != 1 || !strings.Contains(second.Output(), "another directord is answering") {
			t.Fatalf("second daemon: code %d err %v\n%s", code, err, second.Output())
		}
	})

	t.Run("metrics", func(t *testing.T) {
		var body string
		if err := lb1.Do(func() error {
			// Dial here: http.Transport would dial from another thread,
			// outside the host's namespace.
			conn, err := net.Dial("tcp", "192.0.2.11:9167")
			if err != nil {
				return err
			}
			client := &http.Client{Transport: &http.Transport{
				DialContext: func(context.Context, string, string) (net.Conn, error) { return conn, nil },
			}}
			resp, err := client.Get("http://192.0.2.11:9167/metrics")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			body = string(b)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"directord_config_generation 1", `directord_config_reloads_total{result="failed"} 0`, "directord_build_info{"} {
			if !strings.Contains(body, want) {
				t.Errorf("metrics lack %q", want)
			}
		}
	})

	t.Run("SIGHUP with a broken file keeps the old config", func(t *testing.T) {
		writeFile(t, file, daemonConfig(dir, "  wieght = 2\n"))
		if err := d.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := lab.Eventually(5*time.Second, func() (err error) {
			doc, err = statusJSON(socket)
			if err == nil && doc.Config.ReloadsFailed != 1 {
				err = fmt.Errorf("reloads_failed = %d", doc.Config.ReloadsFailed)
			}
			return err
		}); err != nil {
			t.Fatalf("%v\n%s", err, d.Output())
		}
		if d.Exited() || doc.Config.Generation != 1 || doc.Config.LastReload.OK ||
			!strings.Contains(strings.Join(doc.Config.LastReload.Problems, "\n"), ":21: virtual_server.real_server.wieght: unknown key") {
			t.Fatalf("after a broken reload: exited %v, %+v", d.Exited(), doc.Config)
		}
		out, _, _ := run(t, directorctl, "--socket", socket, "status")
		if !strings.Contains(out, "REJECTED (running configuration unchanged)") {
			t.Errorf("status does not show the rejected reload:\n%s", out)
		}
		// The same through directorctl reload: exit 1 with the problem.
		_, errOut, code := run(t, directorctl, "--socket", socket, "reload")
		if code != 1 || !strings.Contains(errOut, "configuration rejected") || !strings.Contains(errOut, "wieght") {
			t.Fatalf("directorctl reload: exit %d: %s", code, errOut)
		}
	})

	t.Run("SIGHUP with a valid file applies the diff", func(t *testing.T) {
		writeFile(t, file, daemonConfig(dir, `
[[vrrp_instance]]
name = "VI_2"
interface = "eth0"
virtual_router_id = 52
virtual_ipaddress = ["192.0.2.101/24"]
`))
		if err := d.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if err := lab.Eventually(5*time.Second, func() (err error) {
			doc, err = statusJSON(socket)
			if err == nil && doc.Config.Generation != 2 {
				err = fmt.Errorf("generation = %d", doc.Config.Generation)
			}
			return err
		}); err != nil {
			t.Fatalf("%v\n%s", err, d.Output())
		}
		if lr := doc.Config.LastReload; !lr.OK || lr.Changes == nil || len(lr.Changes.VRRP.Added) != 1 || lr.Changes.VRRP.Added[0] != "VI_2" {
			t.Fatalf("last reload: %+v", lr)
		}
		out, _, code := run(t, directorctl, "--socket", socket, "reload")
		if code != 0 || !strings.Contains(out, "reloaded: no change") {
			t.Fatalf("directorctl reload of an unchanged file: exit %d: %s", code, out)
		}
	})

	t.Run("SIGTERM exits 0 within a second", func(t *testing.T) {
		start := time.Now()
		if err := d.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		code, err := d.Wait(time.Second)
		if err != nil || code != 0 {
			t.Fatalf("exit code %d, err %v\n%s", code, err, d.Output())
		}
		t.Logf("stopped in %s", time.Since(start))
		if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("status socket left behind: %v", err)
		}
		_, errOut, code := run(t, directorctl, "--socket", socket, "status")
		if code != 3 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "directord is not running") {
			t.Fatalf("directorctl against a stopped daemon: exit %d: %q", code, errOut)
		}
	})

	t.Run("a stale socket after kill -9 is replaced", func(t *testing.T) {
		d := lb1.Start(directord, "-c", file)
		if err := lab.Eventually(10*time.Second, func() error { _, err := statusJSON(socket); return err }); err != nil {
			t.Fatal(err)
		}
		d.Kill()
		if _, err := os.Stat(socket); err != nil {
			t.Fatalf("kill -9 should leave the socket behind: %v", err)
		}
		d2 := lb1.Start(directord, "-c", file)
		if err := lab.Eventually(10*time.Second, func() error {
			doc, err := statusJSON(socket)
			if err == nil && doc.Node.PID != d2.Pid() {
				err = fmt.Errorf("pid %d answers, want %d", doc.Node.PID, d2.Pid())
			}
			return err
		}); err != nil {
			t.Fatalf("%v\n%s", err, d2.Output())
		}
	})
}

// TestNotRoot: without the capabilities the daemon says what is missing.
func TestNotRoot(t *testing.T) {
	lab.Require(t, "setpriv")
	// t.TempDir's parent is private to root; nobody must read the file.
	dir, err := os.MkdirTemp("", "directord-notroot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "directord.toml")
	writeFile(t, file, daemonConfig(dir, ""))
	_, errOut, code := run(t, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", directord, "-c", file)
	if code != 1 || !strings.Contains(errOut, "directord needs CAP_NET_ADMIN and CAP_NET_RAW") || !strings.Contains(errOut, "run it as root") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
}

// TestExampleConfigRuns starts the shipped etc/directord.toml unchanged in a
// lab host. Its default paths (/run/directord, /var/lib/directord) are
// covered by tmpfs in the daemon's private mount namespace (ip netns exec
// makes one), so the machine running the test is not touched; directorctl
// joins that namespace with nsenter and uses its default socket path.
func TestExampleConfigRuns(t *testing.T) {
	lab.Require(t, "nsenter")
	l := lab.New(t)
	sw := l.AddSwitch("sw")
	lb1 := l.AddHost("lb1")
	sw.Plug(lb1, "eth0", "192.0.2.11/24")

	d := lb1.Start("sh", "-c", `mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib && exec "$0" -c "$1"`,
		directord, repoFile("etc", "directord.toml"))
	ctl := func(args ...string) (string, error) {
		pid := fmt.Sprint(d.Pid())
		out, err := exec.Command("nsenter", append([]string{"-t", pid, "-m", "-n", directorctl}, args...)...).CombinedOutput()
		return string(out), err
	}
	var out string
	if err := lab.Eventually(10*time.Second, func() (err error) {
		if d.Exited() {
			return errors.New("directord exited")
		}
		out, err = ctl("status")
		return err
	}); err != nil {
		t.Fatalf("%v: %s\n%s", err, out, d.Output())
	}
	// [cluster] ships commented out: it needs keys made for the site.
	if !strings.Contains(out, "directord lb1") || !strings.Contains(out, "1 vrrp instance(s), 1 virtual server(s), cluster none") {
		t.Fatalf("status:\n%s", out)
	}
	if out, err := ctl("status", "--json"); err != nil || !strings.Contains(out, `"api_version": 1`) {
		t.Fatalf("status --json: %v: %s", err, out)
	}
	if err := d.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, err := d.Wait(time.Second); err != nil || code != 0 {
		t.Fatalf("SIGTERM: exit %d, %v\n%s", code, err, d.Output())
	}
}

// TestDemo runs the README's first command's program and checks that it
// succeeds, shows a takeover, and leaves no namespace behind.
// TestDemo runs make demo's program to the end, and once more stopped
// with Ctrl-C half-way: it must leave no namespace behind either way.
func TestDemo(t *testing.T) {
	lab.Require(t, "ping", "nft")
	demo := filepath.Join(t.TempDir(), "demo")
	build := exec.Command("go", "build", "-o", demo, "./internal/demo")
	build.Dir = repoFile()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the demo: %v\n%s", err, out)
	}
	bin := filepath.Dir(directord)
	t.Run("to the end", func(t *testing.T) {
		start := time.Now()
		out, err := exec.Command(demo, "-bin", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("demo: %v\n%s", err, out)
		}
		text := string(out)
		for _, want := range []string{
			"lb1 (priority 150) is MASTER", "directorctl lvs on lb2", "w     witness   alive",
			"ok   sync   conntrack sync connected", "handover: the probe went unanswered for", "back: the probe went unanswered",
			"lb2 is MASTER", "after the crash; the client saw no answer for",
			"20 of 20 long-lived connections survived the crash", "the real servers saw 0 connections end in an error",
			"configuration rejected", "w: directord exited with code 0", "removing the lab",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("demo output lacks %q", want)
			}
		}
		if m := regexp.MustCompile(`HTTP answers so far: rs1 \d+, rs2 \d+, rs3 \d+; failed (\d+)`).FindAllStringSubmatch(text, -1); len(m) != 3 {
			t.Errorf("demo output lacks the client's HTTP counts:\n%s", text)
		}
		noneLeft(t, text)
		if took := time.Since(start); took > time.Minute {
			t.Errorf("the demo took %s, more than a minute", took)
		}
		t.Logf("the demo took %s", time.Since(start).Round(100*time.Millisecond))
	})
	t.Run("scale-out", func(t *testing.T) {
		lab.Require(t, "vtysh")
		out, err := exec.Command(demo, "-bin", bin, "-scaleout").CombinedOutput()
		if err != nil {
			t.Fatalf("demo -scaleout: %v\n%s", err, out)
		}
		text := string(out)
		for _, want := range []string{
			"one next hop per director", "nexthop via 192.0.2.11", "nexthop via 192.0.2.12", "nexthop via 192.0.2.13",
			"192.0.2.200/32  yes        web", "the router dropped d1 after", "the router dropped d2 after",
			"60 of 60 long-lived connections survived both", "the real servers saw 0 connections end in an error", "removing the lab",
		} {
			if !strings.Contains(text, want) {
				t.Errorf("demo -scaleout output lacks %q", want)
			}
		}
		for _, d := range []string{"d1", "d2", "d3"} {
			if regexp.MustCompile(d + ` forwarded: (nothing|packets 0 )`).MatchString(text) {
				t.Errorf("%s forwarded none of the connections:\n%s", d, text)
			}
		}
		noneLeft(t, text)
	})
	t.Run("interrupted", func(t *testing.T) {
		cmd := exec.Command(demo, "-bin", bin)
		var out lab.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if err := lab.Eventually(60*time.Second, func() error {
			if !strings.Contains(out.String(), "==> the client:") {
				return errors.New("the demo has not reached the client yet")
			}
			return nil
		}); err != nil {
			cmd.Process.Kill()
			t.Fatalf("%v\n%s", err, out.String())
		}
		cmd.Process.Signal(os.Interrupt)
		err := cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 130 {
			t.Fatalf("interrupted demo: %v\n%s", err, out.String())
		}
		if !strings.Contains(out.String(), "interrupted: removing the lab") {
			t.Fatalf("interrupted demo did not say so:\n%s", out.String())
		}
		noneLeft(t, out.String())
	})
}

// noneLeft checks that the lab named in a demo's output is gone.
func noneLeft(t *testing.T, text string) {
	t.Helper()
	m := regexp.MustCompile(`lab of network namespaces \((dl[0-9a-f]+-)\*\)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("demo did not name its lab:\n%s", text)
	}
	list, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(list), m[1]) {
		t.Fatalf("demo left namespaces behind:\n%s", list)
	}
}

// TestScriptWritableByNobody: directord -t refuses a track script that a
// user other than root could change, and so does a reload of the running
// daemon, which keeps its configuration.
func TestScriptWritableByNobody(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "check")
	writeFile(t, script, "#!/bin/sh\nexit 0\n")
	if err := os.Chmod(script, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(script, 65534, 65534); err != nil { // nobody
		t.Fatal(err)
	}
	file := filepath.Join(dir, "directord.toml")
	writeFile(t, file, daemonConfig(dir, fmt.Sprintf("\n[[vrrp_script]]\nname = \"chk\"\nscript = [%q]\n", script)))
	_, errOut, code := run(t, directord, "-t", "-c", file)
	if code == 0 || !strings.Contains(errOut, "vrrp_script[0].script: "+script+" is owned by uid 65534: a user other than root could change what directord runs") {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if err := os.Chown(script, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := run(t, directord, "-t", "-c", file); code != 0 {
		t.Fatalf("a root-owned script: exit %d: %s", code, errOut)
	}
}

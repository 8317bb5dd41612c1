// Command demo shows directord working in a lab of network namespaces on
// this machine and removes everything afterwards, also on Ctrl-C. Run it
// with sudo make demo.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/directord/directord/internal/lab"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding directord and directorctl")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(bin string) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("the demo builds network namespaces: run it as root (sudo make demo)")
	}
	directord, err := filepath.Abs(filepath.Join(bin, "directord"))
	if err != nil {
		return err
	}
	directorctl := filepath.Join(filepath.Dir(directord), "directorctl")

	l := lab.Open(func(f string, a ...any) { fmt.Printf(f+"\n", a...) })
	defer func() {
		step("removing the lab")
		l.Close()
		if r := recover(); r != nil {
			f, ok := r.(lab.Failure)
			if !ok {
				panic(r)
			}
			err = f
		}
	}()
	// Ctrl-C: clean up through the deferred Close, then exit.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigc
		fmt.Println("\ninterrupted: removing the lab")
		l.Close()
		os.Exit(130)
	}()

	dir, err := os.MkdirTemp("", "directord-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	socket := filepath.Join(dir, "directord.sock")
	file := filepath.Join(dir, "directord.toml")
	cfg := fmt.Sprintf(`[node]
name = "lb1"
data_dir = %q
status_socket = %q

[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = 150
advert_int = "1s"
virtual_ipaddress = ["192.0.2.100/24"]
`, filepath.Join(dir, "data"), socket)
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return err
	}

	step("building a lab: a switch and a director host lb1 (192.0.2.11) in network namespaces")
	sw := l.AddSwitch("sw")
	lb1 := l.AddHost("lb1")
	sw.Plug(lb1, "eth0", "192.0.2.11/24")

	step("checking the configuration: directord -t -c %s", file)
	show(exec.Command(directord, "-t", "-c", file))

	step("starting directord in lb1")
	d := lb1.Start(directord, "-c", file)
	ctl := func(args ...string) *exec.Cmd {
		return exec.Command(directorctl, append([]string{"--socket", socket}, args...)...)
	}
	if err := lab.Eventually(10*time.Second, func() error { return ctl("status").Run() }); err != nil {
		return fmt.Errorf("directord did not answer: %v\n%s", err, d.Output())
	}
	step("directorctl status")
	show(ctl("status"))

	step("breaking the file (a misspelt key) and reloading: the daemon keeps its configuration")
	broken := strings.Replace(cfg, "priority = 150", "priorty = 150", 1)
	if err := os.WriteFile(file, []byte(broken), 0o644); err != nil {
		return err
	}
	show(ctl("reload"))

	step("fixing the file and reloading")
	if err := os.WriteFile(file, []byte(strings.Replace(cfg, "priority = 150", "priority = 200", 1)), 0o644); err != nil {
		return err
	}
	show(ctl("reload"))

	step("stopping directord with SIGTERM")
	start := time.Now()
	if err := d.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	code, err := d.Wait(5 * time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("exited with code %d after %s\n", code, time.Since(start).Round(time.Millisecond))
	fmt.Printf("\ndirectord's log:\n%s", d.Output())
	show(ctl("status"))
	return nil
}

// show runs cmd and prints what it printed, indented.
func show(cmd *exec.Cmd) {
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("    " + line)
	}
	if err != nil {
		fmt.Printf("    (%v)\n", err)
	}
}

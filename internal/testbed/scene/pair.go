package scene

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/directord/directord/internal/api"

	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/vrrp"
)

// VIP is the virtual address the scene uses unless told otherwise.
const VIP = "192.0.2.100"

// Binaries are the built programs.
type Binaries struct{ Directord, Directorctl string }

// BinariesIn names the programs make build put in dir.
func BinariesIn(dir string) (Binaries, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Binaries{}, err
	}
	return Binaries{Directord: filepath.Join(abs, "directord"), Directorctl: filepath.Join(abs, "directorctl")}, nil
}

// Pair is the scene.
type Pair struct {
	Lab          *lab.Lab
	Switch       *lab.Switch
	Client       *lab.Host
	LB1, LB2     *lab.Host
	Port1, Port2 string // the directors' switch ports: down = cable cut
	Dir          string
	Bin          Binaries
	// Procs, Sockets and Files are per director: its daemon, status socket
	// and configuration file.
	Procs          map[*lab.Host]*lab.Process
	Sockets, Files map[*lab.Host]string
	// Realtime, when not 0, is the SCHED_RR priority of the files written
	// next: directord's realtime_priority, keepalived's vrrp_rt_priority.
	Realtime int
}

// NewPair builds the scene in l; files go under dir.
func NewPair(l *lab.Lab, dir string, bin Binaries) *Pair {
	p := &Pair{Lab: l, Switch: l.AddSwitch("sw"), Dir: dir, Bin: bin,
		Procs: map[*lab.Host]*lab.Process{}, Sockets: map[*lab.Host]string{}, Files: map[*lab.Host]string{}}
	p.Client, p.LB1, p.LB2 = l.AddHost("client"), l.AddHost("lb1"), l.AddHost("lb2")
	p.Switch.Plug(p.Client, "eth0", "192.0.2.50/24", "2001:db8::50/64")
	p.Port1 = p.Switch.Plug(p.LB1, "eth0", "192.0.2.11/24", "2001:db8::11/64")
	p.Port2 = p.Switch.Plug(p.LB2, "eth0", "192.0.2.12/24", "2001:db8::12/64")
	return p
}

// Directors returns lb1 and lb2.
func (p *Pair) Directors() []*lab.Host { return []*lab.Host{p.LB1, p.LB2} }

func (p *Pair) hostDir(name string) string {
	dir := filepath.Join(p.Dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		p.Lab.Fatalf("%v", err)
	}
	return dir
}

// WriteConfig writes h's directord file: one instance VI_1 (VRID 51) on
// eth0 at prio; extra lines go into the instance and replace the default
// virtual_ipaddress (the VIP) and advert_int (100ms) when they set them.
func (p *Pair) WriteConfig(h *lab.Host, prio int, extra string) {
	dir := p.hostDir(h.Name)
	p.Sockets[h] = filepath.Join(dir, "directord.sock")
	p.Files[h] = filepath.Join(dir, "directord.toml")
	var lines []string
	if extra = strings.TrimSpace(extra); extra != "" {
		lines = strings.Split(extra, "\n")
	}
	in := conf.Instance{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, Extra: lines}
	if !strings.Contains(extra, "advert_int") {
		in.AdvertInt = "100ms"
	}
	if !strings.Contains(extra, "virtual_ipaddress") {
		in.VIPs = []string{VIP + "/24"}
	}
	f := conf.File{Node: conf.Node{Name: h.Name, DataDir: filepath.Join(dir, "data"), StatusSocket: p.Sockets[h]}, VRRP: []conf.Instance{in}}
	if p.Realtime != 0 {
		f.Node.Extra = append(f.Node.Extra, fmt.Sprintf("realtime_priority = %d", p.Realtime))
	}
	if err := f.Write(p.Files[h]); err != nil {
		p.Lab.Fatalf("%v", err)
	}
}

// Start runs directord in h with the file WriteConfig wrote.
func (p *Pair) Start(h *lab.Host) *lab.Process {
	p.Procs[h] = h.Start(p.Bin.Directord, "-c", p.Files[h])
	return p.Procs[h]
}

// StartKeepalived runs Debian's keepalived (VRRP only) in h with the
// instance WriteConfig describes: VI_1, VRID 51, the VIP.
func (p *Pair) StartKeepalived(h *lab.Host, prio, version int, interval time.Duration) *lab.Process {
	return p.StartKeepalivedWith(h, prio, version, interval, "", "")
}

// StartKeepalivedWith is StartKeepalived with extra lines in the instance
// and extra blocks before it (vrrp_script ..., which keepalived needs
// defined before an instance names them).
func (p *Pair) StartKeepalivedWith(h *lab.Host, prio, version int, interval time.Duration, instance, blocks string) *lab.Process {
	dir := p.hostDir("keepalived-" + h.Name)
	file := filepath.Join(dir, "keepalived.conf")
	global := ""
	if p.Realtime != 0 {
		global = fmt.Sprintf("  vrrp_rt_priority %d\n", p.Realtime)
	}
	content := fmt.Sprintf(`global_defs {
  router_id %s
%s}
%s
vrrp_instance VI_1 {
  state BACKUP
  interface eth0
  virtual_router_id 51
  priority %d
  advert_int %g
  version %d
  virtual_ipaddress {
    %s/24
  }
%s
}
`, h.Name, global, blocks, prio, interval.Seconds(), version, VIP, instance)
	if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
		p.Lab.Fatalf("%v", err)
	}
	// Fresh pid files each start: a killed keepalived's children can linger
	// as zombies here, and keepalived takes a live pid as "already running".
	run, err := os.MkdirTemp(dir, "run")
	if err != nil {
		p.Lab.Fatalf("%v", err)
	}
	p.Procs[h] = h.Start("keepalived", "--vrrp", "--dont-fork", "--log-console", "--log-detail",
		"--use-file", file, "--pid", filepath.Join(run, "k.pid"), "--vrrp_pid", filepath.Join(run, "v.pid"))
	return p.Procs[h]
}

// Instance asks h's directord for its one VRRP instance.
func (p *Pair) Instance(h *lab.Host) (api.VRRPInstance, error) {
	out, err := exec.Command(p.Bin.Directorctl, "--socket", p.Sockets[h], "status", "--json").Output()
	if err != nil {
		return api.VRRPInstance{}, fmt.Errorf("%s: directorctl: %v", h.Name, err)
	}
	var doc struct {
		VRRP api.VRRPStatus `json:"vrrp"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return api.VRRPInstance{}, err
	}
	if len(doc.VRRP.Instances) != 1 {
		return api.VRRPInstance{}, fmt.Errorf("%s: %d instances", h.Name, len(doc.VRRP.Instances))
	}
	return doc.VRRP.Instances[0], nil
}

// WaitStates polls until each director is in its wanted state; a backup
// must also have heard a master, or it might still time out.
func (p *Pair) WaitStates(timeout time.Duration, want map[*lab.Host]vrrp.State) error {
	return lab.Eventually(timeout, func() error {
		for h, st := range want {
			in, err := p.Instance(h)
			if err != nil {
				return err
			}
			if in.State != st.String() {
				return fmt.Errorf("%s is %s, want %s", h.Name, in.State, st)
			}
			if st == vrrp.Backup && in.Master == "" {
				return fmt.Errorf("%s is a backup that has heard no master yet", h.Name)
			}
		}
		return nil
	})
}

// HasAddr reports whether h's eth0 holds addr.
func HasAddr(h *lab.Host, addr string) bool {
	out, _ := h.Run("ip", "-o", "addr", "show", "dev", "eth0")
	return strings.Contains(out, " "+addr+"/")
}

// WaitOwner polls until exactly h holds addr among the directors.
func (p *Pair) WaitOwner(h *lab.Host, addr string, timeout time.Duration) error {
	return lab.Eventually(timeout, func() error {
		for _, d := range p.Directors() {
			if has := HasAddr(d, addr); has != (d == h) {
				return fmt.Errorf("%s holds %s: %v", d.Name, addr, has)
			}
		}
		return nil
	})
}

// MAC is h's eth0 hardware address.
func MAC(h *lab.Host) string {
	out, _ := h.Run("cat", "/sys/class/net/eth0/address")
	return strings.TrimSpace(out)
}

// Neighbour is the client's link-layer address for addr, or "".
func (p *Pair) Neighbour(addr string) string {
	out, _ := p.Client.Run("ip", "neigh", "show", addr, "dev", "eth0")
	if f := strings.Fields(out); len(f) >= 3 && f[1] == "lladdr" {
		return f[2]
	}
	return ""
}

// Crash cuts h's cable, then kills every process of h: the host dies.
// The cable goes first, as in a power loss: a process killed one after
// another could otherwise say goodbye (keepalived's VRRP child gets
// SIGTERM when its parent dies and sends priority 0), which would make
// the crash a graceful stop.
func (p *Pair) Crash(h *lab.Host) {
	p.Switch.IP("link", "set", p.port(h), "down")
	h.KillAll()
}

// Stop stops h's director cleanly (SIGTERM) and waits for it to exit.
func (p *Pair) Stop(h *lab.Host) {
	proc := p.Procs[h]
	if err := proc.Signal(syscall.SIGTERM); err != nil {
		p.Lab.Fatalf("stop %s: %v", proc.Name, err)
	}
	if _, err := proc.Wait(10 * time.Second); err != nil {
		p.Lab.Fatalf("stop %s: %v", proc.Name, err)
	}
}

// Revive reconnects h's cable.
func (p *Pair) Revive(h *lab.Host) {
	p.Switch.IP("link", "set", p.port(h), "up")
}

func (p *Pair) port(h *lab.Host) string {
	if h == p.LB1 {
		return p.Port1
	}
	return p.Port2
}

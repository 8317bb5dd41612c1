// Package synclab builds LVS-NAT as the seed draws it, for the tests and
// the benchmark of connection sync: a client on the front switch, two
// directors (lb1 master) between the front and the back switch, and three
// real servers whose gateway is the inside VIP, which moves with the
// outside VIP (one vrrp_sync_group).
//
//	client 192.0.2.50 ── front ── lb1 .11 / lb2 .12 ── back (203.0.113.2 / .3, VIP .1) ── rs1-3 .11-.13
//	                       └── witness w .13 (with Options.Cluster)
//
// With Options.Cluster the directors and a witness replicate the table
// with Raft over the front network, as a pair in production would.
package synclab

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/directord/directord/internal/api"

	"github.com/directord/directord/internal/lab"
	"github.com/directord/directord/internal/lblab"
	dsync "github.com/directord/directord/sync"
)

// Key is the sync key of the scene.
var Key = base64.StdEncoding.EncodeToString([]byte("directord sync test key, 32 byte"))

// Director is one of the two directors.
type Director struct {
	Host                *lab.Host
	Dir, Conf, Sock     string
	Inside              string // its address on the back network
	FrontPort, BackPort string // its switch ports
	Proc                *lab.Process
}

// Scene is the lab.
type Scene struct {
	*lblab.Scene
	LB [2]*Director
	// Witness is the cluster's third voter (Options.Cluster), else nil.
	Witness     *Director
	directorctl string
}

// Options shape the scene.
type Options struct {
	Sync bool // [sync]: conntrack sync between the directors
	// Cluster adds [cluster] to both directors and a witness.
	Cluster bool
	// VSExtra lines go into the virtual server, before its real servers.
	VSExtra []string
	// HTTP adds a second virtual server, "http" on 192.0.2.100:8000, to
	// the real servers' HTTP servers (lblab.ServeHTTP), with http checks.
	HTTP bool
}

// HTTPService is the address of Options.HTTP's virtual server.
const HTTPService = "192.0.2.100:8000"

// ClusterKey is the gossip key of the scene's cluster.
var ClusterKey = base64.StdEncoding.EncodeToString([]byte("directord synclab gossip key, 32"))

// New builds the scene in l, starts directord (bins: directord and
// directorctl) on both directors (and the witness), and waits until lb1
// holds both VIPs.
func New(l *lab.Lab, dir, directord, directorctl string, o Options) (*Scene, error) {
	syncOn := o.Sync
	front, back := l.AddSwitch("front"), l.AddSwitch("back")
	s := &Scene{Scene: &lblab.Scene{Lab: l, Front: front, Back: back, Client: l.AddHost("client")}, directorctl: directorctl}
	front.Plug(s.Client, "eth0", lblab.ClientIP+"/24")
	for i, name := range []string{"lb1", "lb2"} {
		h := l.AddHost(name)
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		x := &Director{Host: h, Dir: d, Conf: filepath.Join(d, "directord.toml"), Sock: filepath.Join(d, "directord.sock"),
			Inside: fmt.Sprintf("203.0.113.%d", 2+i)}
		x.FrontPort = front.Plug(h, "eth0", fmt.Sprintf("192.0.2.%d/24", 11+i))
		x.BackPort = back.Plug(h, "eth1", x.Inside+"/24")
		s.LB[i] = x
	}
	for i := range 3 {
		h := l.AddHost(fmt.Sprintf("rs%d", i+1))
		back.Plug(h, "eth0", lblab.RealAddr(i)+"/24")
		h.AddRoute("default", "via", "203.0.113.1")
		s.Reals = append(s.Reals, h)
		s.Serve(h)
		if o.HTTP {
			s.ServeHTTP(h)
		}
	}
	var reals strings.Builder
	for i := range 3 {
		fmt.Fprintf(&reals, "  [[virtual_server.real_server]]\n  address = \"%s:%d\"\n", lblab.RealAddr(i), lblab.TCPPort)
	}
	if o.HTTP {
		fmt.Fprintf(&reals, "\n[[virtual_server]]\nname = \"http\"\naddress = %q\nscheduler = \"rr\"\n"+
			"  [virtual_server.health_check]\n  type = \"http\"\n  path = \"/\"\n  interval = \"500ms\"\n  timeout = \"300ms\"\n", HTTPService)
		for i := range 3 {
			fmt.Fprintf(&reals, "  [[virtual_server.real_server]]\n  address = \"%s:%d\"\n", lblab.RealAddr(i), lblab.HTTPPort)
		}
	}
	clusterSection := func(x *Director, role string) string { return "" }
	if o.Cluster {
		h := l.AddHost("w")
		d := filepath.Join(dir, "w")
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		s.Witness = &Director{Host: h, Dir: d, Conf: filepath.Join(d, "directord.toml"), Sock: filepath.Join(d, "directord.sock")}
		s.Witness.FrontPort = front.Plug(h, "eth0", "192.0.2.13/24")
		gossipIP := map[*Director]string{s.LB[0]: "192.0.2.11", s.LB[1]: "192.0.2.12", s.Witness: "192.0.2.13"}
		clusterSection = func(x *Director, role string) string {
			var peers []string
			for y, ip := range gossipIP {
				if y != x {
					peers = append(peers, fmt.Sprintf("%q", ip+":7946"))
				}
			}
			slices.Sort(peers)
			return fmt.Sprintf("role = %q\n\n[cluster]\nbind = \"%s:7946\"\nraft_bind = \"%s:7000\"\npeers = [%s]\nbootstrap_expect = 3\nencrypt_key = %q\n",
				role, gossipIP[x], gossipIP[x], strings.Join(peers, ", "), ClusterKey)
		}
		conf := fmt.Sprintf("[node]\nname = \"w\"\ndata_dir = %q\nstatus_socket = %q\n%s",
			filepath.Join(d, "data"), s.Witness.Sock, clusterSection(s.Witness, "witness"))
		if err := os.WriteFile(s.Witness.Conf, []byte(conf), 0o644); err != nil {
			return nil, err
		}
		s.Witness.Proc = h.Start(directord, "-c", s.Witness.Conf)
	}
	for i, x := range s.LB {
		prio, peer := 150, s.LB[1].Inside
		if i == 1 {
			prio, peer = 100, s.LB[0].Inside
		}
		syncSection := ""
		if syncOn {
			syncSection = fmt.Sprintf("\n[sync]\nlisten = \"%s:7100\"\npeer = \"%s:7100\"\nkey = %q\ninstance = \"VI_1\"\n", x.Inside, peer, Key)
		}
		conf := fmt.Sprintf(`[node]
name = %q
data_dir = %q
status_socket = %q
%s%s
[[vrrp_instance]]
name = "VI_1"
interface = "eth0"
virtual_router_id = 51
priority = %d
advert_int = "100ms"
virtual_ipaddress = ["192.0.2.100/24"]

[[vrrp_instance]]
name = "VI_2"
interface = "eth1"
virtual_router_id = 52
priority = %d
advert_int = "100ms"
virtual_ipaddress = ["203.0.113.1/24"]

[[vrrp_sync_group]]
name = "G"
group = ["VI_1", "VI_2"]

[[virtual_server]]
name = "web"
address = "192.0.2.100:80"
scheduler = "rr"
%s
%s`, x.Host.Name, filepath.Join(x.Dir, "data"), x.Sock, clusterSection(x, "director"), syncSection, prio, prio,
			strings.Join(o.VSExtra, "\n"), reals.String())
		if err := os.WriteFile(x.Conf, []byte(conf), 0o644); err != nil {
			return nil, err
		}
		x.Proc = x.Host.Start(directord, "-c", x.Conf)
	}
	if err := lab.Eventually(15*time.Second, func() error {
		if err := s.Owns(s.LB[0], true); err != nil {
			return err
		}
		return s.Owns(s.LB[1], false)
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// Owns checks that d holds both VIPs (or neither).
func (s *Scene) Owns(d *Director, want bool) error {
	out, _ := d.Host.Run("ip", "-o", "addr")
	for _, vip := range []string{"192.0.2.100", "203.0.113.1"} {
		if strings.Contains(out, " "+vip+"/") != want {
			return fmt.Errorf("%s holds %s: %v", d.Host.Name, vip, !want)
		}
	}
	return nil
}

// Crash cuts lb's cables and kills its processes.
func (s *Scene) Crash(d *Director) {
	s.Front.IP("link", "set", d.FrontPort, "down")
	s.Back.IP("link", "set", d.BackPort, "down")
	d.Host.KillAll()
}

// SyncStatus reads d's sync status.
func (s *Scene) SyncStatus(d *Director) (dsync.Status, error) {
	out, err := exec.Command(s.directorctl, "--socket", d.Sock, "status", "--json").Output()
	if err != nil {
		return dsync.Status{}, err
	}
	var doc struct{ Sync dsync.Status }
	err = json.Unmarshal(out, &doc)
	return doc.Sync, err
}

// Ctl runs directorctl against d.
func (s *Scene) Ctl(d *Director, args ...string) (string, error) {
	out, err := exec.Command(s.directorctl, append([]string{"--socket", d.Sock}, args...)...).CombinedOutput()
	return string(out), err
}

// WaitCluster waits until each director sees all three members alive and
// telling their state, a leader, and the table seeded (Options.Cluster).
func (s *Scene) WaitCluster(timeout time.Duration) error {
	return lab.Eventually(timeout, func() error {
		for _, d := range s.LB {
			out, err := exec.Command(s.directorctl, "--socket", d.Sock, "cluster", "--json").Output()
			if err != nil {
				return fmt.Errorf("%s: directorctl cluster: %v", d.Host.Name, err)
			}
			var st api.ClusterStatus
			if err := json.Unmarshal(out, &st); err != nil {
				return err
			}
			alive := 0
			for _, m := range st.Members {
				if m.State == "alive" && len(m.App) > 0 {
					alive++
				}
			}
			if alive != 3 || st.Leader == "" || !st.Seeded {
				return fmt.Errorf("%s: %d members alive with their state, leader %q, seeded %v", d.Host.Name, alive, st.Leader, st.Seeded)
			}
		}
		return nil
	})
}

// WaitSynced waits until lb2, the backup, has applied n synced entries.
func (s *Scene) WaitSynced(n uint64, timeout time.Duration) error {
	return lab.Eventually(timeout, func() error {
		st, err := s.SyncStatus(s.LB[1])
		if err != nil || st.Applied < n {
			return fmt.Errorf("the backup has applied %d synced entries (want %d), %v", st.Applied, n, err)
		}
		return nil
	})
}

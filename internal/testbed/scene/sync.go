package scene

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/directord/directord/internal/api"

	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	dsync "github.com/directord/directord/sync"
)

// SyncKey is the sync key of the scene.
var SyncKey = base64.StdEncoding.EncodeToString([]byte("directord sync test key, 32 byte"))

// Director is one of the two directors.
type Director struct {
	Host                *lab.Host
	Dir, Conf, Sock     string
	Inside              string // its address on the back network
	FrontPort, BackPort string // its switch ports
	Proc                *lab.Process
}

// Sync is the scene of the connection-sync tests, drills, the sync bench
// and the demo.
type Sync struct {
	*LVS
	LB [2]*Director
	// Witness is the cluster's third voter (SyncOptions.Cluster), else nil.
	Witness     *Director
	directorctl string
}

// SyncOptions shape the scene.
type SyncOptions struct {
	Sync bool // [sync]: conntrack sync between the directors
	// Cluster adds [cluster] to both directors and a witness.
	Cluster bool
	// VSExtra lines go into the virtual server, before its real servers.
	VSExtra []string
	// Check is the virtual server's health check (none when nil).
	Check *conf.Check
	// HTTP adds a second virtual server, "http" on 192.0.2.100:8000, to
	// the real servers' HTTP servers (ServeHTTP), with http checks.
	HTTP bool
}

// HTTPService is the address of SyncOptions.HTTP's virtual server.
const HTTPService = "192.0.2.100:8000"

// clusterSecrets makes the cluster's key pairs and gossip key the way an
// operator does, with directorctl cluster certs, and returns each
// member's [cluster] files and the key it printed.
func clusterSecrets(directorctl, dir string, members map[string]string) (map[string]conf.TLS, string, error) {
	args := []string{"cluster", "certs", "--out", dir}
	for _, name := range slices.Sorted(maps.Keys(members)) {
		args = append(args, name+"="+members[name])
	}
	out, err := exec.Command(directorctl, args...).CombinedOutput()
	if err != nil {
		return nil, "", fmt.Errorf("directorctl cluster certs: %v\n%s", err, out)
	}
	var key string
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "encrypt_key = "); ok {
			key, err = strconv.Unquote(v)
			if err != nil {
				return nil, "", fmt.Errorf("directorctl cluster certs printed %q", l)
			}
		}
	}
	files := map[string]conf.TLS{}
	for name := range members {
		files[name] = conf.TLS{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+"-key.pem"), CA: filepath.Join(dir, "ca.pem")}
	}
	return files, key, nil
}

// NewSync builds the scene in l, starts directord (bins: directord and
// directorctl) on both directors (and the witness), and waits until lb1
// holds both VIPs.
func NewSync(l *lab.Lab, dir, directord, directorctl string, o SyncOptions) (*Sync, error) {
	front, back := l.AddSwitch("front"), l.AddSwitch("back")
	s := &Sync{LVS: &LVS{Lab: l, Front: front, Back: back, Client: l.AddHost("client")}, directorctl: directorctl}
	front.Plug(s.Client, "eth0", ClientIP+"/24")
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
		back.Plug(h, "eth0", RealAddr(i)+"/24")
		h.AddRoute("default", "via", "203.0.113.1")
		s.Reals = append(s.Reals, h)
		s.Serve(h)
		if o.HTTP {
			s.ServeHTTP(h)
		}
	}
	web := conf.VirtualServer{Name: "web", Address: "192.0.2.100:80", Scheduler: "rr", Extra: o.VSExtra, Check: o.Check}
	http := conf.VirtualServer{Name: "http", Address: HTTPService, Scheduler: "rr",
		Check: &conf.Check{Type: "http", Interval: "500ms", Timeout: "300ms", Extra: []string{`path = "/"`}}}
	for i := range 3 {
		web.Reals = append(web.Reals, conf.Real{Address: fmt.Sprintf("%s:%d", RealAddr(i), TCPPort)})
		http.Reals = append(http.Reals, conf.Real{Address: fmt.Sprintf("%s:%d", RealAddr(i), HTTPPort)})
	}
	vss := []conf.VirtualServer{web}
	if o.HTTP {
		vss = append(vss, http)
	}
	// With a cluster each node gossips with the other two.
	clusterOf := func(x *Director) *conf.Cluster { return nil }
	if o.Cluster {
		h := l.AddHost("w")
		d := filepath.Join(dir, "w")
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
		s.Witness = &Director{Host: h, Dir: d, Conf: filepath.Join(d, "directord.toml"), Sock: filepath.Join(d, "directord.sock")}
		s.Witness.FrontPort = front.Plug(h, "eth0", "192.0.2.13/24")
		gossipIP := map[*Director]string{s.LB[0]: "192.0.2.11", s.LB[1]: "192.0.2.12", s.Witness: "192.0.2.13"}
		// The directors' certificates name their sync addresses too: the
		// sync runs over the cluster's mutual TLS.
		names := map[string]string{"lb1": "192.0.2.11," + s.LB[0].Inside, "lb2": "192.0.2.12," + s.LB[1].Inside, "w": "192.0.2.13"}
		certs, key, err := clusterSecrets(directorctl, filepath.Join(dir, "certs"), names)
		if err != nil {
			return nil, err
		}
		clusterOf = func(x *Director) *conf.Cluster {
			var peers []string
			for y, ip := range gossipIP {
				if y != x {
					peers = append(peers, ip+":7946")
				}
			}
			slices.Sort(peers)
			return &conf.Cluster{Bind: gossipIP[x] + ":7946", RaftBind: gossipIP[x] + ":7000", Peers: peers,
				Members: []string{"lb1", "lb2", "w"}, EncryptKey: key, TLS: certs[x.Host.Name]}
		}
		f := conf.File{Node: conf.Node{Name: "w", Role: "witness", DataDir: filepath.Join(d, "data"), StatusSocket: s.Witness.Sock},
			Cluster: clusterOf(s.Witness)}
		if err := f.Write(s.Witness.Conf); err != nil {
			return nil, err
		}
		s.Witness.Proc = h.Start(directord, "-c", s.Witness.Conf)
	}
	for i, x := range s.LB {
		prio, peer := 150, s.LB[1].Inside
		if i == 1 {
			prio, peer = 100, s.LB[0].Inside
		}
		f := conf.File{
			Node:    conf.Node{Name: x.Host.Name, DataDir: filepath.Join(x.Dir, "data"), StatusSocket: x.Sock},
			Cluster: clusterOf(x),
			VRRP: []conf.Instance{
				{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, AdvertInt: "100ms", VIPs: []string{"192.0.2.100/24"}},
				{Name: "VI_2", Interface: "eth1", VRID: 52, Priority: prio, AdvertInt: "100ms", VIPs: []string{"203.0.113.1/24"}},
			},
			SyncGroups:     []conf.SyncGroup{{Name: "G", Members: []string{"VI_1", "VI_2"}}},
			VirtualServers: vss,
		}
		if o.Cluster {
			f.Node.Role = "director"
		}
		if o.Sync {
			f.Sync = &conf.Sync{Listen: x.Inside + ":7100", Peer: peer + ":7100", Key: SyncKey, Instance: "VI_1"}
		}
		if err := f.Write(x.Conf); err != nil {
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
func (s *Sync) Owns(d *Director, want bool) error {
	out, _ := d.Host.Run("ip", "-o", "addr")
	for _, vip := range []string{"192.0.2.100", "203.0.113.1"} {
		if strings.Contains(out, " "+vip+"/") != want {
			return fmt.Errorf("%s holds %s: %v", d.Host.Name, vip, !want)
		}
	}
	return nil
}

// Crash cuts lb's cables and kills its processes.
func (s *Sync) Crash(d *Director) {
	s.Front.IP("link", "set", d.FrontPort, "down")
	s.Back.IP("link", "set", d.BackPort, "down")
	d.Host.KillAll()
}

// SyncStatus reads d's sync status.
func (s *Sync) SyncStatus(d *Director) (dsync.Status, error) {
	out, err := exec.Command(s.directorctl, "--socket", d.Sock, "status", "--json").Output()
	if err != nil {
		return dsync.Status{}, err
	}
	var doc struct{ Sync dsync.Status }
	err = json.Unmarshal(out, &doc)
	return doc.Sync, err
}

// Ctl runs directorctl against d.
func (s *Sync) Ctl(d *Director, args ...string) (string, error) {
	out, err := exec.Command(s.directorctl, append([]string{"--socket", d.Sock}, args...)...).CombinedOutput()
	return string(out), err
}

// WaitCluster waits until each director sees all three members alive and
// telling their state, a leader, and the table seeded (SyncOptions.Cluster).
func (s *Sync) WaitCluster(timeout time.Duration) error {
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
func (s *Sync) WaitSynced(n uint64, timeout time.Duration) error {
	return lab.Eventually(timeout, func() error {
		st, err := s.SyncStatus(s.LB[1])
		if err != nil || st.Applied < n {
			return fmt.Errorf("the backup has applied %d synced entries (want %d), %v", st.Applied, n, err)
		}
		return nil
	})
}

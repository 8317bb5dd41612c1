package scene

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
)

// Scale-out addresses: the router between the clients and N directors
// that all serve the VIP, announced with BGP; the real servers reply to
// the clients through the router directly.
const (
	RouterAS        = 65000
	DirectorAS      = 65001
	RouterFront     = "192.0.2.1"     // the router on the directors' segment
	RouterClients   = "198.51.100.1"  // and on the clients'
	RouterBack      = "203.0.113.254" // and on the real servers': their gateway
	ScaleOutClient  = "198.51.100.50"
	ScaleOutVIP     = "192.0.2.200"
	ScaleOutHoldSec = 9
	// ScaleOutPassword signs the BGP sessions (TCP MD5, RFC 2385) on both
	// sides: the lab runs the set-up docs/scale-out.md recommends.
	ScaleOutPassword = "lab-md5-secret"
)

// DirectorAddr is the i-th director's address towards the router (from
// 0), and DirectorBack its address on the real servers' segment.
func DirectorAddr(i int) string { return fmt.Sprintf("192.0.2.%d", 11+i) }
func DirectorBack(i int) string { return fmt.Sprintf("203.0.113.%d", 1+i) }

// ScaleOut is the lab: FRR's bgpd and zebra on the router, with ECMP
// hashing on ports; clients behind it; N directors; real servers that
// hold the VIP on lo for direct replies.
type ScaleOut struct {
	*LVS      // the client and the real servers, for Serve, Open and Ask
	Router    *lab.Host
	Directors []*lab.Host
	// Ports are the directors' switch ports on the router's segment:
	// down = a cut cable.
	Ports                 []string
	RouterSwitch, Clients *lab.Switch
	routerDir             string
	zebra, bgpd           *lab.Process
	routerBin             string
	// Procs and Socks are the directors' processes and status sockets,
	// once StartDirectors ran.
	Procs        []*lab.Process
	Socks, Files []string
}

// NewScaleOut builds the lab with n directors and r real servers and
// starts the router.
func NewScaleOut(l *lab.Lab, n, r int) *ScaleOut {
	s := &ScaleOut{LVS: &LVS{Lab: l, listeners: map[*lab.Host][]func(){}}, routerBin: "/usr/lib/frr"}
	s.RouterSwitch, s.Clients, s.Back = l.AddSwitch("front"), l.AddSwitch("clients"), l.AddSwitch("back")
	s.Front = s.RouterSwitch
	s.Router, s.Client = l.AddHost("router"), l.AddHost("client")
	s.RouterSwitch.Plug(s.Router, "eth0", RouterFront+"/24")
	s.Clients.Plug(s.Router, "eth1", RouterClients+"/24")
	s.Back.Plug(s.Router, "eth2", RouterBack+"/24")
	for k, v := range map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/fib_multipath_hash_policy": "1",
		"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/default/rp_filter": "0"} {
		s.Sysctl(s.Router, k, v)
	}
	s.Clients.Plug(s.Client, "eth0", ScaleOutClient+"/24")
	s.Client.AddRoute("default", "via", RouterClients)
	for i := range n {
		d := l.AddHost(fmt.Sprintf("d%d", i+1))
		s.Ports = append(s.Ports, s.RouterSwitch.Plug(d, "eth0", DirectorAddr(i)+"/24"))
		s.Back.Plug(d, "eth1", DirectorBack(i)+"/24")
		s.Sysctl(d, "net/ipv4/ip_forward", "1")
		d.AddRoute("default", "via", RouterFront)
		s.Directors = append(s.Directors, d)
	}
	for i := range r {
		h := l.AddHost(fmt.Sprintf("rs%d", i+1))
		s.Back.Plug(h, "eth0", RealAddr(i)+"/24")
		h.AddRoute("default", "via", RouterBack)
		// Direct routing: the VIP on lo, never answered for in ARP.
		h.AddAddr("lo", ScaleOutVIP+"/32")
		for k, v := range map[string]string{"net/ipv4/conf/all/arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2",
			"net/ipv4/conf/eth0/arp_ignore": "1", "net/ipv4/conf/eth0/arp_announce": "2"} {
			s.Sysctl(h, k, v)
		}
		s.Reals = append(s.Reals, h)
		s.Serve(h)
		s.ServeHTTP(h)
	}
	l.OnClose(s.stopAll)
	s.startRouter(n)
	return s
}

// startRouter runs zebra and bgpd on the router: eBGP with every
// director, up to 8 paths per prefix, and the GRACEFUL_SHUTDOWN community
// honoured as RFC 8326 asks (local preference 0).
func (s *ScaleOut) startRouter(n int) {
	dir, err := os.MkdirTemp("", "directord-frr")
	if err != nil {
		s.Lab.Fatalf("%v", err)
	}
	s.Lab.OnClose(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil { // bgpd runs as frr
		s.Lab.Fatalf("%v", err)
	}
	s.routerDir = dir
	var b strings.Builder
	fmt.Fprintf(&b, "hostname router\nbgp community-list standard gshut permit graceful-shutdown\n")
	fmt.Fprintf(&b, "route-map FROM-DIRECTORS permit 10\n match community gshut\n set local-preference 0\nroute-map FROM-DIRECTORS permit 20\n")
	fmt.Fprintf(&b, "router bgp %d\n bgp router-id %s\n no bgp ebgp-requires-policy\n no bgp network import-check\n", RouterAS, RouterFront)
	for i := range n {
		fmt.Fprintf(&b, " neighbor %s remote-as %d\n neighbor %s timers 3 %d\n neighbor %s timers connect 1\n neighbor %s password %s\n",
			DirectorAddr(i), DirectorAS, DirectorAddr(i), ScaleOutHoldSec, DirectorAddr(i), DirectorAddr(i), ScaleOutPassword)
	}
	fmt.Fprintf(&b, " address-family ipv4 unicast\n  maximum-paths 8\n")
	for i := range n {
		fmt.Fprintf(&b, "  neighbor %s route-map FROM-DIRECTORS in\n", DirectorAddr(i))
	}
	fmt.Fprintf(&b, " exit-address-family\n")
	for name, body := range map[string]string{"zebra.conf": "hostname router\n", "bgpd.conf": b.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			s.Lab.Fatalf("%v", err)
		}
	}
	daemon := func(name string, extra ...string) *lab.Process {
		args := append([]string{"-f", filepath.Join(dir, name+".conf"), "-i", filepath.Join(dir, name+".pid"),
			"-z", filepath.Join(dir, "zserv.api"), "--vty_socket", dir, "-u", "frr", "-g", "frr", "--log", "stdout"}, extra...)
		return s.Router.Start(filepath.Join(s.routerBin, name), args...)
	}
	s.zebra = daemon("zebra")
	if err := lab.Eventually(10*time.Second, func() error {
		_, err := os.Stat(filepath.Join(dir, "zserv.api"))
		return err
	}); err != nil {
		s.Lab.Fatalf("zebra: %v\n%s", err, s.zebra.Output())
	}
	s.bgpd = daemon("bgpd", "-p", "179")
}

// RouterLog is what zebra and bgpd said.
func (s *ScaleOut) RouterLog() string {
	return "zebra:\n" + s.zebra.Output() + "\nbgpd:\n" + s.bgpd.Output()
}

// Vtysh runs a command on the router's FRR.
func (s *ScaleOut) Vtysh(cmd string) (string, error) {
	out, err := exec.Command("ip", "netns", "exec", s.Router.NS, "vtysh", "--vty_socket", s.routerDir, "-c", cmd).CombinedOutput()
	return string(out), err
}

// NextHops are the next hops of the router's route to prefix in its
// kernel (what zebra installed), sorted; none without a route.
func (s *ScaleOut) NextHops(prefix string) ([]string, error) {
	out, err := s.Router.Run("ip", "-j", "route", "show", prefix)
	if err != nil {
		return nil, err
	}
	var routes []struct {
		Gateway  string `json:"gateway"`
		Nexthops []struct {
			Gateway string `json:"gateway"`
		} `json:"nexthops"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		return nil, fmt.Errorf("ip -j route: %w: %s", err, out)
	}
	var hops []string
	for _, r := range routes {
		if r.Gateway != "" {
			hops = append(hops, r.Gateway)
		}
		for _, n := range r.Nexthops {
			hops = append(hops, n.Gateway)
		}
	}
	slices.Sort(hops)
	return hops, nil
}

// DirectorOptions shape a scale-out director's file.
type DirectorOptions struct {
	Scheduler     string // "mh" when empty
	ShutdownDelay string // "3s" when empty
	// NAT: stateful NAT with masquerade instead of stateless direct
	// routing, the comparison for what a director's loss costs.
	NAT bool
}

// DirectorConfig writes director i's file in dir: the VIP announced with
// BGP to the router and balanced over every real server, by stateless
// direct routing (packets taken at eth0, facing the router, sent out of
// eth1 to the servers, which answer through the router) unless o.NAT.
func (s *ScaleOut) DirectorConfig(dir string, i int, o DirectorOptions) (file, sock string, err error) {
	d := filepath.Join(dir, fmt.Sprintf("d%d", i+1))
	sock = filepath.Join(d, "directord.sock")
	if o.Scheduler == "" {
		o.Scheduler = "mh"
	}
	if o.ShutdownDelay == "" {
		o.ShutdownDelay = "3s"
	}
	web := conf.VirtualServer{Name: "web", Address: fmt.Sprintf("%s:%d", ScaleOutVIP, TCPPort), Scheduler: o.Scheduler,
		Extra: []string{`announce = "bgp"`, `forwarding = "dr"`},
		// HTTP on its own port: a TCP check closes with a reset, which
		// the reset count of the data connections would take for theirs.
		// A timeout this busy machine meets: a check that flaps on one
		// director moves that director's flows of the server elsewhere.
		Check: &conf.Check{Type: "http", Interval: "500ms", Timeout: "500ms",
			Extra: []string{fmt.Sprintf("connect_port = %d", HTTPPort), "rise = 1", "fall = 2", `warmup = "0s"`}}}
	dataplane := []string{`kind = "nftables"`, `dr_interface = "eth0"`}
	if o.NAT {
		web.Extra = []string{`announce = "bgp"`, `forwarding = "nat"`, "masquerade = true"}
		dataplane = []string{`kind = "nftables"`}
	}
	for r := range s.Reals {
		web.Reals = append(web.Reals, conf.Real{Address: fmt.Sprintf("%s:%d", RealAddr(r), TCPPort)})
	}
	text := conf.File{
		Node:           conf.Node{Name: fmt.Sprintf("d%d", i+1), DataDir: filepath.Join(d, "data"), StatusSocket: sock},
		Dataplane:      dataplane,
		VirtualServers: []conf.VirtualServer{web},
	}.String() + fmt.Sprintf(`
[bgp]
local_as = %d
router_id = %q
shutdown_delay = %q
communities = ["65001:100"]
  [[bgp.neighbor]]
  address = %q
  peer_as = %d
  hold_time = "%ds"
  password = %q
`, DirectorAS, DirectorAddr(i), o.ShutdownDelay, RouterFront, RouterAS, ScaleOutHoldSec, ScaleOutPassword)
	file = filepath.Join(dir, fmt.Sprintf("d%d.toml", i+1))
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", "", err
	}
	return file, sock, os.WriteFile(file, []byte(text), 0o644)
}

// StartDirectors writes every director's file in dir, starts directord
// on each and waits until the router has a next hop for every one.
func (s *ScaleOut) StartDirectors(directord, dir string, o DirectorOptions) error {
	for i, d := range s.Directors {
		file, sock, err := s.DirectorConfig(dir, i, o)
		if err != nil {
			return err
		}
		s.Procs = append(s.Procs, d.Start(directord, "-c", file))
		s.Socks, s.Files = append(s.Socks, sock), append(s.Files, file)
	}
	return s.WaitHops(len(s.Directors), 30*time.Second)
}

// WaitHops waits until the router's route to the VIP has n next hops.
func (s *ScaleOut) WaitHops(n int, within time.Duration) error {
	return lab.Eventually(within, func() error {
		got, err := s.NextHops(ScaleOutVIP + "/32")
		if err != nil {
			return err
		}
		if len(got) != n {
			return fmt.Errorf("the router's next hops for %s: %v, want %d", ScaleOutVIP, got, n)
		}
		return nil
	})
}

// Crash cuts director i's cable, then kills it (the cable first: the
// killed process's sockets would send the router a FIN), and waits for
// the router to drop it after the hold time.
func (s *ScaleOut) Crash(i int) error {
	got, err := s.NextHops(ScaleOutVIP + "/32")
	if err != nil {
		return err
	}
	s.RouterSwitch.IP("link", "set", s.Ports[i], "down")
	s.Procs[i].Kill()
	return s.WaitHops(len(got)-1, time.Duration(ScaleOutHoldSec+10)*time.Second)
}

package e2e

import (
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/directord/directord/cluster/pki"
	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/testbed/conf"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
	"github.com/hashicorp/raft"
)

var clusterKey = base64.StdEncoding.EncodeToString([]byte("directord test key, 32 bytes!!!!"))

type director struct {
	h          *lab.Host
	ip, dir    string
	conf, sock string
	proc       *lab.Process
	tls        conf.TLS // its key pair and the lab's CA
	members    []string // the cluster's members as its file names them
	port       string   // its port on the switch
}

// clusterFile is d's file: [cluster] with the test's gossip key, d's key
// pair and members, gossiping with peers (addresses), bootstrapping
// expect voters; role "" is a director's default.
func clusterFile(d *director, role string, expect int, peers ...string) conf.File {
	var ps []string
	for _, p := range peers {
		ps = append(ps, p+":7946")
	}
	return conf.File{
		Node: conf.Node{Name: d.h.Name, Role: role, DataDir: filepath.Join(d.dir, "data"), StatusSocket: d.sock},
		Cluster: &conf.Cluster{Bind: d.ip + ":7946", RaftBind: d.ip + ":7000", Peers: ps, BootstrapExpect: expect,
			Members: d.members, EncryptKey: clusterKey, TLS: d.tls},
	}
}

// pairFile is a director's file in a pair: clusterFile with the peer and
// the virtual servers vss.
func pairFile(d *director, peer string, vss ...conf.VirtualServer) string {
	f := clusterFile(d, "", 2, peer)
	f.VirtualServers = vss
	return f.String()
}

var (
	webService = conf.VirtualServer{Name: "web", Address: "192.0.2.100:80", Scheduler: "wrr",
		Reals: []conf.Real{{Address: "203.0.113.11:8080"}, {Address: "203.0.113.12:8080"}}}
	dnsService = conf.VirtualServer{Name: "dns", Address: "192.0.2.100:53", Protocol: "udp", Scheduler: "rr",
		Reals: []conf.Real{{Address: "203.0.113.11:53"}}}
)

func (d *director) ctl(args ...string) (string, error) {
	out, err := exec.Command(directorctl, append([]string{"--socket", d.sock}, args...)...).CombinedOutput()
	return string(out), err
}

func (d *director) clusterStatus() (*api.ClusterStatus, error) {
	out, err := exec.Command(directorctl, "--socket", d.sock, "cluster", "--json").Output()
	if err != nil {
		return nil, err
	}
	var st api.ClusterStatus
	return &st, json.Unmarshal(out, &st)
}

// table returns the kernel's table as "service/real" to weight.
func (d *director) table() (map[string]int, error) {
	out, err := exec.Command(directorctl, "--socket", d.sock, "lvs", "--json").Output()
	if err != nil {
		return nil, err
	}
	return weights(out)
}

// weights reads directorctl lvs --json: "service/real" to weight.
func weights(lvsJSON []byte) (map[string]int, error) {
	var st api.LVSStatus
	if err := json.Unmarshal(lvsJSON, &st); err != nil {
		return nil, err
	}
	m := map[string]int{}
	for _, s := range st.Services {
		for _, r := range s.Reals {
			m[s.Name+"/"+r.Addr.String()] = r.Weight
		}
	}
	return m, nil
}

// waitLog waits until d's log has text.
func (d *director) waitLog(t *testing.T, text string) {
	t.Helper()
	if err := lab.Eventually(15*time.Second, func() error {
		if !strings.Contains(d.proc.Output(), text) {
			return fmt.Errorf("%s logged no %q", d.h.Name, text)
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.proc.Output())
	}
}

func (d *director) start() { d.proc = d.h.Start(directord, "-c", d.conf) }

func (d *director) stop(t *testing.T) {
	t.Helper()
	d.proc.Signal(syscall.SIGTERM)
	if code, err := d.proc.Wait(10 * time.Second); err != nil || code != 0 {
		t.Fatalf("%s: exit %d, %v\n%s", d.h.Name, code, err, d.proc.Output())
	}
}

func tablesAre(t *testing.T, want map[string]int, ds ...*director) {
	t.Helper()
	if err := lab.Eventually(15*time.Second, func() error {
		for _, d := range ds {
			got, err := d.table()
			if err != nil {
				return err
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("%s's kernel has %v, want %v", d.h.Name, got, want)
			}
		}
		return nil
	}); err != nil {
		for _, d := range ds {
			t.Logf("%s:\n%s", d.h.Name, d.proc.Output())
		}
		t.Fatal(err)
	}
}

// TestClusterPair: two directors replicate their table with Raft (over
// mutually checked TLS). The
// files seed it once; a change made on the follower lands on both
// kernels; apply -f replaces the table (with a dry run first); a
// restart keeps everything; with the peer down a write fails with "no
// quorum" and changes nothing.
func TestClusterPair(t *testing.T) {
	ds, _ := clusterLab(t, "lb1", "lb2")
	// VRRP stays node-local: lb2 is master of the VIP.
	for i, prio := range []int{100, 150} {
		f := clusterFile(ds[i], "", 2, ds[1-i].ip)
		f.VRRP = []conf.Instance{{Name: "VI_1", Interface: "eth0", VRID: 51, Priority: prio, AdvertInt: "100ms", VIPs: []string{"192.0.2.100/24"}}}
		f.VirtualServers = []conf.VirtualServer{webService}
		writeFile(t, ds[i].conf, f.String())
	}
	for _, d := range ds {
		d.start()
	}
	tablesAre(t, map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 1}, ds...)
	var follower, leader *director
	if err := lab.Eventually(15*time.Second, func() error {
		for _, d := range ds {
			st, err := d.clusterStatus()
			if err != nil {
				return err
			}
			if !st.Seeded || st.Leader == "" || !st.RaftTLS || st.Gossip != "aes" {
				return fmt.Errorf("%s: %+v", d.h.Name, st)
			}
			if st.RaftState == "Follower" {
				follower = d
			} else {
				leader = d
			}
		}
		if follower == nil || leader == nil {
			return errors.New("no follower and leader yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// A weight set by hand on the follower reaches both kernels.
	if out, err := follower.ctl("rs", "weight", "web", "203.0.113.12:8080", "5"); err != nil {
		t.Fatalf("rs weight on the follower: %v\n%s", err, out)
	}
	tablesAre(t, map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 5}, ds...)

	// apply -f: a dry run says what would change and changes nothing;
	// then the real one.
	both := filepath.Join(follower.dir, "both.toml")
	writeFile(t, both, pairFile(follower, leader.ip, webService, dnsService))
	out, err := follower.ctl("apply", "-f", both, "--dry-run")
	if err != nil || !strings.Contains(out, "would change 1 virtual server(s): dns") {
		t.Fatalf("apply --dry-run: %v\n%s", err, out)
	}
	if out, err := follower.ctl("apply", "-f", both); err != nil || !strings.Contains(out, "committed") {
		t.Fatalf("apply: %v\n%s", err, out)
	}
	full := map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 5, "dns/203.0.113.11:53": 1}
	tablesAre(t, full, ds...)
	// vs del and vs add -f: one service out, and back from a file.
	if out, err := leader.ctl("vs", "del", "dns"); err != nil {
		t.Fatalf("vs del: %v\n%s", err, out)
	}
	tablesAre(t, map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 5}, ds...)
	if out, err := follower.ctl("vs", "add", "-f", both, "dns"); err != nil {
		t.Fatalf("vs add: %v\n%s", err, out)
	}
	tablesAre(t, full, ds...)
	// Each file now differs from the cluster: said, not applied.
	if err := lab.Eventually(5*time.Second, func() error {
		st, err := leader.clusterStatus()
		if err != nil || fmt.Sprint(st.FileDiffers) != "[dns]" {
			return fmt.Errorf("file_differs %v, %v", st.FileDiffers, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out, _ := leader.ctl("cluster"); !strings.Contains(out, "file differs") || !strings.Contains(out, "MEMBERS") {
		t.Fatalf("directorctl cluster:\n%s", out)
	}

	// Both restart: the table is intact (the files do not reseed it).
	for _, d := range ds {
		d.stop(t)
	}
	for _, d := range ds {
		d.start()
	}
	tablesAre(t, full, ds...)

	// The peer (the VRRP master) goes down: lb1 takes the VIP although
	// Raft has no quorum; a write fails at once and changes nothing; the
	// table stays programmed.
	if err := lab.Eventually(10*time.Second, func() error {
		if !scene.HasAddr(ds[1].h, "192.0.2.100") {
			return errors.New("lb2 is not master")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ds[1].stop(t)
	if err := lab.Eventually(5*time.Second, func() error {
		if !scene.HasAddr(ds[0].h, "192.0.2.100") {
			return errors.New("lb1 did not take the VIP")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var msg string
	if err := lab.Eventually(10*time.Second, func() error {
		out, err := ds[0].ctl("rs", "drain", "web", "203.0.113.11:8080")
		if err == nil {
			return errors.New("a write committed with the peer down")
		}
		msg = out
		if !strings.Contains(out, "no quorum") {
			return fmt.Errorf("write with the peer down: %s", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("with the peer down: %s", strings.TrimSpace(msg))
	tablesAre(t, full, ds[0])
}

// clusterLab makes directors (and witnesses) on one switch, 192.0.2.11
// up, each with a key pair for its name and address from one test CA (as
// directorctl cluster certs makes them); every one lists them all as the
// cluster's members.
func clusterLab(t *testing.T, names ...string) ([]*director, *lab.Switch) {
	t.Helper()
	lab.Require(t, "nft")
	l := lab.New(t)
	sw := l.AddSwitch("sw")
	var ms []pki.Member
	for i, name := range names {
		ms = append(ms, pki.Member{Name: name, IPs: []netip.Addr{netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", 11+i))}})
	}
	certs, err := conf.Certs(filepath.Join(t.TempDir(), "certs"), ms...)
	if err != nil {
		t.Fatal(err)
	}
	var ds []*director
	for i, name := range names {
		h := l.AddHost(name)
		ip := ms[i].IPs[0].String()
		port := sw.Plug(h, "eth0", ip+"/24")
		dir := t.TempDir()
		ds = append(ds, &director{h: h, ip: ip, dir: dir, port: port, conf: filepath.Join(dir, "directord.toml"), sock: filepath.Join(dir, "directord.sock"),
			tls: certs[name], members: names})
	}
	return ds, sw
}

// trioFile is the file of ds[i], one of three nodes gossiping with the
// other two: a witness, or a director with the virtual servers vss.
func trioFile(ds []*director, i int, witness bool, vss ...conf.VirtualServer) string {
	role := "director"
	if witness {
		role = "witness"
	}
	var peers []string
	for j, d := range ds {
		if j != i {
			peers = append(peers, d.ip)
		}
	}
	f := clusterFile(ds[i], role, 3, peers...)
	f.VirtualServers = vss
	return f.String()
}

func raftLeader(t *testing.T, ds ...*director) *director {
	t.Helper()
	var l *director
	if err := lab.Eventually(15*time.Second, func() error {
		for _, d := range ds {
			if d.proc == nil || d.proc.Exited() {
				continue
			}
			st, err := d.clusterStatus()
			if err != nil {
				return err
			}
			if st.RaftState == "Leader" && st.Seeded {
				l = d
				return nil
			}
		}
		return errors.New("no leader")
	}); err != nil {
		t.Fatal(err)
	}
	return l
}

// TestClusterWitness: two directors and a witness. With one director
// down writes still commit; it comes back and catches up; the leader
// killed while writes stream in loses none that was committed.
func TestClusterWitness(t *testing.T) {
	ds, _ := clusterLab(t, "lb1", "lb2", "w")
	for i, d := range ds {
		if i == 2 {
			writeFile(t, d.conf, trioFile(ds, i, true))
		} else {
			writeFile(t, d.conf, trioFile(ds, i, false, webService))
		}
		d.start()
	}
	lb1, lb2, w := ds[0], ds[1], ds[2]
	tablesAre(t, map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 1}, lb1, lb2)
	raftLeader(t, ds...)
	if st, _ := w.table(); len(st) != 0 {
		t.Fatalf("the witness programs a table: %v", st)
	}

	// lb2 down: a write on lb1 still commits (lb1 + witness).
	lb2.stop(t)
	if out, err := lb1.ctl("rs", "weight", "web", "203.0.113.12:8080", "7"); err != nil {
		t.Fatalf("write with one director down: %v\n%s", err, out)
	}
	tablesAre(t, map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 7}, lb1)
	lb2.start()
	tablesAre(t, map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 7}, lb1, lb2)

	// A stream of writes from a director that does not lead; the leader
	// (a director or the witness) is killed half-way.
	leader := raftLeader(t, ds...)
	writer := lb1
	if leader == lb1 {
		writer = lb2
	}
	var ok []int
	for k := 1; k <= 20; k++ {
		if k == 8 {
			leader.proc.Kill()
		}
		out, err := writer.ctl("rs", "weight", "web", "203.0.113.11:8080", fmt.Sprint(k))
		if err == nil {
			ok = append(ok, k)
		} else {
			t.Logf("write %d: %s", k, strings.TrimSpace(out))
		}
	}
	if len(ok) == 0 || ok[len(ok)-1] < 8 {
		t.Fatalf("no write committed after the leader died: %v", ok)
	}
	last := ok[len(ok)-1]
	var alive []*director
	for _, d := range []*director{lb1, lb2} {
		if d != leader {
			alive = append(alive, d)
		}
	}
	if err := lab.Eventually(15*time.Second, func() error {
		for _, d := range alive {
			tb, err := d.table()
			if err != nil {
				return err
			}
			if got := tb["web/203.0.113.11:8080"]; got < last {
				return fmt.Errorf("%s has weight %d, but write %d was committed", d.h.Name, got, last)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %s killed at write 8; committed: %v", leader.h.Name, ok)
}

// TestClusterPartition: the leader is cut off by the switch (nftables on
// the bridge); the other two elect a leader and commit; when the
// partition heals the old leader follows and programs the new table.
func TestClusterPartition(t *testing.T) {
	ds, sw := clusterLab(t, "lb1", "lb2", "lb3")
	for i, d := range ds {
		writeFile(t, d.conf, trioFile(ds, i, false, webService))
		d.start()
	}
	base := map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 1}
	tablesAre(t, base, ds...)
	old := raftLeader(t, ds...)
	var rest []*director
	for _, d := range ds {
		if d != old {
			rest = append(rest, d)
		}
	}
	// Cut the old leader off in both directions at the switch.
	sw.MustRun("nft", fmt.Sprintf("add table bridge cut; add chain bridge cut f { type filter hook forward priority 0; }; add rule bridge cut f iifname %s drop; add rule bridge cut f oifname %s drop", old.port, old.port))
	newLeader := raftLeader(t, rest...)
	if out, err := newLeader.ctl("rs", "weight", "web", "203.0.113.12:8080", "9"); err != nil {
		t.Fatalf("write on the majority side: %v\n%s", err, out)
	}
	moved := map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 9}
	tablesAre(t, moved, rest...)
	// The cut-off node cannot commit anything.
	if out, err := old.ctl("rs", "drain", "web", "203.0.113.11:8080"); err == nil {
		t.Fatalf("the minority side committed a write: %s", out)
	}
	tablesAre(t, base, old)
	// Heal: it follows the new leader and programs the new table.
	sw.MustRun("nft", "delete table bridge cut")
	tablesAre(t, moved, ds...)

	// The operator retires it: out of Raft and the gossip; the other two
	// go on committing.
	if out, err := old.ctl("cluster", "leave"); err != nil || !strings.Contains(out, "left the cluster") {
		t.Fatalf("cluster leave: %v\n%s", err, out)
	}
	old.stop(t)
	if err := lab.Eventually(10*time.Second, func() error {
		st, err := rest[0].clusterStatus()
		if err != nil {
			return err
		}
		for _, m := range st.Members {
			if m.Name == old.h.Name && m.State == "alive" {
				return fmt.Errorf("%s still alive: %+v", m.Name, st.Members)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if out, err := rest[0].ctl("rs", "weight", "web", "203.0.113.11:8080", "3"); err != nil {
		t.Fatalf("write after the leave: %v\n%s", err, out)
	}
	tablesAre(t, map[string]int{"web/203.0.113.11:8080": 3, "web/203.0.113.12:8080": 9}, rest...)
}

// TestClusterRefusesStrangers: a host with another gossip key is refused,
// the refusal is logged, and it never becomes a member or gets the table.
func TestClusterRefusesStrangers(t *testing.T) {
	ds, _ := clusterLab(t, "lb1", "lb2", "x")
	lb1, lb2, x := ds[0], ds[1], ds[2]
	lb1.members, lb2.members = []string{"lb1", "lb2"}, []string{"lb1", "lb2"}
	writeFile(t, lb1.conf, pairFile(lb1, lb2.ip, webService))
	writeFile(t, lb2.conf, pairFile(lb2, lb1.ip, webService))
	other := clusterFile(x, "", 2, lb1.ip)
	other.Cluster.EncryptKey = base64.StdEncoding.EncodeToString([]byte("not the key of this cluster, no!"))
	other.VirtualServers = []conf.VirtualServer{webService}
	writeFile(t, x.conf, other.String())
	for _, d := range ds {
		d.start()
	}
	raftLeader(t, lb1, lb2)
	lb1.waitLog(t, "decrypt")
	for _, d := range []*director{lb1, lb2} {
		st, err := d.clusterStatus()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range st.Members {
			if m.Name == "x" {
				t.Fatalf("%s lists the stranger: %+v", d.h.Name, st.Members)
			}
		}
	}
	if st, err := x.clusterStatus(); err != nil || st.Seeded || st.Leader != "" {
		t.Fatalf("the stranger: %+v, %v", st, err)
	}
}

// TestClusterAttackers plays the attacker against a pair from a third
// host on its network, x, which has the gossip key and a certificate from
// the cluster's CA for its own name (not a member), and a copy of lb2's
// key pair. None of it changes the table or the voters.
func TestClusterAttackers(t *testing.T) {
	ds, _ := clusterLab(t, "lb1", "lb2", "x")
	lb1, lb2, x := ds[0], ds[1], ds[2]
	lb1.members, lb2.members = []string{"lb1", "lb2"}, []string{"lb1", "lb2"}
	writeFile(t, lb1.conf, pairFile(lb1, lb2.ip, webService))
	writeFile(t, lb2.conf, pairFile(lb2, lb1.ip, webService))
	xf := clusterFile(x, "", 3, lb1.ip, lb2.ip)
	xf.VirtualServers = []conf.VirtualServer{dnsService}
	writeFile(t, x.conf, xf.String())
	lb1.start()
	lb2.start()
	base := map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 1}
	tablesAre(t, base, lb1, lb2)
	leader := raftLeader(t, lb1, lb2)
	follower := lb1
	if leader == lb1 {
		follower = lb2
	}
	target := raft.ServerAddress(leader.ip + ":7000")

	// 1. x joins the gossip with the key, but is not a member: ignored,
	// never a voter, its writes refused.
	x.start()
	leader.waitLog(t, "not in [cluster] members is ignored")
	if out, err := x.ctl("rs", "drain", "web", "203.0.113.11:8080"); err == nil {
		t.Fatalf("x committed a write: %s", out)
	}
	// Nor can it take a voter out, itself or another.
	if out, err := x.ctl("cluster", "leave"); err == nil {
		t.Fatalf("x's leave was committed: %s", out)
	}

	// 2. Raft's own RPCs over plain TCP from x, with a higher term.
	if err := x.h.Do(func() error {
		plain, err := raft.NewTCPTransport(x.ip+":0", nil, 1, time.Second, io.Discard)
		if err != nil {
			return err
		}
		defer plain.Close()
		hdr := raft.RPCHeader{ID: []byte("lb2"), Addr: []byte(lb2.ip + ":7000")}
		var ae raft.AppendEntriesResponse
		if err := plain.AppendEntries("lb2", target, &raft.AppendEntriesRequest{RPCHeader: hdr, Term: 1000, LeaderCommitIndex: 1000,
			Entries: []*raft.Log{{Index: 1000, Term: 1000, Type: raft.LogCommand, Data: []byte(`{"v":1,"op":"vs.del","name":"web"}`)}}}, &ae); err == nil {
			return fmt.Errorf("plain AppendEntries answered: %+v", ae)
		}
		snap := `{"index":1000,"seeded":true,"services":{}}`
		var is raft.InstallSnapshotResponse
		if err := plain.InstallSnapshot("lb2", target, &raft.InstallSnapshotRequest{RPCHeader: hdr, SnapshotVersion: 1, Term: 1000,
			LastLogIndex: 1000, LastLogTerm: 1000, Size: int64(len(snap))}, &is, strings.NewReader(snap)); err == nil {
			return fmt.Errorf("plain InstallSnapshot answered: %+v", is)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// 3. lb2's genuine key pair, copied to x: refused, its certificate
	// is good only from lb2's address.
	if err := x.h.Do(func() error {
		cert, err := tls.LoadX509KeyPair(lb2.tls.Cert, lb2.tls.Key)
		if err != nil {
			return err
		}
		c, err := tls.Dial("tcp", string(target), &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		if err != nil {
			return nil // refused in the handshake
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		body := []byte(`{"cmd":{"v":1,"op":"vs.del","name":"web"}}`)
		frame := append([]byte{'F', 0, 0, 0, byte(len(body))}, body...)
		if _, err := c.Write(frame); err != nil {
			return nil
		}
		if b, err := io.ReadAll(c); err == nil && len(b) > 0 {
			return fmt.Errorf("a forwarded command with a stolen key pair was answered: %q", b)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// 4. 200 idle connections from x to the Raft port: the follower's
	// write still commits.
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	if err := x.h.Do(func() error {
		for range 200 {
			c, err := net.Dial("tcp", string(target))
			if err != nil {
				return err
			}
			idle = append(idle, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if out, err := follower.ctl("rs", "weight", "web", "203.0.113.12:8080", "4"); err != nil {
		t.Fatalf("a write with 200 idle connections open: %v\n%s", err, out)
	}
	t.Logf("a follower's write with 200 idle connections at the leader: %s", time.Since(start).Round(time.Millisecond))
	base["web/203.0.113.12:8080"] = 4

	// 5. Tables the validator refuses, from directorctl apply -f: named,
	// refused, nothing changed, every node up.
	for _, bad := range []struct {
		extra []string
		check conf.Check
		want  string
	}{
		{check: conf.Check{Type: "http", Extra: []string{`body_regex = "("`}}, want: "health_check.body_regex"},
		{check: conf.Check{Type: "tcp", Interval: "0s"}, want: "health_check.interval: 0s is out of range"},
		{check: conf.Check{Type: "exec", Extra: []string{`command = ["/bin/sh", "-c", "touch /tmp/owned"]`}},
			want: "virtual_server.web.health_check.command: commands never travel through the cluster"},
	} {
		vs := webService
		c := bad.check
		vs.Check = &c
		file := filepath.Join(follower.dir, "bad.toml")
		writeFile(t, file, conf.File{Node: conf.Node{Name: "ops"}, VirtualServers: []conf.VirtualServer{vs}}.String())
		out, err := follower.ctl("apply", "-f", file)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Fatalf("apply of a bad table: %v\n%s", err, out)
		}
		t.Logf("refused: %s", strings.TrimSpace(out))
	}
	tablesAre(t, base, lb1, lb2)
	for _, d := range []*director{lb1, lb2} {
		if d.proc.Exited() {
			t.Fatalf("%s exited:\n%s", d.h.Name, d.proc.Output())
		}
		st, err := d.clusterStatus()
		if err != nil {
			t.Fatal(err)
		}
		if d == leader && st.RefusedConnections == 0 {
			t.Errorf("%s counted no refused connection", d.h.Name)
		}
	}
	if st, err := x.clusterStatus(); err != nil || st.Seeded {
		t.Fatalf("x got the table: %+v %v", st, err)
	}
}

// TestClusterNoSilentMerge: two directors that each formed a cluster
// alone (bootstrap_expect = 1) and then meet refuse to merge, say so on
// both sides, and keep their own tables.
func TestClusterNoSilentMerge(t *testing.T) {
	ds, _ := clusterLab(t, "lb1", "lb2")
	lb1, lb2 := ds[0], ds[1]
	for i, d := range ds {
		f := clusterFile(d, "", 1)
		f.VirtualServers = []conf.VirtualServer{[]conf.VirtualServer{webService, dnsService}[i]}
		writeFile(t, d.conf, f.String())
		d.start()
	}
	raftLeader(t, lb1)
	raftLeader(t, lb2)
	// lb2 restarts knowing lb1: the two meet.
	lb2.stop(t)
	f := clusterFile(lb2, "", 1, lb1.ip)
	f.VirtualServers = []conf.VirtualServer{dnsService}
	writeFile(t, lb2.conf, f.String())
	lb2.start()
	for _, d := range ds {
		if err := lab.Eventually(20*time.Second, func() error {
			st, err := d.clusterStatus()
			if err != nil {
				return err
			}
			if len(st.Conflicts) != 1 || !strings.Contains(st.Conflicts[0], "refusing to merge") {
				return fmt.Errorf("%s: conflicts %v", d.h.Name, st.Conflicts)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v\n%s", err, d.proc.Output())
		}
		if out, _ := d.ctl("cluster"); !strings.Contains(out, "conflict") {
			t.Fatalf("directorctl cluster on %s:\n%s", d.h.Name, out)
		}
	}
	tablesAre(t, map[string]int{"web/203.0.113.11:8080": 1, "web/203.0.113.12:8080": 1}, lb1)
	tablesAre(t, map[string]int{"dns/203.0.113.11:53": 1}, lb2)
}

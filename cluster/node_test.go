package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/directord/directord/cluster/pki"
)

// ports hands out loopback ports for TCP and UDP, each once per test
// binary, from below the kernel's ephemeral range (32768 up): a port
// taken from that range and let go again could be handed to the next
// caller, or to any test's outgoing connection, before its node binds it.
var ports struct {
	sync.Mutex
	used map[int]bool
}

func freePort(t *testing.T) uint16 {
	t.Helper()
	ports.Lock()
	defer ports.Unlock()
	if ports.used == nil {
		ports.used = map[int]bool{}
	}
	for range 10000 {
		p := 20000 + rand.IntN(12000)
		if ports.used[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		u.Close()
		ports.used[p] = true
		return uint16(p)
	}
	t.Fatal("no free loopback port in 20000-31999")
	return 0
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type testNode struct {
	*Node
	log    *syncBuf
	cfg    Config
	cancel context.CancelFunc
	done   chan error
}

func startNode(t *testing.T, cfg Config) *testNode {
	t.Helper()
	buf := &syncBuf{}
	cfg.Logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tn := &testNode{Node: n, log: buf, cfg: cfg, cancel: cancel, done: make(chan error, 1)}
	go func() { tn.done <- n.Run(ctx) }()
	t.Cleanup(tn.stop)
	return tn
}

func (tn *testNode) stop() {
	if tn.cancel != nil {
		tn.cancel()
		<-tn.done
		tn.cancel = nil
	}
}

var testKey = []byte("0123456789abcdef0123456789abcdef")

// nodeConfig is a member of a cluster of members on loopback with a key
// pair from ca.
func nodeConfig(t *testing.T, ca *pki.CA, id string, members []string) Config {
	t.Helper()
	return Config{
		ID: id, DataDir: t.TempDir(), BootstrapExpect: len(members), Members: members,
		Gossip:     netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)),
		Raft:       netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), freePort(t)),
		EncryptKey: testKey, TLS: issue(t, ca, id),
	}
}

// issue is a key pair for name signed by ca.
func issue(t *testing.T, ca *pki.CA, name string) *TLS {
	t.Helper()
	p, err := ca.Issue(name, []netip.Addr{netip.MustParseAddr("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(p.Cert, p.Key)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return NewTLS(cert, pool)
}

func newCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA("directord test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// cluster starts n nodes on loopback that expect each other.
func cluster(t *testing.T, n int) []*testNode {
	t.Helper()
	nodes, _ := clusterCA(t, n)
	return nodes
}

// clusterCA is cluster, and the CA of the members' certificates.
func clusterCA(t *testing.T, n int) ([]*testNode, *pki.CA) {
	t.Helper()
	ca := newCA(t)
	var names []string
	for i := range n {
		names = append(names, fmt.Sprintf("n%d", i))
	}
	var cfgs []Config
	for _, name := range names {
		cfgs = append(cfgs, nodeConfig(t, ca, name, names))
	}
	for i := range cfgs {
		for j := range cfgs {
			if i != j {
				cfgs[i].Peers = append(cfgs[i].Peers, cfgs[j].Gossip.String())
			}
		}
	}
	var nodes []*testNode
	for _, c := range cfgs {
		nodes = append(nodes, startNode(t, c))
	}
	return nodes, ca
}

func waitFor(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leader(t *testing.T, nodes []*testNode) *testNode {
	t.Helper()
	var l *testNode
	waitFor(t, 15*time.Second, func() error {
		for _, n := range nodes {
			if n.cancel != nil && n.Leader() {
				l = n
				return nil
			}
		}
		return errors.New("no leader")
	})
	return l
}

func converged(t *testing.T, nodes []*testNode, names ...string) {
	t.Helper()
	waitFor(t, 10*time.Second, func() error {
		for _, n := range nodes {
			if n.cancel == nil {
				continue
			}
			got := n.State().Names()
			if fmt.Sprint(got) != fmt.Sprint(names) {
				return fmt.Errorf("%s has %v, want %v", n.cfg.ID, got, names)
			}
		}
		return nil
	})
}

func put(name string) Command {
	return Command{Op: OpPutVS, Name: name, Service: json.RawMessage(`{"scheduler":"wrr"}`)}
}

// Three voters (two directors and a witness): writes commit with one
// down; it comes back and catches up; the leader's loss loses nothing.
func TestClusterThreeVoters(t *testing.T) {
	nodes := cluster(t, 3)
	l := leader(t, nodes)
	if err := l.Apply(put("web"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	converged(t, nodes, "web")
	for _, n := range nodes {
		if n != l {
			if err := n.Apply(put("x"), time.Second); err == nil {
				t.Fatal("a follower applied a command")
			}
			// Submit forwards it to the leader and answers when committed.
			if err := n.Submit(put("mail"), 5*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := n.Submit(Command{Op: OpDrain, Name: "nope", Real: "203.0.113.11:80"}, 5*time.Second); !errors.Is(err, ErrCommand) || !strings.Contains(err.Error(), "no virtual server") {
				t.Fatalf("a refused command forwarded: %v", err)
			}
			break
		}
	}
	converged(t, nodes, "mail", "web")

	// The leader dies; the other two elect one and go on.
	l.stop()
	l2 := leader(t, nodes)
	if err := l2.Apply(put("dns"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	converged(t, nodes, "dns", "mail", "web")

	// The old leader restarts from its data dir and catches up.
	back := startNode(t, l.cfg)
	converged(t, []*testNode{back}, "dns", "mail", "web")
	if st := back.Status(); len(st.Members) < 3 || st.Leader == "" {
		t.Fatalf("status after rejoin: %+v", st)
	}
}

// Two voters: with one down nothing can commit, and the write fails
// within its timeout with ErrNoQuorum.
func TestClusterPairNoQuorum(t *testing.T) {
	nodes := cluster(t, 2)
	l := leader(t, nodes)
	if err := l.Apply(put("web"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	converged(t, nodes, "web")
	for _, n := range nodes {
		if n != l {
			n.stop()
		}
	}
	// A write made the instant the peer goes may still enter the log:
	// Raft's last heartbeat can answer for a peer that has just left. It
	// fails with ErrQuorumLost ("may or may not be applied") and may be
	// committed when the cluster heals. Once the leader knows, a write
	// fails with ErrNoQuorum and never enters the log.
	start := time.Now()
	var err error
	waitFor(t, 10*time.Second, func() error {
		err = l.Apply(put("probe"), 500*time.Millisecond)
		if err == nil {
			return errors.New("a write committed with the peer down")
		}
		if !errors.Is(err, ErrNoQuorum) && !errors.Is(err, ErrQuorumLost) {
			t.Fatalf("error %v, want no quorum", err)
		}
		if !errors.Is(err, ErrNoQuorum) {
			return err
		}
		return nil
	})
	t.Logf("write with the peer down: %v (after %s)", err, time.Since(start).Round(time.Millisecond))
	if err := l.Apply(put("dns"), 500*time.Millisecond); !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("write without quorum: %v, want no quorum", err)
	}
	if names := l.State().Names(); fmt.Sprint(names) != "[web]" {
		t.Fatalf("state changed without quorum: %v", names)
	}

	// The peer comes back: the refused write never appears.
	for _, n := range nodes {
		if n != l {
			nodes = append(nodes, startNode(t, n.cfg))
		}
	}
	l2 := leader(t, nodes)
	if err := l2.Apply(put("mail"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		for _, n := range nodes[len(nodes)-1:] {
			names := n.State().Names()
			if slices.Contains(names, "dns") {
				t.Fatalf("%s has the write refused for want of quorum: %v", n.cfg.ID, names)
			}
			if !slices.Contains(names, "mail") || !slices.Contains(names, "web") {
				return fmt.Errorf("%s has %v", n.cfg.ID, names)
			}
		}
		return nil
	})
	if names := l2.State().Names(); slices.Contains(names, "dns") {
		t.Fatalf("the leader has the refused write: %v", names)
	}
}

// A node with another gossip key is not let in.
func TestClusterWrongKey(t *testing.T) {
	nodes := cluster(t, 2)
	leader(t, nodes)
	bad := nodeConfig(t, newCA(t), "intruder", []string{"intruder", "n0", "n1"})
	bad.EncryptKey = []byte("another key, also 32 bytes long!")
	bad.Peers = []string{nodes[0].cfg.Gossip.String()}
	in := startNode(t, bad)
	// The cluster's members log the refusal...
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(nodes[0].log.String(), "decrypt") {
			return errors.New("no refusal logged")
		}
		return nil
	})
	// ...and never list the intruder, nor it them.
	for _, n := range nodes {
		for _, m := range n.Status().Members {
			if m.Name == "intruder" {
				t.Fatalf("%s let the intruder in: %+v", n.cfg.ID, n.Status().Members)
			}
		}
	}
	if in.ml.NumMembers() > 1 {
		t.Fatalf("the intruder joined: %d members", in.ml.NumMembers())
	}
}

// An operator retires a node: the leave is committed, the leader takes it
// out of Raft, and no leader adds it back, the next one included; it says
// it left until it rejoins.
func TestClusterLeave(t *testing.T) {
	nodes := cluster(t, 3)
	l := leader(t, nodes)
	var gone *testNode
	for _, n := range nodes {
		if n != l {
			gone = n
			break
		}
	}
	if err := gone.Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !gone.Left() || !gone.Status().Left {
		t.Fatal("the node does not say it left")
	}
	voters := func(l *testNode) []string {
		f := l.raft.GetConfiguration()
		if f.Error() != nil {
			return nil
		}
		var out []string
		for _, s := range f.Configuration().Servers {
			out = append(out, string(s.ID))
		}
		slices.Sort(out)
		return out
	}
	waitFor(t, 5*time.Second, func() error {
		if v := voters(l); len(v) != 2 || slices.Contains(v, gone.cfg.ID) {
			return fmt.Errorf("voters %v", v)
		}
		return nil
	})
	// A leader change: the new leader knows of the leave from the log.
	l.stop()
	back := startNode(t, l.cfg)
	rest := []*testNode{back}
	for _, n := range nodes {
		if n != l && n != gone {
			rest = append(rest, n)
		}
	}
	l2 := leader(t, rest)
	if err := l2.Apply(put("web"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		l2.reconcileVoters()
	}
	if v := voters(l2); slices.Contains(v, gone.cfg.ID) {
		t.Fatalf("the node that left was added back: voters %v", v)
	}
	// Rejoin brings it back.
	if err := gone.Rejoin(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if v := voters(l2); !slices.Contains(v, gone.cfg.ID) {
			return fmt.Errorf("voters %v after the rejoin", v)
		}
		return nil
	})
	if gone.Left() {
		t.Fatal("still left after the rejoin")
	}
}

// A gossip member with the key and a certificate from the CA, but whose
// name is not among the members, is never made a voter, and cannot write.
func TestClusterStrangerNotVoter(t *testing.T) {
	nodes, ca := clusterCA(t, 2)
	l := leader(t, nodes)
	x := nodeConfig(t, ca, "x", []string{"n0", "n1", "x"})
	x.BootstrapExpect = 3
	x.Peers = []string{nodes[0].cfg.Gossip.String()}
	stranger := startNode(t, x)
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(l.log.String(), "not in [cluster] members is ignored") {
			return errors.New("the stranger was not noticed")
		}
		return nil
	})
	f := l.raft.GetConfiguration()
	if err := f.Error(); err != nil || len(f.Configuration().Servers) != 2 {
		t.Fatalf("voters %+v %v", f.Configuration().Servers, err)
	}
	if err := stranger.Submit(put("evil"), 2*time.Second); err == nil {
		t.Fatal("the stranger committed a write")
	}
	if names := l.State().Names(); len(names) != 0 {
		t.Fatalf("table %v", names)
	}
}

// Two nodes that each formed a cluster alone (bootstrap_expect = 1, or a
// wiped data_dir) refuse to merge when they meet, and say so.
func TestClusterNoSilentMerge(t *testing.T) {
	ca := newCA(t)
	names := []string{"n0", "n1"}
	a, b := nodeConfig(t, ca, "n0", names), nodeConfig(t, ca, "n1", names)
	a.BootstrapExpect, b.BootstrapExpect = 1, 1
	na, nb := startNode(t, a), startNode(t, b)
	for _, n := range []*testNode{na, nb} {
		leader(t, []*testNode{n})
		waitFor(t, 5*time.Second, func() error {
			if n.State().ClusterID == "" {
				return errors.New("no cluster ID yet")
			}
			return nil
		})
	}
	if err := na.Apply(put("a-table"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := nb.Apply(put("b-table"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := na.ml.Join([]string{b.Gossip.String()}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*testNode{na, nb} {
		waitFor(t, 10*time.Second, func() error {
			if c := n.Status().Conflicts; len(c) != 1 || !strings.Contains(c[0], "refusing to merge") {
				return fmt.Errorf("%s conflicts %v", n.cfg.ID, c)
			}
			return nil
		})
	}
	for range 3 {
		na.reconcileVoters()
		nb.reconcileVoters()
	}
	converged(t, []*testNode{na}, "a-table")
	converged(t, []*testNode{nb}, "b-table")
	if !strings.Contains(na.log.String()+nb.log.String(), "a member of another cluster; refusing to merge") {
		t.Fatal("the conflict was not logged")
	}
}

// A restarted node tells its cluster's ID from its first gossip, before
// its log is replayed: a leader of another cluster that it meets then
// refuses it at once instead of taking it for a node without state and
// adding it as a voter.
func TestClusterIDKnownAtRestart(t *testing.T) {
	ca := newCA(t)
	cfg := nodeConfig(t, ca, "n0", []string{"n0", "n1"})
	cfg.BootstrapExpect = 1
	n := startNode(t, cfg)
	leader(t, []*testNode{n})
	var id string
	waitFor(t, 5*time.Second, func() error {
		if id = n.State().ClusterID; id == "" {
			return errors.New("no cluster ID yet")
		}
		// Recorded under data_dir by the node's periodic member check.
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "cluster-id")); err != nil {
			return err
		}
		return nil
	})
	n.stop()
	again, err := New(cfg) // not running yet: nothing replayed
	if err != nil {
		t.Fatal(err)
	}
	m := again.meta()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- again.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if m.Cluster != id || !m.Holds {
		t.Fatalf("restarted, it tells cluster %q (holds %v), want %q", m.Cluster, m.Holds, id)
	}
}

// A snapshot restores the state after a restart, and OnChange hears it.
func TestClusterSnapshotRestart(t *testing.T) {
	nodes := cluster(t, 1)
	l := leader(t, nodes)
	for _, name := range []string{"a", "b", "c"} {
		if err := l.Apply(put(name), 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	cfg := l.cfg
	l.stop()
	var mu sync.Mutex
	var heard []string
	cfg.OnChange = func(s State) {
		mu.Lock()
		heard = s.Names()
		mu.Unlock()
	}
	back := startNode(t, cfg)
	converged(t, []*testNode{back}, "a", "b", "c")
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(heard) != "[a b c]" {
		t.Fatalf("OnChange heard %v", heard)
	}
}

// TestAppMeta: what a node publishes with SetAppMeta reaches the other
// members, changes reach them too, and metadata too big for memberlist
// is refused with the old value kept.
func TestAppMeta(t *testing.T) {
	nodes := cluster(t, 2)
	seen := func(n *testNode, name, want string) func() error {
		return func() error {
			for _, m := range n.Status().Members {
				if m.Name == name && string(m.App) == want {
					return nil
				}
			}
			return fmt.Errorf("%s does not see %s's metadata %s: %+v", n.cfg.ID, name, want, n.Status().Members)
		}
	}
	for _, v := range []string{`{"vrrp":{"VI_1":"MASTER/150"}}`, `{"vrrp":{"VI_1":"BACKUP/150"}}`} {
		if err := nodes[0].SetAppMeta(json.RawMessage(v)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, seen(nodes[1], "n0", v))
	}
	big := json.RawMessage(`"` + strings.Repeat("x", 600) + `"`)
	if err := nodes[0].SetAppMeta(big); err == nil || !strings.Contains(err.Error(), "over memberlist's") {
		t.Fatalf("600 bytes of metadata: %v", err)
	}
	waitFor(t, time.Second, seen(nodes[1], "n0", `{"vrrp":{"VI_1":"BACKUP/150"}}`))
}

// The gossip key rotates without a partition, in three steps
// (docs/security.md): the new key accepted everywhere, then used,
// then the old one dropped. The members stay alive to each other.
func TestGossipKeyRotation(t *testing.T) {
	nodes := cluster(t, 2)
	leader(t, nodes)
	newKey := []byte("the next gossip key, 32 bytes ok")
	alive := func(step string) {
		t.Helper()
		for _, n := range nodes {
			other := nodes[0]
			if n == other {
				other = nodes[1]
			}
			waitFor(t, 5*time.Second, func() error {
				if _, err := n.Ping(other.cfg.ID); err != nil {
					return fmt.Errorf("%s: %s does not answer %s: %v", step, other.cfg.ID, n.cfg.ID, err)
				}
				return nil
			})
		}
	}
	steps := []struct {
		name    string
		primary []byte
		old     [][]byte
	}{
		{"new key accepted", testKey, [][]byte{newKey}},
		{"new key used", newKey, [][]byte{testKey}},
		{"old key dropped", newKey, nil},
	}
	for _, st := range steps {
		for _, n := range nodes {
			if err := n.SetGossipKeys(st.primary, st.old); err != nil {
				t.Fatal(err)
			}
		}
		alive(st.name)
	}
	for _, n := range nodes {
		if keys := n.keyring.GetKeys(); len(keys) != 1 || !bytes.Equal(n.keyring.GetPrimaryKey(), newKey) {
			t.Fatalf("%s keeps %d keys", n.cfg.ID, len(keys))
		}
	}
}

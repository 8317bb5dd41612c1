package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// Config configures a node.
type Config struct {
	// ID names the node in Raft and memberlist; unique in the cluster.
	ID      string
	DataDir string // Raft's log, stable store and snapshots
	// Gossip is memberlist's address; Raft is Raft's. Both are also the
	// addresses peers use, so they must not be unspecified.
	Gossip, Raft netip.AddrPort
	// Peers are other nodes' gossip addresses to join.
	Peers []string
	// Members names every node that may vote, this one included: a
	// gossip member or a certificate naming anyone else is ignored.
	Members []string
	// BootstrapExpect is the number of voters that form the cluster the
	// first time (2 for a pair, 3 with a witness).
	BootstrapExpect int
	// EncryptKey, 16, 24 or 32 bytes, encrypts and authenticates gossip;
	// EncryptKeysOld are still accepted from others (a rotation).
	EncryptKey     []byte
	EncryptKeysOld [][]byte
	// Witness nodes vote but run no data plane.
	Witness bool
	// TLS authenticates Raft and forwarded commands: every connection is
	// mutual TLS between certificates that name members. Required.
	TLS    *TLS
	Logger *slog.Logger
	// Validate judges every virtual server a command carries: the leader
	// refuses a command with one it refuses, and every node leaves out
	// one that was committed all the same. Nil accepts everything.
	Validate Validator
	// OnChange is called with the state after every applied command and
	// restore, in order; it must not block for long.
	OnChange func(State)
}

// Node is one member of the cluster.
type Node struct {
	cfg  Config
	log  *slog.Logger
	fsm  *fsm
	raft *raft.Raft
	ml   *memberlist.Memberlist
	logs io.Closer

	stream  *stream
	keyring *memberlist.Keyring

	mu        sync.Mutex
	members   map[string]member
	bootstrap bool
	joining   atomic.Bool
	left      atomic.Bool     // this node ran Leave: it no longer joins the gossip
	app       json.RawMessage // this node's application metadata (SetAppMeta)
	ignored   map[string]bool // gossip members that are not voters, logged once
	conflicts map[string]string
	sent      []byte // the metadata last published
	// savedID is the cluster ID as last written under data_dir: a
	// restarted node tells it from its first gossip, before its log is
	// replayed, so a leader of another cluster never takes it for a
	// node without state.
	savedID string
	waiting bool // logged that peers hold state and this node waits
}

// envelope carries a command forwarded to the leader over mutual TLS.
type envelope struct {
	Cmd *Command `json:"cmd,omitempty"`
	// Remove asks the leader to take the asking node out of Raft; a node
	// can take out only itself.
	Remove string `json:"remove,omitempty"`
}

// answer is the leader's reply to an envelope.
type answer struct {
	Err string `json:"err,omitempty"`
	// Kind names the sentinel Err wraps ("refused", "not_leader",
	// "no_quorum", "quorum_lost"), so that the asking node's caller can
	// tell them apart as if the leader were local.
	Kind string `json:"kind,omitempty"`
}

// answerKinds are the sentinels an answer carries by name.
var answerKinds = map[string]error{"refused": ErrCommand, "not_leader": errNotLeader, "no_quorum": ErrNoQuorum, "quorum_lost": ErrQuorumLost}

// answerOf is the answer for err.
func answerOf(err error) answer {
	if err == nil {
		return answer{}
	}
	a := answer{Err: err.Error()}
	for kind, sentinel := range answerKinds {
		if errors.Is(err, sentinel) {
			a.Kind = kind
		}
	}
	return a
}

// remoteError is the leader's error, as it said it, still matching its
// sentinel with errors.Is.
type remoteError struct {
	msg  string
	kind error
}

func (e remoteError) Error() string { return e.msg }
func (e remoteError) Unwrap() error { return e.kind }

type member struct {
	name   string
	raft   string
	gossip string
	state  string
	role   string
	app    json.RawMessage
	// cluster is the ID of the cluster whose state the member holds, or
	// "" before it holds any.
	cluster string
	holds   bool // it holds Raft state (bootstrapped or added)
	leader  bool
}

// meta is what a node tells the others about itself through memberlist.
type meta struct {
	Raft    string `json:"raft"`
	Witness bool   `json:"witness,omitempty"`
	// App is what the application says of this node (SetAppMeta): for
	// directord its VRRP states, table digest and sync, so that a
	// director can tell whether its peer is ready to take over.
	App json.RawMessage `json:"app,omitempty"`
	// Cluster is the ID of the cluster this node's state belongs to;
	// Holds says it has Raft state at all. A node without state does
	// not bootstrap while a peer has some, and a leader never adds a
	// member of another cluster.
	Cluster string `json:"cluster,omitempty"`
	Holds   bool   `json:"holds,omitempty"`
	Leader  bool   `json:"leader,omitempty"`
}

// errNotLeader: a command reached a node that does not lead (any more).
var errNotLeader = errors.New("not the leader")

// ErrNoQuorum is returned by Apply when no leader can commit: nothing
// was written.
var ErrNoQuorum = errors.New("no quorum: a majority of the cluster's voters is not reachable, nothing was changed")

// ErrQuorumLost is returned by Apply when the majority went away while
// the change was being committed: it may still be applied when the
// cluster heals.
var ErrQuorumLost = errors.New("quorum lost while committing: the change may or may not be applied when the cluster heals")

// New starts a node: Raft with its stores under DataDir, and memberlist,
// joining Peers. It does not wait for a leader.
func New(cfg Config) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, members: map[string]member{}, ignored: map[string]bool{}, conflicts: map[string]string{}}
	n.fsm = newFSM(cfg.OnChange, cfg.Validate)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster data_dir: %w", err)
	}
	if _, err := os.Stat(n.leftFile()); err == nil {
		n.left.Store(true)
	}
	if b, err := os.ReadFile(n.idFile()); err == nil {
		n.savedID = strings.TrimSpace(string(b))
	}
	if err := n.startRaft(); err != nil {
		return nil, err
	}
	if err := n.startGossip(); err != nil {
		n.raft.Shutdown().Error()
		n.logs.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) startRaft() error {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.ID)
	// A LAN pair: a lost leader is noticed within about a second.
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 250 * time.Millisecond
	rc.CommitTimeout = 5 * time.Millisecond // followers learn of a commit within this
	rc.SnapshotThreshold = 1024
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: logWriter(n.log, "raft"), JSONFormat: true, DisableTime: true})
	store, err := raftboltdb.NewBoltStore(filepath.Join(n.cfg.DataDir, "raft.db"))
	if err != nil {
		return fmt.Errorf("raft store: %w", err)
	}
	n.logs = store
	snaps, err := raft.NewFileSnapshotStore(n.cfg.DataDir, 2, logWriter(n.log, "raft-snapshots"))
	if err != nil {
		store.Close()
		return fmt.Errorf("raft snapshots: %w", err)
	}
	addr, err := net.ResolveTCPAddr("tcp", n.cfg.Raft.String())
	if err != nil {
		store.Close()
		return err
	}
	// The transport's timeout bounds a dial to a dead peer, which a
	// shutdown waits for: on a LAN a second is plenty.
	const rpcTimeout = time.Second
	stream, err := newStream(n.cfg.Raft.String(), addr, n.cfg.TLS, n.isMember, n.expectAt, n.log, n.serveRPC)
	if err != nil {
		store.Close()
		return fmt.Errorf("raft transport on %s: %w", n.cfg.Raft, err)
	}
	n.stream = stream
	trans := raft.NewNetworkTransport(stream, 3, rpcTimeout, logWriter(n.log, "raft-transport"))
	r, err := raft.NewRaft(rc, n.fsm, store, store, snaps, trans)
	if err != nil {
		store.Close()
		return fmt.Errorf("raft: %w", err)
	}
	n.raft = r
	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return err
	}
	n.bootstrap = existing
	return nil
}

func (n *Node) startGossip() error {
	mc := memberlist.DefaultLANConfig()
	mc.Name = n.cfg.ID
	mc.BindAddr = n.cfg.Gossip.Addr().String()
	mc.BindPort = int(n.cfg.Gossip.Port())
	mc.AdvertiseAddr = mc.BindAddr
	mc.AdvertisePort = mc.BindPort
	// Two or three directors on one LAN: a dead peer is confirmed in
	// about a second rather than memberlist's default seven.
	mc.ProbeInterval = 200 * time.Millisecond
	mc.ProbeTimeout = 100 * time.Millisecond
	mc.SuspicionMult = 3
	mc.GossipInterval = 50 * time.Millisecond
	mc.TCPTimeout = 2 * time.Second
	// Gossip packets are small; a forwarded command can be a megabyte of
	// JSON, which LZW took about 20 ms to pack and unpack.
	mc.EnableCompression = false
	kr, err := memberlist.NewKeyring(n.cfg.EncryptKeysOld, n.cfg.EncryptKey)
	if err != nil {
		return fmt.Errorf("gossip keys: %w", err)
	}
	n.keyring = kr
	mc.Keyring = kr
	mc.LogOutput = logWriter(n.log, "memberlist")
	mc.Delegate = &delegate{n: n}
	mc.Events = &events{n: n}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("memberlist on %s: %w", n.cfg.Gossip, err)
	}
	n.ml = ml
	return nil
}

// Run joins the peers, keeps trying while none answers, bootstraps Raft
// when the expected voters are there, and adds voters that join later.
// It returns when ctx ends, after leaving the cluster's gossip.
func (n *Node) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		// (Re)join peers that are not alive members: at start, and after a
		// partition, when memberlist has given up on them. In the
		// background: a join to an unreachable peer waits for its TCP
		// timeout, and must not hold up the rest, nor a shutdown.
		if missing := n.missingPeers(); len(missing) > 0 && n.joining.CompareAndSwap(false, true) {
			go func() {
				defer n.joining.Store(false)
				if _, err := n.ml.Join(missing); err != nil {
					n.log.Debug("cluster join", "peers", missing, "err", err)
				}
			}()
		}
		n.maybeBootstrap()
		n.checkMembers()
		n.maybeInit()
		n.reconcileVoters()
		select {
		case <-ctx.Done():
			n.ml.Leave(time.Second)
			n.ml.Shutdown()
			err := n.raft.Shutdown().Error()
			n.stream.Close()
			n.logs.Close()
			return err
		case <-t.C:
		}
	}
}

// check refuses a configuration that would let strangers in.
func (c Config) check() error {
	switch {
	case c.TLS == nil:
		return errors.New("cluster: mutual TLS is required (tls_cert, tls_key, tls_ca)")
	case len(c.EncryptKey) == 0:
		return errors.New("cluster: a gossip key is required (encrypt_key)")
	case !slices.Contains(c.Members, c.ID):
		return fmt.Errorf("cluster: members %v do not name this node, %s", c.Members, c.ID)
	}
	names, err := c.TLS.Names()
	if err != nil {
		return fmt.Errorf("cluster tls_cert: %w", err)
	}
	if !slices.Contains(names, c.ID) {
		return fmt.Errorf("cluster tls_cert names %v, not this node (%s): the peers would refuse it", names, c.ID)
	}
	return nil
}

func (n *Node) isMember(name string) bool { return slices.Contains(n.cfg.Members, name) }

// expectAt names the member gossip says listens for Raft at addr.
func (n *Node) expectAt(addr string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.members {
		if m.raft == addr && n.isMember(m.name) {
			return m.name
		}
	}
	return ""
}

func (n *Node) missingPeers() []string {
	// From what the events recorded (see alive).
	alive := map[string]bool{}
	n.mu.Lock()
	for _, m := range n.members {
		if m.state == "alive" {
			alive[m.gossip] = true
		}
	}
	n.mu.Unlock()
	var out []string
	for _, p := range n.cfg.Peers {
		if !alive[p] {
			out = append(out, p)
		}
	}
	return out
}

// maybeBootstrap forms the cluster the first time, once BootstrapExpect
// members know each other and none of them holds Raft state: each
// bootstraps with the same voters, which Raft accepts once. A node whose
// peers already hold state waits for their leader to add it: a wiped
// data_dir must not start a second cluster beside the first.
func (n *Node) maybeBootstrap() {
	n.mu.Lock()
	if n.bootstrap {
		n.mu.Unlock()
		return
	}
	var servers []raft.Server
	var holders []string
	for _, m := range n.members {
		if m.state != "alive" || m.raft == "" || !n.isMember(m.name) {
			continue
		}
		if m.holds && m.name != n.cfg.ID {
			holders = append(holders, m.name)
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.name), Address: raft.ServerAddress(m.raft)})
	}
	if len(holders) > 0 {
		first := !n.waiting
		n.waiting = true
		n.mu.Unlock()
		if first {
			n.log.Info("cluster: not bootstrapping: peers already hold the cluster's state; waiting for their leader to add this node", "peers", holders)
		}
		return
	}
	if len(servers) < max(n.cfg.BootstrapExpect, 1) {
		n.mu.Unlock()
		return
	}
	n.bootstrap = true
	n.mu.Unlock()
	slices.SortFunc(servers, func(a, b raft.Server) int { return strings.Compare(string(a.ID), string(b.ID)) })
	err := n.raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error()
	if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		n.log.Error("cluster bootstrap failed", "err", err)
		return
	}
	n.log.Info("cluster bootstrapped", "voters", len(servers))
	n.publish()
}

// maybeInit, on the leader of a new cluster, commits the cluster's ID:
// members of two clusters that formed apart can then tell they are not
// one.
func (n *Node) maybeInit() {
	if n.raft.State() != raft.Leader || n.fsm.State().ClusterID != "" {
		return
	}
	id := make([]byte, 8)
	rand.Read(id)
	if err := n.Apply(Command{Op: OpInit, Name: hex.EncodeToString(id)}, 5*time.Second); err != nil {
		n.log.Warn("cluster: committing the cluster ID failed; retrying", "err", err)
		return
	}
	n.publish()
}

// checkMembers records the members that belong to another cluster, and
// logs each once: two clusters that meet never merge.
func (n *Node) checkMembers() {
	own := n.fsm.State().ClusterID
	n.saveID(own)
	n.publish()
	n.mu.Lock()
	var news []member
	for _, m := range n.members {
		foreign := own != "" && m.cluster != "" && m.cluster != own && m.state == "alive"
		_, known := n.conflicts[m.name]
		switch {
		case foreign && !known:
			n.conflicts[m.name] = fmt.Sprintf("%s belongs to another cluster (%s; this one is %s): refusing to merge; wipe one side's data_dir to join it to the other", m.name, m.cluster, own)
			news = append(news, m)
		case !foreign && known:
			delete(n.conflicts, m.name)
		}
	}
	n.mu.Unlock()
	for _, m := range news {
		n.log.Error("cluster: a member of another cluster; refusing to merge", "node", m.name, "its_cluster", m.cluster, "this_cluster", own)
	}
}

// reconcileVoters, on the leader, adds alive configured members Raft
// does not know, unless they left or belong to another cluster. Gossip
// members that are not configured members are ignored (logged once).
func (n *Node) reconcileVoters() {
	if n.raft.State() != raft.Leader {
		return
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	known := map[raft.ServerID]bool{}
	for _, s := range f.Configuration().Servers {
		known[s.ID] = true
	}
	st := n.fsm.State()
	n.mu.Lock()
	var add []member
	var strangers []string
	for _, m := range n.members {
		if m.state != "alive" || m.raft == "" || known[raft.ServerID(m.name)] || st.Left[m.name] {
			continue
		}
		if !n.isMember(m.name) {
			if !n.ignored[m.name] {
				n.ignored[m.name] = true
				strangers = append(strangers, m.name)
			}
			continue
		}
		if _, foreign := n.conflicts[m.name]; foreign {
			continue
		}
		add = append(add, m)
	}
	n.mu.Unlock()
	for _, name := range strangers {
		n.log.Warn("cluster: a gossip member that is not in [cluster] members is ignored", "node", name)
	}
	for _, m := range add {
		if err := n.raft.AddVoter(raft.ServerID(m.name), raft.ServerAddress(m.raft), 0, 5*time.Second).Error(); err != nil {
			n.log.Warn("cluster: adding a voter failed", "node", m.name, "err", err)
			continue
		}
		n.log.Info("cluster: voter added", "node", m.name, "raft", m.raft)
	}
}

// Apply commits c and returns when it is applied here. Only the leader
// can; others get an error naming the leader. Without a majority it fails
// with ErrNoQuorum within timeout.
func (n *Node) Apply(c Command, timeout time.Duration) error {
	c.V = CommandVersion
	if err := c.check(n.cfg.Validate); err != nil {
		return err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	if len(b) > MaxCommand {
		return fmt.Errorf("%w: %d bytes, over the limit of %d", ErrCommand, len(b), MaxCommand)
	}
	if n.raft.State() != raft.Leader {
		addr, id := n.raft.LeaderWithID()
		if addr == "" {
			return ErrNoQuorum
		}
		return fmt.Errorf("%w: %s (%s) is", errNotLeader, id, addr)
	}
	// Confirm the majority first, so that a write while a peer is down
	// fails without entering the log: an entry appended without quorum
	// could still be committed when the cluster heals.
	verify := make(chan error, 1)
	go func() { verify <- n.raft.VerifyLeader().Error() }()
	select {
	case err := <-verify:
		if err != nil {
			return ErrNoQuorum
		}
	case <-time.After(timeout):
		return ErrNoQuorum
	}
	f := n.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrEnqueueTimeout) {
			return fmt.Errorf("%w: %v", ErrQuorumLost, err)
		}
		return err
	}
	if err, ok := f.Response().(error); ok {
		return err
	}
	if c.Op == OpLeave {
		// Recorded first, so that no later leader adds it back.
		if err := n.raft.RemoveServer(raft.ServerID(c.Name), 0, timeout).Error(); err != nil {
			return fmt.Errorf("remove %s from raft: %w", c.Name, err)
		}
		n.log.Info("cluster: node removed", "node", c.Name)
	}
	return nil
}

// Submit commits c from any node: the leader applies it, a follower
// forwards it to the leader over mutual TLS and waits for the answer.
func (n *Node) Submit(c Command, timeout time.Duration) error {
	return n.submit(c, timeout)
}

// Leave takes this node out of the cluster for good (an operator retiring
// it): the leave is committed, so that no leader adds it back, and the
// leader removes it from Raft. It stays in the gossip, as a member that
// left, and keeps its last table, but is not eligible for VRRP MASTER
// (see Left) until Rejoin.
func (n *Node) Leave(timeout time.Duration) error {
	if err := n.submit(Command{Op: OpLeave, Name: n.cfg.ID}, timeout); err != nil {
		return err
	}
	n.left.Store(true)
	if err := os.WriteFile(n.leftFile(), []byte("left\n"), 0o600); err != nil {
		n.log.Error("cluster: recording the leave on disk failed", "err", err)
	}
	return nil
}

// Rejoin undoes Leave: the leader adds this node back as a voter.
func (n *Node) Rejoin(timeout time.Duration) error {
	if err := n.submit(Command{Op: OpRejoin, Name: n.cfg.ID}, timeout); err != nil {
		return err
	}
	n.left.Store(false)
	if err := os.Remove(n.leftFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// SetGossipKeys makes primary the key gossip is sent with, and primary
// and old the keys it is accepted with: a rotation without a partition
// (every member first learns the new key as an old one, then each makes
// it primary, then the old one is dropped).
func (n *Node) SetGossipKeys(primary []byte, old [][]byte) error {
	kr := n.keyring
	for _, k := range append([][]byte{primary}, old...) {
		if err := kr.AddKey(k); err != nil {
			return fmt.Errorf("gossip key: %w", err)
		}
	}
	if err := kr.UseKey(primary); err != nil {
		return fmt.Errorf("gossip key: %w", err)
	}
	for _, k := range kr.GetKeys() {
		if !bytes.Equal(k, primary) && !slices.ContainsFunc(old, func(o []byte) bool { return bytes.Equal(o, k) }) {
			if err := kr.RemoveKey(k); err != nil {
				return fmt.Errorf("gossip key: %w", err)
			}
		}
	}
	return nil
}

// Left reports whether this node left the cluster (Leave) and has not
// rejoined: a director that left must not serve as MASTER with a table
// nobody updates.
func (n *Node) Left() bool { return n.left.Load() }

func (n *Node) leftFile() string { return filepath.Join(n.cfg.DataDir, "left") }

func (n *Node) idFile() string { return filepath.Join(n.cfg.DataDir, "cluster-id") }

// saveID writes the cluster's ID under data_dir once the state names it.
func (n *Node) saveID(id string) {
	n.mu.Lock()
	same := id == "" || id == n.savedID
	n.mu.Unlock()
	if same {
		return
	}
	if err := os.WriteFile(n.idFile(), []byte(id+"\n"), 0o600); err != nil {
		n.log.Error("cluster: recording the cluster ID on disk failed", "err", err)
		return
	}
	n.mu.Lock()
	n.savedID = id
	n.mu.Unlock()
}

func (n *Node) submit(c Command, timeout time.Duration) error {
	// Right after a leader is lost an election takes a moment: look for
	// a leader that takes the command for a little while, not the whole
	// timeout, so that a cluster without quorum answers fast.
	find := time.Now().Add(min(timeout, 3*time.Second))
	b, err := json.Marshal(envelope{Cmd: &c})
	if err != nil {
		return err
	}
	var lastErr error = ErrNoQuorum
	for {
		if n.Leader() {
			return n.Apply(c, timeout)
		}
		addr, id := n.raft.LeaderWithID()
		if id == "" {
			// A node outside the Raft configuration (one that left)
			// learns the leader from gossip-less RPC: ask the members.
			addr, id = n.anyLeader()
		}
		if id != "" {
			out, err := n.stream.call(string(addr), string(id), b, timeout+time.Second)
			if err == nil {
				var a answer
				if err := json.Unmarshal(out, &a); err != nil {
					return fmt.Errorf("the leader %s answered %d bytes that are not an answer: %w", id, len(out), err)
				}
				switch {
				case a.Err == "":
					return nil
				case a.Kind != "not_leader":
					return remoteError{msg: a.Err, kind: answerKinds[a.Kind]}
				}
				// Leadership moved while the command was on its way: it
				// was not applied; find the new leader.
				lastErr = fmt.Errorf("%w (%s)", ErrNoQuorum, a.Err)
			} else if !errors.Is(err, net.ErrClosed) && !isDialError(err) {
				return fmt.Errorf("the leader %s did not answer: the change may or may not be applied: %w", id, err)
			} else {
				// Not sent: the leader is gone; wait for the next one.
				lastErr = fmt.Errorf("%w (the leader %s is unreachable: %v)", ErrNoQuorum, id, err)
			}
		}
		if time.Now().After(find) {
			return lastErr
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// anyLeader is the leader named by a member's gossip, for a node that
// Raft no longer tells.
func (n *Node) anyLeader() (raft.ServerAddress, raft.ServerID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.members {
		if m.state == "alive" && m.leader && n.isMember(m.name) {
			return raft.ServerAddress(m.raft), raft.ServerID(m.name)
		}
	}
	return "", ""
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// serveRPC answers one connection of forwarded commands from the member
// peer, authenticated by its certificate.
func (n *Node) serveRPC(peer string, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	b, err := readFrame(c, MaxCommand)
	if err != nil {
		n.log.Warn("cluster: reading a forwarded command failed", "peer", peer, "err", err)
		return
	}
	var e envelope
	var refused error
	switch err := json.Unmarshal(b, &e); {
	case err != nil || e.Cmd == nil:
		refused = fmt.Errorf("%w: not a command", ErrCommand)
	case e.Cmd.Op == OpInit:
		refused = fmt.Errorf("%w: %s is the leader's own", ErrCommand, OpInit)
	case (e.Cmd.Op == OpLeave || e.Cmd.Op == OpRejoin) && e.Cmd.Name != peer:
		refused = fmt.Errorf("%w: %s may take only itself out or back in, not %s", ErrCommand, peer, e.Cmd.Name)
	default:
		refused = n.Apply(*e.Cmd, 5*time.Second)
	}
	out, _ := json.Marshal(answerOf(refused))
	if err := writeFrame(c, out); err != nil {
		n.log.Warn("cluster: answering a forwarded command failed", "peer", peer, "err", err)
	}
}

// Ping asks a member directly whether it answers: the failure detector
// takes a second or more to call a node that just died dead.
func (n *Node) Ping(name string) (time.Duration, error) {
	to := n.alive(name)
	if to == nil {
		return 0, fmt.Errorf("%s is not alive", name)
	}
	return n.ml.Ping(name, &net.UDPAddr{IP: to.Addr, Port: int(to.Port)})
}

// alive returns a node to send to, if it is alive, made from what the
// events recorded: memberlist updates the nodes that Members returns in
// place, under a lock of its own, so reading their addresses races.
func (n *Node) alive(name string) *memberlist.Node {
	n.mu.Lock()
	m, ok := n.members[name]
	n.mu.Unlock()
	if !ok || m.state != "alive" {
		return nil
	}
	ap, err := netip.ParseAddrPort(m.gossip)
	if err != nil {
		return nil
	}
	return &memberlist.Node{Name: name, Addr: ap.Addr().AsSlice(), Port: ap.Port()}
}

// State is the last committed state applied here.
func (n *Node) State() State { return n.fsm.State() }

// AppliedIndex is the index of the last log entry applied here.
func (n *Node) AppliedIndex() uint64 { return n.raft.AppliedIndex() }

// Leader reports whether this node leads.
func (n *Node) Leader() bool { return n.raft.State() == raft.Leader }

// Status is what directorctl cluster shows.
type Status struct {
	ID          string         `json:"id"`
	Role        string         `json:"role"` // director or witness
	RaftState   string         `json:"raft_state"`
	Leader      string         `json:"leader"`
	Term        string         `json:"term"`
	CommitIndex string         `json:"commit_index"`
	Applied     uint64         `json:"applied_index"`
	LastContact string         `json:"last_contact"`
	RaftTLS     bool           `json:"raft_tls"`
	Gossip      string         `json:"gossip_encryption"` // "aes" or "none"
	Members     []MemberStatus `json:"members"`
	// ClusterID is the ID the first leader committed.
	ClusterID string `json:"cluster_id,omitempty"`
	// Left: this node ran Leave and has not rejoined.
	Left bool `json:"left,omitempty"`
	// Conflicts say which members belong to another cluster.
	Conflicts []string `json:"conflicts,omitempty"`
	// Refused counts connections to the Raft port that failed
	// authentication or found no room.
	Refused uint64 `json:"refused_connections"`
}

// MemberStatus is one member as memberlist sees it.
type MemberStatus struct {
	Name   string `json:"name"`
	Gossip string `json:"gossip"`
	Raft   string `json:"raft"`
	State  string `json:"state"`
	Role   string `json:"role"`
	// App is the member's application metadata as last gossiped.
	App json.RawMessage `json:"app,omitempty"`
}

func (n *Node) Status() Status {
	st := n.raft.Stats()
	_, leader := n.raft.LeaderWithID()
	s := Status{ID: n.cfg.ID, Role: role(n.cfg.Witness), RaftState: n.raft.State().String(), Leader: string(leader),
		Term: st["term"], CommitIndex: st["commit_index"], Applied: n.raft.AppliedIndex(), LastContact: st["last_contact"],
		RaftTLS: n.cfg.TLS != nil, Gossip: "none", ClusterID: n.fsm.State().ClusterID, Left: n.left.Load(),
		Refused: n.stream.refused.Load()}
	if len(n.cfg.EncryptKey) > 0 {
		s.Gossip = "aes"
	}
	n.mu.Lock()
	for _, m := range n.members {
		s.Members = append(s.Members, MemberStatus{Name: m.name, Gossip: m.gossip, Raft: m.raft, State: m.state, Role: m.role, App: m.app})
	}
	for _, c := range n.conflicts {
		s.Conflicts = append(s.Conflicts, c)
	}
	n.mu.Unlock()
	slices.Sort(s.Conflicts)
	slices.SortFunc(s.Members, func(a, b MemberStatus) int { return strings.Compare(a.Name, b.Name) })
	return s
}

func role(witness bool) string {
	if witness {
		return "witness"
	}
	return "director"
}

type delegate struct{ n *Node }

func (d *delegate) NodeMeta(limit int) []byte {
	m := d.n.meta()
	b, _ := json.Marshal(m)
	if len(b) > limit {
		// SetAppMeta refuses what does not fit; this is a last guard.
		m.App = nil
		b, _ = json.Marshal(m)
	}
	return b
}

// meta is what this node gossips about itself now.
func (n *Node) meta() meta {
	n.mu.Lock()
	defer n.mu.Unlock()
	id := n.fsm.State().ClusterID
	if id == "" {
		id = n.savedID // restarted, the log not replayed yet
	}
	return meta{Raft: n.cfg.Raft.String(), Witness: n.cfg.Witness, App: n.app, Cluster: id,
		Holds: n.bootstrap || (n.raft != nil && n.raft.LastIndex() > 0), Leader: n.raft != nil && n.raft.State() == raft.Leader}
}

// publish gossips this node's metadata again when it changed.
func (n *Node) publish() {
	b, _ := json.Marshal(n.meta())
	n.mu.Lock()
	same := bytes.Equal(b, n.sent)
	n.sent = b
	n.mu.Unlock()
	if same || n.ml == nil {
		return
	}
	if err := n.ml.UpdateNode(time.Second); err != nil {
		n.log.Debug("cluster: publish node metadata", "err", err)
	}
}

// SetAppMeta publishes b, a JSON value, as this node's application
// metadata: every member sees it in Status().Members within a few gossip
// rounds. It is refused when it would not fit in memberlist's node meta.
func (n *Node) SetAppMeta(b json.RawMessage) error {
	mt := n.meta()
	mt.App = b
	m, _ := json.Marshal(mt)
	if len(m) > memberlist.MetaMaxSize {
		return fmt.Errorf("cluster: node metadata of %d bytes is over memberlist's %d", len(m), memberlist.MetaMaxSize)
	}
	n.mu.Lock()
	n.app = slices.Clone(b)
	n.mu.Unlock()
	n.publish()
	return nil
}

// NotifyMsg drops what peers send: gossip carries membership and
// metadata only; commands go over mutual TLS.
func (d *delegate) NotifyMsg(b []byte)                         {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

type events struct{ n *Node }

func (e *events) set(node *memberlist.Node, state string) {
	var m meta
	_ = json.Unmarshal(node.Meta, &m)
	e.n.mu.Lock()
	old, known := e.n.members[node.Name]
	e.n.members[node.Name] = member{name: node.Name, raft: m.Raft, gossip: node.Address(), state: state, role: role(m.Witness),
		app: slices.Clone(m.App), cluster: m.Cluster, holds: m.Holds, leader: m.Leader}
	e.n.mu.Unlock()
	// Metadata updates come often; only a change of state is news.
	if !known || old.state != state {
		e.n.log.Info("cluster member", "node", node.Name, "state", state, "gossip", node.Address())
	}
}

func (e *events) NotifyJoin(node *memberlist.Node)   { e.set(node, "alive") }
func (e *events) NotifyLeave(node *memberlist.Node)  { e.set(node, "left or failed") }
func (e *events) NotifyUpdate(node *memberlist.Node) { e.set(node, "alive") }

// logWriter turns a library's log lines into slog records with their
// level, message and fields: hclog's JSON lines (Raft) and the standard
// logger's "2006/01/02 15:04:05 [WARN] memberlist: ..." lines, so that
// they read like directord's own, not nested in a message.
func logWriter(log *slog.Logger, component string) io.Writer {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			level, msg, attrs := parseLibLine(sc.Text(), component)
			log.Log(context.Background(), level, msg, append([]any{"component", component}, attrs...)...)
		}
	}()
	return pw
}

// parseLibLine reads one library log line; see logWriter.
func parseLibLine(line, component string) (slog.Level, string, []any) {
	levelOf := func(s string) slog.Level {
		switch strings.ToUpper(strings.Trim(s, "[] ")) {
		case "ERR", "ERROR":
			return slog.LevelError
		case "WARN", "WARNING":
			return slog.LevelWarn
		case "DEBUG", "TRACE":
			return slog.LevelDebug
		}
		return slog.LevelInfo
	}
	if strings.HasPrefix(line, "{") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			level, _ := m["@level"].(string)
			msg, _ := m["@message"].(string)
			var attrs []any
			keys := make([]string, 0, len(m))
			for k := range m {
				if !strings.HasPrefix(k, "@") {
					keys = append(keys, k)
				}
			}
			slices.Sort(keys)
			for _, k := range keys {
				attrs = append(attrs, k, m[k])
			}
			return levelOf(level), msg, attrs
		}
	}
	// The standard logger: a date and time, then "[LEVEL] component: msg".
	i := strings.Index(line, "[")
	j := strings.Index(line, "] ")
	if i < 0 || j < i {
		return slog.LevelInfo, line, nil
	}
	msg := strings.TrimPrefix(line[j+2:], component+": ")
	return levelOf(line[i : j+1]), msg, nil
}

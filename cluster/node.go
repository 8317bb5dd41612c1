package cluster

import (
	"bufio"
	"bytes"
	"context"
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
	// BootstrapExpect is the number of voters that form the cluster the
	// first time (2 for a pair, 3 with a witness).
	BootstrapExpect int
	// EncryptKey, 16, 24 or 32 bytes, encrypts and authenticates gossip.
	EncryptKey []byte
	// Witness nodes vote but run no data plane.
	Witness bool
	// TLS, when set, secures Raft with mutual certificate checks.
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

	mu        sync.Mutex
	members   map[string]member
	bootstrap bool
	pending   map[uint64]chan string // forwarded commands awaiting the leader's answer
	nextReq   uint64
	retired   map[string]bool // nodes the leader took out: never re-added
	joining   atomic.Bool
	app       json.RawMessage // this node's application metadata (SetAppMeta)
}

// envelope carries a forwarded command to the leader and its answer back,
// over memberlist's reliable (TCP) channel.
type envelope struct {
	Req  uint64   `json:"req"`
	From string   `json:"from,omitempty"` // the asking node, for the answer
	Cmd  *Command `json:"cmd,omitempty"`
	Err  string   `json:"err,omitempty"`
	Done bool     `json:"done,omitempty"` // an answer
	// Remove asks the leader to take the named node out of Raft.
	Remove string `json:"remove,omitempty"`
}

type member struct {
	name   string
	raft   string
	gossip string
	state  string
	role   string
	app    json.RawMessage
}

// meta is what a node tells the others about itself through memberlist.
type meta struct {
	Raft    string `json:"raft"`
	Witness bool   `json:"witness,omitempty"`
	// App is what the application says of this node (SetAppMeta): for
	// directord its VRRP states, table digest and sync, so that a
	// director can tell whether its peer is ready to take over.
	App json.RawMessage `json:"app,omitempty"`
}

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
	n := &Node{cfg: cfg, log: cfg.Logger, members: map[string]member{}, pending: map[uint64]chan string{}, retired: map[string]bool{}}
	n.fsm = newFSM(cfg.OnChange, cfg.Validate)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster data_dir: %w", err)
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
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: logWriter(n.log, "raft")})
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
	var trans raft.Transport
	if n.cfg.TLS != nil {
		stream, err := newTLSStream(n.cfg.Raft.String(), addr, n.cfg.TLS, n.log)
		if err != nil {
			store.Close()
			return fmt.Errorf("raft transport on %s: %w", n.cfg.Raft, err)
		}
		trans = raft.NewNetworkTransport(stream, 3, rpcTimeout, logWriter(n.log, "raft-transport"))
	} else {
		tcp, err := raft.NewTCPTransport(n.cfg.Raft.String(), addr, 3, rpcTimeout, logWriter(n.log, "raft-transport"))
		if err != nil {
			store.Close()
			return fmt.Errorf("raft transport on %s: %w", n.cfg.Raft, err)
		}
		trans = tcp
	}
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
	mc.SecretKey = n.cfg.EncryptKey
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
		n.reconcileVoters()
		select {
		case <-ctx.Done():
			n.ml.Leave(time.Second)
			n.ml.Shutdown()
			err := n.raft.Shutdown().Error()
			n.logs.Close()
			return err
		case <-t.C:
		}
	}
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
// nodes know each other: each bootstraps with the same voters, which
// Raft accepts once.
func (n *Node) maybeBootstrap() {
	n.mu.Lock()
	if n.bootstrap {
		n.mu.Unlock()
		return
	}
	var servers []raft.Server
	for _, m := range n.members {
		if m.state == "alive" && m.raft != "" {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.name), Address: raft.ServerAddress(m.raft)})
		}
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
}

// reconcileVoters, on the leader, adds alive members Raft does not know.
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
	n.mu.Lock()
	var add []member
	for _, m := range n.members {
		if m.state == "alive" && m.raft != "" && !known[raft.ServerID(m.name)] && !n.retired[m.name] {
			add = append(add, m)
		}
	}
	n.mu.Unlock()
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
	if n.raft.State() != raft.Leader {
		addr, id := n.raft.LeaderWithID()
		if addr == "" {
			return ErrNoQuorum
		}
		return fmt.Errorf("not the leader: %s (%s) is", id, addr)
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
	return nil
}

// Submit commits c from any node: the leader applies it, a follower
// forwards it to the leader and waits for the answer. Forwarding needs
// the gossip key: without it anyone who reaches the gossip port could
// change the table.
func (n *Node) Submit(c Command, timeout time.Duration) error {
	return n.submit(envelope{Cmd: &c}, timeout)
}

// Leave takes this node out of the cluster for good (an operator retiring
// it): the leader removes it from Raft, then it leaves the gossip. Its
// daemon goes on with the last committed table until it is stopped.
func (n *Node) Leave(timeout time.Duration) error {
	if err := n.submit(envelope{Remove: n.cfg.ID}, timeout); err != nil {
		return err
	}
	return n.ml.Leave(timeout)
}

// remove runs on the leader.
func (n *Node) remove(id string, timeout time.Duration) error {
	n.mu.Lock()
	n.retired[id] = true
	n.mu.Unlock()
	if err := n.raft.RemoveServer(raft.ServerID(id), 0, timeout).Error(); err != nil {
		return fmt.Errorf("remove %s from raft: %w", id, err)
	}
	n.log.Info("cluster: node removed", "node", id)
	return nil
}

func (n *Node) submit(e envelope, timeout time.Duration) error {
	// Right after a leader is lost an election takes a moment: look for
	// a leader that takes the command for a little while, not the whole
	// timeout, so that a cluster without quorum answers fast.
	find := time.Now().Add(min(timeout, 3*time.Second))
	n.mu.Lock()
	n.nextReq++
	req := n.nextReq
	ch := make(chan string, 1)
	n.pending[req] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.pending, req)
		n.mu.Unlock()
	}()
	e.Req, e.From = req, n.cfg.ID
	b, _ := json.Marshal(e)
	var lastErr error = ErrNoQuorum
	for {
		if n.Leader() {
			if e.Remove != "" {
				return n.remove(e.Remove, timeout)
			}
			return n.Apply(*e.Cmd, timeout)
		}
		_, id := n.raft.LeaderWithID()
		var to *memberlist.Node
		if id != "" {
			to = n.alive(string(id))
		}
		switch {
		case to != nil && len(n.cfg.EncryptKey) == 0:
			return fmt.Errorf("this node is not the leader (%s is) and forwarding needs [cluster] encrypt_key; run the command there", id)
		case to != nil:
			err := n.ml.SendReliable(to, b)
			if err == nil {
				return n.await(ch, id, timeout)
			}
			// Not sent: the leader is gone; wait for the next one.
			lastErr = fmt.Errorf("%w (the leader %s is unreachable: %v)", ErrNoQuorum, id, err)
		}
		if time.Now().After(find) {
			return lastErr
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *Node) await(ch chan string, leader raft.ServerID, timeout time.Duration) error {
	select {
	case msg := <-ch:
		if msg == "" {
			return nil
		}
		return errors.New(msg)
	case <-time.After(timeout + time.Second):
		return fmt.Errorf("the leader %s did not answer within %s: the change may or may not be applied", leader, timeout)
	}
}

// handle runs a forwarded command, or delivers an answer.
func (n *Node) handle(e envelope) {
	if e.Done {
		n.mu.Lock()
		ch := n.pending[e.Req]
		n.mu.Unlock()
		if ch != nil {
			ch <- e.Err
		}
		return
	}
	if (e.Cmd == nil && e.Remove == "") || len(n.cfg.EncryptKey) == 0 {
		return // unauthenticated gossip carries no commands
	}
	ans := envelope{Req: e.Req, Done: true}
	var err error
	if e.Remove != "" {
		err = n.remove(e.Remove, 5*time.Second)
	} else {
		err = n.Apply(*e.Cmd, 5*time.Second)
	}
	if err != nil {
		ans.Err = err.Error()
	}
	if to := n.alive(e.From); to != nil {
		b, _ := json.Marshal(ans)
		if err := n.ml.SendReliable(to, b); err != nil {
			n.log.Warn("cluster: answering a forwarded command failed", "to", e.From, "err", err)
		}
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
		RaftTLS: n.cfg.TLS != nil, Gossip: "none"}
	if len(n.cfg.EncryptKey) > 0 {
		s.Gossip = "aes"
	}
	n.mu.Lock()
	for _, m := range n.members {
		s.Members = append(s.Members, MemberStatus{Name: m.name, Gossip: m.gossip, Raft: m.raft, State: m.state, Role: m.role, App: m.app})
	}
	n.mu.Unlock()
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
	d.n.mu.Lock()
	m := meta{Raft: d.n.cfg.Raft.String(), Witness: d.n.cfg.Witness, App: d.n.app}
	d.n.mu.Unlock()
	b, _ := json.Marshal(m)
	if len(b) > limit {
		// SetAppMeta refuses what does not fit; this is a last guard.
		m.App = nil
		b, _ = json.Marshal(m)
	}
	return b
}

// SetAppMeta publishes b, a JSON value, as this node's application
// metadata: every member sees it in Status().Members within a few gossip
// rounds. It is refused when it would not fit in memberlist's node meta.
func (n *Node) SetAppMeta(b json.RawMessage) error {
	m, _ := json.Marshal(meta{Raft: n.cfg.Raft.String(), Witness: n.cfg.Witness, App: b})
	if len(m) > memberlist.MetaMaxSize {
		return fmt.Errorf("cluster: node metadata of %d bytes is over memberlist's %d", len(m), memberlist.MetaMaxSize)
	}
	n.mu.Lock()
	same := bytes.Equal(n.app, b)
	n.app = slices.Clone(b)
	n.mu.Unlock()
	if same {
		return nil
	}
	if err := n.ml.UpdateNode(time.Second); err != nil {
		return fmt.Errorf("cluster: publish node metadata: %w", err)
	}
	return nil
}
func (d *delegate) NotifyMsg(b []byte) {
	var e envelope
	if json.Unmarshal(b, &e) == nil {
		go d.n.handle(e) // never block memberlist's loop
	}
}
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
		app: slices.Clone(m.App)}
	e.n.mu.Unlock()
	// Metadata updates come often; only a change of state is news.
	if !known || old.state != state {
		e.n.log.Info("cluster member", "node", node.Name, "state", state, "gossip", node.Address())
	}
}

func (e *events) NotifyJoin(node *memberlist.Node)   { e.set(node, "alive") }
func (e *events) NotifyLeave(node *memberlist.Node)  { e.set(node, "left or failed") }
func (e *events) NotifyUpdate(node *memberlist.Node) { e.set(node, "alive") }

// logWriter turns a library's log lines into slog records.
func logWriter(log *slog.Logger, component string) io.Writer {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			level := slog.LevelInfo
			switch {
			case strings.Contains(line, "[ERR]") || strings.Contains(line, "[ERROR]"):
				level = slog.LevelError
			case strings.Contains(line, "[WARN]"):
				level = slog.LevelWarn
			case strings.Contains(line, "[DEBUG]"):
				level = slog.LevelDebug
			}
			log.Log(context.Background(), level, line, "component", component)
		}
	}()
	return pw
}

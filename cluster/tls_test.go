package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// The cluster's Raft port as an attacker sees it: a plain-TCP Raft client
// with a higher term, a certificate from another CA, and a CA-signed
// certificate for a name that is not a member are all refused, and the
// table and the leader stay as they were.
func TestClusterRefusesUnauthenticated(t *testing.T) {
	nodes, ca := clusterCA(t, 2)
	l := leader(t, nodes)
	if err := l.Apply(put("web"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	converged(t, nodes, "web")
	target := raft.ServerAddress(l.cfg.Raft.String())
	term := l.raft.CurrentTerm()

	plain, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	var ae raft.AppendEntriesResponse
	err = plain.AppendEntries("n1", target, &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte("n1"), Addr: []byte(target)},
		Term: term + 100, PrevLogEntry: 0, LeaderCommitIndex: 1000,
		Entries: []*raft.Log{{Index: 1000, Term: term + 100, Type: raft.LogCommand, Data: cmd(Command{Op: OpDelVS, Name: "web"})}}}, &ae)
	if err == nil {
		t.Fatalf("plain AppendEntries answered: %+v", ae)
	}
	var is raft.InstallSnapshotResponse
	snap := `{"index":1000,"seeded":true,"services":{"evil":{}}}`
	err = plain.InstallSnapshot("n1", target, &raft.InstallSnapshotRequest{RPCHeader: raft.RPCHeader{ID: []byte("n1"), Addr: []byte(target)},
		SnapshotVersion: 1, Term: term + 100, LastLogIndex: 1000, LastLogTerm: term + 100, Size: int64(len(snap))}, &is, strings.NewReader(snap))
	if err == nil {
		t.Fatalf("plain InstallSnapshot answered: %+v", is)
	}

	// Forwarded commands with certificates that are not a member's.
	for _, tc := range []struct {
		name string
		tls  *TLS
	}{
		{"another CA", issue(t, newCA(t), "n1")},
		{"not a member", issue(t, ca, "mallory")},
	} {
		before := l.Status().Refused
		s := &stream{tls: tc.tls, members: func(string) bool { return true }}
		_, err := s.call(string(target), "", []byte(`{"cmd":{"v":1,"op":"vs.del","name":"web"}}`), 2*time.Second)
		if err == nil {
			t.Fatalf("%s: a forwarded command was answered", tc.name)
		}
		waitFor(t, 5*time.Second, func() error {
			if l.Status().Refused == before {
				return errors.New(tc.name + ": the refusal was not counted")
			}
			return nil
		})
	}
	// The first refusal is logged with its reason; the rest are counted.
	// It is counted before it is logged, so the log is waited for.
	waitFor(t, 5*time.Second, func() error {
		if !strings.Contains(l.log.String(), "raft: peer refused") {
			return fmt.Errorf("no refusal logged:\n%s", l.log.String())
		}
		return nil
	})
	// A member's genuine certificate, speaking to Raft as another member:
	// refused at its first request.
	liar, err := newStream("127.0.0.1:0", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}, issue(t, ca, "n1"),
		func(n string) bool { return n == "n0" || n == "n1" }, func(string) string { return "" }, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	lt := raft.NewNetworkTransport(liar, 1, time.Second, io.Discard)
	defer lt.Close()
	before := l.Status().Refused
	err = lt.AppendEntries("n0", target, &raft.AppendEntriesRequest{RPCHeader: raft.RPCHeader{ID: []byte("n0"), Addr: []byte(target)},
		Term: term + 100}, &ae)
	if err == nil {
		t.Fatalf("AppendEntries from n1's certificate claiming n0 answered: %+v", ae)
	}
	waitFor(t, 5*time.Second, func() error {
		if l.Status().Refused == before {
			return errors.New("the false claim was not counted")
		}
		return nil
	})
	if !l.Leader() || l.raft.CurrentTerm() != term {
		t.Fatalf("leadership moved: leader %v, term %d (was %d)", l.Leader(), l.raft.CurrentTerm(), term)
	}
	converged(t, nodes, "web")
	if n := l.Status().Refused; n < 4 {
		t.Fatalf("%d refused connections counted", n)
	}
}

// Idle connections that never finish a handshake do not hold up a real
// peer: a follower's write still commits within a second.
func TestClusterIdleConnections(t *testing.T) {
	nodes := cluster(t, 2)
	l := leader(t, nodes)
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	// From another address than the peers': a host's own idle sockets
	// fill only its own share.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	for range 200 {
		c, err := d.Dial("tcp", l.cfg.Raft.String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	for _, n := range nodes {
		if n == l {
			continue
		}
		start := time.Now()
		if err := n.Submit(put("web"), time.Second); err != nil {
			t.Fatalf("a write with 200 idle connections open: %v", err)
		}
		t.Logf("committed in %s with 200 idle connections", time.Since(start).Round(time.Millisecond))
	}
	converged(t, nodes, "web")
}

// A leaf whose IPs do not include the connection's source is refused.
func TestPeerNameBindsAddress(t *testing.T) {
	ca := newCA(t)
	tl := issue(t, ca, "n0") // for 127.0.0.1
	cert, _ := tl.get()
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}
	member := func(n string) bool { return n == "n0" }
	if name, err := tl.peerName(cs, member, netip.MustParseAddr("127.0.0.1")); err != nil || name != "n0" {
		t.Fatalf("from its own address: %q %v", name, err)
	}
	if _, err := tl.peerName(cs, member, netip.MustParseAddr("192.0.2.9")); err == nil || !strings.Contains(err.Error(), "not 192.0.2.9") {
		t.Fatalf("from another address: %v", err)
	}
	if _, err := tl.peerName(cs, func(string) bool { return false }, netip.MustParseAddr("127.0.0.1")); err == nil {
		t.Fatal("a name that is not a member passed")
	}
}

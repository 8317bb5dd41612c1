package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return &testCA{cert: c, key: key, pool: pool}
}

func (ca *testCA) issue(t *testing.T, name string) *TLS {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return &TLS{Cert: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, CAs: ca.pool}
}

// Raft over TLS: the pair forms and commits; a node whose certificate
// comes from another CA is refused (and it is logged) and never gets
// the state.
func TestClusterTLS(t *testing.T) {
	ca := newCA(t, "directord cluster CA")
	loop := netip.MustParseAddr("127.0.0.1")
	var cfgs []Config
	for i := range 2 {
		cfgs = append(cfgs, Config{ID: fmt.Sprintf("n%d", i), DataDir: t.TempDir(), BootstrapExpect: 2,
			Gossip: netip.AddrPortFrom(loop, freePort(t)), Raft: netip.AddrPortFrom(loop, freePort(t)),
			EncryptKey: []byte("0123456789abcdef0123456789abcdef"), TLS: ca.issue(t, fmt.Sprintf("n%d", i))})
	}
	cfgs[0].Peers = []string{cfgs[1].Gossip.String()}
	cfgs[1].Peers = []string{cfgs[0].Gossip.String()}
	nodes := []*testNode{startNode(t, cfgs[0]), startNode(t, cfgs[1])}
	l := leader(t, nodes)
	if err := l.Apply(put("web"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	converged(t, nodes, "web")

	other := newCA(t, "someone else's CA")
	bad := Config{ID: "intruder", DataDir: t.TempDir(), BootstrapExpect: 3,
		Gossip: netip.AddrPortFrom(loop, freePort(t)), Raft: netip.AddrPortFrom(loop, freePort(t)),
		EncryptKey: cfgs[0].EncryptKey, TLS: other.issue(t, "intruder"), Peers: []string{cfgs[0].Gossip.String()}}
	in := startNode(t, bad)
	waitFor(t, 15*time.Second, func() error {
		logs := in.log.String() + nodes[0].log.String() + nodes[1].log.String()
		if !strings.Contains(logs, "peer refused: TLS handshake failed") && !strings.Contains(logs, "certificate signed by unknown authority") {
			return errors.New("no refusal logged")
		}
		return nil
	})
	if err := l.Apply(put("dns"), 5*time.Second); err != nil {
		t.Fatalf("the pair stopped committing: %v", err)
	}
	converged(t, nodes, "dns", "web")
	if names := in.State().Names(); len(names) != 0 {
		t.Fatalf("the intruder got the state: %v", names)
	}
}

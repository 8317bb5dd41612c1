package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"
)

// TLS is a member's identity: its certificate, and the CAs that sign the
// others'. A peer is accepted only with a certificate that chains to the
// CAs and names (as a DNS SAN) a configured member of the cluster; that
// name is who the peer is. Reload swaps both without a restart.
type TLS struct {
	files [3]string // cert, key, CA; empty when built from values

	mu   sync.RWMutex
	cert tls.Certificate
	cas  *x509.CertPool
}

// NewTLS is a TLS from values (tests, and callers that hold the PEM).
func NewTLS(cert tls.Certificate, cas *x509.CertPool) *TLS {
	return &TLS{cert: cert, cas: cas}
}

// LoadTLS reads a member's key pair and the CA file; Reload reads them
// again.
func LoadTLS(certFile, keyFile, caFile string) (*TLS, error) {
	t := &TLS{files: [3]string{certFile, keyFile, caFile}}
	return t, t.Reload()
}

// Reload re-reads the files LoadTLS was given: certificates rotate on
// SIGHUP. On an error the previous ones stay in force.
func (t *TLS) Reload() error {
	if t.files[0] == "" {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(t.files[0], t.files[1])
	if err != nil {
		return fmt.Errorf("cluster tls_cert/tls_key: %w", err)
	}
	pem, err := os.ReadFile(t.files[2])
	if err != nil {
		return fmt.Errorf("cluster tls_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("cluster tls_ca: %s holds no PEM certificate", t.files[2])
	}
	t.mu.Lock()
	t.cert, t.cas = cert, pool
	t.mu.Unlock()
	return nil
}

func (t *TLS) get() (tls.Certificate, *x509.CertPool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.cert, t.cas
}

// Names are the member names this node's own certificate carries.
func (t *TLS) Names() ([]string, error) {
	cert, _ := t.get()
	if len(cert.Certificate) == 0 {
		return nil, errors.New("no certificate")
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, err
	}
	return leaf.DNSNames, nil
}

// peerName verifies a peer's chain against the CAs and returns the member
// its certificate names. A certificate that lists IP addresses (as
// directorctl cluster certs writes them) is good only from those: a copy
// of a member's key pair does not work from another host.
func (t *TLS) peerName(cs tls.ConnectionState, members func(string) bool, from netip.Addr) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("the peer sent no certificate")
	}
	_, cas := t.get()
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{Roots: cas, Intermediates: x509.NewCertPool(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return "", err
	}
	if len(leaf.IPAddresses) > 0 && !slices.ContainsFunc(leaf.IPAddresses, func(ip net.IP) bool {
		a, _ := netip.AddrFromSlice(ip)
		return a.Unmap() == from.Unmap()
	}) {
		return "", fmt.Errorf("the peer's certificate is for %v, not %s", leaf.IPAddresses, from)
	}
	for _, name := range leaf.DNSNames {
		if members(name) {
			return name, nil
		}
	}
	return "", fmt.Errorf("the peer's certificate names %v, no member of this cluster", slices.Clip(leaf.DNSNames))
}

// Handshake runs the cluster's mutual TLS on c, as the client or the
// server, for other channels between members (the conntrack sync): the
// peer must present a certificate from the CAs that names one of members
// and, if it lists IPs, comes from c's remote address. It returns the
// connection and the member the peer is.
func (t *TLS) Handshake(c net.Conn, client bool, members func(string) bool, timeout time.Duration) (net.Conn, string, error) {
	from, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	cfg := t.config(nil, members, from.Addr())
	tc := tls.Server(c, cfg)
	if client {
		tc = tls.Client(c, cfg)
	}
	tc.SetDeadline(time.Now().Add(timeout))
	if err := tc.Handshake(); err != nil {
		return nil, "", fmt.Errorf("TLS handshake: %w", err)
	}
	tc.SetDeadline(time.Time{})
	name, err := t.peerName(tc.ConnectionState(), members, from.Addr())
	if err != nil {
		return nil, "", err
	}
	return tc, name, nil
}

// config is the tls.Config of both ends: TLS 1.3, a certificate required
// both ways, checked by accept (the member set, and for a dial the member
// expected at that address).
func (t *TLS) config(accept func(name string) error, members func(string) bool, from netip.Addr) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			c, _ := t.get()
			return &c, nil
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, _ := t.get()
			return &c, nil
		},
		// The chain and the name are checked in VerifyConnection: peers
		// are dialled by IP, and the name that matters is the member's.
		InsecureSkipVerify: true,
		ClientAuth:         tls.RequireAnyClientCert,
		VerifyConnection: func(cs tls.ConnectionState) error {
			name, err := t.peerName(cs, members, from)
			if err != nil {
				return err
			}
			if accept != nil {
				return accept(name)
			}
			return nil
		},
	}
}

package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// TLS secures Raft's transport with mutual certificate checks: both ends
// present a certificate signed by CAs, and a peer whose certificate
// does not verify is refused. Peers are addressed by IP, so the chain is
// checked, not a host name.
type TLS struct {
	Cert tls.Certificate
	CAs  *x509.CertPool
}

func (t *TLS) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the peer sent no certificate")
	}
	opts := x509.VerifyOptions{Roots: t.CAs, Intermediates: x509.NewCertPool(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(opts)
	return err
}

func (t *TLS) config() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{t.Cert},
		MinVersion:   tls.VersionTLS13,
		// Both sides check the other's chain in VerifyConnection.
		InsecureSkipVerify: true,
		ClientAuth:         tls.RequireAnyClientCert,
		VerifyConnection:   t.verify,
	}
}

// tlsStream is a raft.StreamLayer over TLS.
type tlsStream struct {
	net.Listener
	advertise net.Addr
	cfg       *tls.Config
	log       *slog.Logger
}

var _ raft.StreamLayer = (*tlsStream)(nil)

func newTLSStream(bind string, advertise net.Addr, t *TLS, log *slog.Logger) (*tlsStream, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	return &tlsStream{Listener: ln, advertise: advertise, cfg: t.config(), log: log}, nil
}

func (s *tlsStream) Addr() net.Addr { return s.advertise }

// Accept hands Raft only connections whose handshake verified; refusals
// are logged and the next connection is awaited.
func (s *tlsStream) Accept() (net.Conn, error) {
	for {
		c, err := s.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := tls.Server(c, s.cfg)
		tc.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tc.Handshake(); err != nil {
			s.log.Warn("raft: peer refused: TLS handshake failed", "peer", c.RemoteAddr().String(), "err", err)
			c.Close()
			continue
		}
		tc.SetDeadline(time.Time{})
		return tc, nil
	}
}

func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(address), s.cfg)
	if err != nil {
		return nil, fmt.Errorf("raft over TLS to %s: %w", address, err)
	}
	return c, nil
}

// Package pki makes the certificates a directord cluster authenticates
// its members with: one CA, and for each node a key pair whose
// certificate names the node (a DNS SAN equal to its [node] name) and its
// addresses. ECDSA P-256, standard library only, so that directorctl can
// make them without linking the cluster.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// CA signs the members' certificates.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA makes a CA valid for validity.
func NewCA(name string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validity), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, MaxPathLenZero: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: c, Key: key}, nil
}

// Pair is a PEM certificate and key.
type Pair struct{ Cert, Key []byte }

// Issue makes a member's key pair: its certificate names the node (the
// member name the cluster checks) and its IPs, for client and server use.
func (ca *CA) Issue(name string, ips []netip.Addr, validity time.Duration) (Pair, error) {
	if name == "" {
		return Pair{}, errors.New("a member certificate needs the node's name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{name}}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return Pair{}, err
	}
	k, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return Pair{}, err
	}
	return Pair{Cert: pemBlock("CERTIFICATE", der), Key: pemBlock("EC PRIVATE KEY", k)}, nil
}

// CertPEM is the CA's certificate, for every member's tls_ca.
func (ca *CA) CertPEM() []byte { return pemBlock("CERTIFICATE", ca.Cert.Raw) }

// KeyPEM is the CA's key: keep it off the directors.
func (ca *CA) KeyPEM() ([]byte, error) {
	k, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	return pemBlock("EC PRIVATE KEY", k), nil
}

// LoadCA reads a CA written by WriteCA, to issue more certificates.
func LoadCA(certFile, keyFile string) (*CA, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	cblock, _ := pem.Decode(cb)
	kblock, _ := pem.Decode(kb)
	if cblock == nil || kblock == nil {
		return nil, fmt.Errorf("%s or %s holds no PEM block", certFile, keyFile)
	}
	c, err := x509.ParseCertificate(cblock.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	k, err := x509.ParseECPrivateKey(kblock.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	return &CA{Cert: c, Key: k}, nil
}

// Member is a node to issue for.
type Member struct {
	Name string
	IPs  []netip.Addr
}

// Files are the paths WriteAll wrote.
type Files struct {
	CA, CAKey string
	// Cert and Key by member name.
	Cert, Key map[string]string
}

// WriteAll writes into dir (created 0700) ca.pem and ca-key.pem (unless
// ca was loaded from there), and NAME.pem and NAME-key.pem per member,
// every file 0600. An existing file is not overwritten.
func WriteAll(dir string, ca *CA, members []Member, validity time.Duration) (Files, error) {
	f := Files{CA: filepath.Join(dir, "ca.pem"), CAKey: filepath.Join(dir, "ca-key.pem"),
		Cert: map[string]string{}, Key: map[string]string{}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, err
	}
	if _, err := os.Stat(f.CA); errors.Is(err, os.ErrNotExist) {
		kp, err := ca.KeyPEM()
		if err != nil {
			return f, err
		}
		if err := write(f.CA, ca.CertPEM()); err != nil {
			return f, err
		}
		if err := write(f.CAKey, kp); err != nil {
			return f, err
		}
	}
	for _, m := range members {
		p, err := ca.Issue(m.Name, m.IPs, validity)
		if err != nil {
			return f, err
		}
		f.Cert[m.Name], f.Key[m.Name] = filepath.Join(dir, m.Name+".pem"), filepath.Join(dir, m.Name+"-key.pem")
		if err := write(f.Cert[m.Name], p.Cert); err != nil {
			return f, err
		}
		if err := write(f.Key[m.Name], p.Key); err != nil {
			return f, err
		}
	}
	return f, nil
}

func write(path string, b []byte) error {
	fd, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := fd.Write(b); err != nil {
		fd.Close()
		return err
	}
	return fd.Close()
}

func pemBlock(kind string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der})
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

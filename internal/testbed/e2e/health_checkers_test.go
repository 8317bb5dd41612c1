package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/internal/testbed/scene"
)

// helperSpec is a check in a form the helper process gets through its
// environment.
type helperSpec struct {
	Type, Addr, Timeout string
	Method, Path, Host  string
	Status              []healthcheck.StatusRange
	Body, Digest, SNI   string
	Verify              bool
	WarnDays            int
	Payload, Expect     string
	QName, QType, Rcode string
	Argv                []string
	Dynamic             bool
	Helo                string
}

type helperResult struct {
	OK     bool
	Err    string
	Weight int
	Warn   string
}

// TestHelperCheck is not a test: the checker tests run it inside the
// director's namespace (ip netns exec), so that every socket a checker
// opens, including those of net/http's own goroutines, is there.
func TestHelperCheck(t *testing.T) {
	raw := os.Getenv("DIRECTORD_HELPER_CHECK")
	if raw == "" {
		t.Skip("helper process for the health-checker tests")
	}
	var h helperSpec
	if err := json.Unmarshal([]byte(raw), &h); err != nil {
		t.Fatal(err)
	}
	timeout, _ := time.ParseDuration(h.Timeout)
	s := healthcheck.Spec{Type: h.Type, Timeout: timeout,
		HTTP: healthcheck.HTTPSpec{Method: h.Method, Path: h.Path, Host: h.Host, Status: h.Status, Digest: h.Digest, SNI: h.SNI, Verify: h.Verify},
		TLS:  healthcheck.TLSSpec{SNI: h.SNI, Verify: h.Verify, WarnDays: h.WarnDays},
		UDP:  healthcheck.UDPSpec{Payload: []byte(h.Payload)},
		DNS:  healthcheck.DNSSpec{Name: h.QName, QType: h.QType, Rcode: h.Rcode},
		SMTP: healthcheck.SMTPSpec{Helo: h.Helo},
		Exec: healthcheck.ExecSpec{Argv: h.Argv, Dynamic: h.Dynamic},
	}
	if h.Addr != "" {
		s.Addr = netip.MustParseAddrPort(h.Addr)
	}
	if h.Body != "" {
		s.HTTP.Body = regexp.MustCompile(h.Body)
	}
	if h.Expect != "" {
		s.UDP.Expect, s.DNS.Expect = regexp.MustCompile(h.Expect), regexp.MustCompile(h.Expect)
	}
	c, err := healthcheck.NewChecker(s)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r := c.Check(ctx)
	out := helperResult{OK: r.Err == nil, Weight: r.Weight, Warn: r.Warn}
	if r.Err != nil {
		out.Err = r.Err.Error()
	}
	b, _ := json.Marshal(out)
	fmt.Printf("HEALTH-RESULT %s\n", b)
}

func runCheck(t *testing.T, h *lab.Host, s helperSpec) helperResult {
	t.Helper()
	if s.Timeout == "" {
		s.Timeout = "1s"
	}
	b, _ := json.Marshal(s)
	cmd := h.Command(os.Args[0], "-test.run=^TestHelperCheck$", "-test.count=1")
	cmd.Env = append(os.Environ(), "DIRECTORD_HELPER_CHECK="+string(b))
	out, _ := cmd.CombinedOutput()
	m := regexp.MustCompile(`HEALTH-RESULT (.*)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("helper printed no result:\n%s", out)
	}
	var r helperResult
	if err := json.Unmarshal(m[1], &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// certs makes a CA and server certificates signed by it.
type certs struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caFile string
}

func newCerts(t *testing.T) *certs {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "directord test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	c := &certs{dir: t.TempDir(), ca: ca, caKey: key}
	c.caFile = filepath.Join(c.dir, "ca.pem")
	writeFile(t, c.caFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	return c
}

// leaf writes a certificate for name valid from notBefore to notAfter and
// returns the certificate and key files and a tls.Certificate.
func (c *certs) leaf(t *testing.T, name string, notBefore, notAfter time.Time) (string, string, tls.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: notBefore, NotAfter: notAfter, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	cf, kf := filepath.Join(c.dir, name+".pem"), filepath.Join(c.dir, name+".key")
	writeFile(t, cf, string(certPEM))
	writeFile(t, kf, string(keyPEM))
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cf, kf, pair
}

const nginxConf = `user root;
worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  default_type text/plain;
  server {
    listen 8081;
    listen 8443 ssl;
    server_name web.test;
    ssl_certificate %[2]s;
    ssl_certificate_key %[3]s;
    location = /ok { return 200 "hello directord\n"; }
    location = /moved { return 302 /ok; }
    location = /head-only { if ($request_method != HEAD) { return 405; } return 200; }
  }
}
`

// serveIn runs fn's listener inside h.
func serveIn(t *testing.T, h *lab.Host, listen func() (func(), error)) {
	t.Helper()
	var stop func()
	if err := h.Do(func() (err error) { stop, err = listen(); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
}

// TestHealthCheckers runs every checker against real servers in the lab:
// nginx from Debian for http and https, Go servers for the rest.
func TestHealthCheckers(t *testing.T) {
	lab.Require(t, "nginx", "nft")
	l := lab.New(t)
	s := scene.NewLVS(l, 1)
	rs := s.Reals[0]
	ip := scene.RealAddr(0)
	at := func(port int) string { return fmt.Sprintf("%s:%d", ip, port) }

	// nginx with a certificate for web.test from the test CA.
	ca := newCerts(t)
	cf, kf, _ := ca.leaf(t, "web.test", time.Now().Add(-time.Hour), time.Now().Add(10*24*time.Hour))
	ndir := t.TempDir()
	conf := filepath.Join(ndir, "nginx.conf")
	writeFile(t, conf, fmt.Sprintf(nginxConf, ndir, cf, kf))
	ng := rs.Start("nginx", "-c", conf)
	if err := lab.Eventually(10*time.Second, func() error {
		if ng.Exited() {
			return fmt.Errorf("nginx exited: %s", ng.Output())
		}
		if r := runCheck(t, s.Director, helperSpec{Type: "tcp", Addr: at(8081)}); !r.OK {
			return fmt.Errorf("nginx not listening: %s", r.Err)
		}
		return nil
	}); err != nil {
		b, _ := os.ReadFile(filepath.Join(ndir, "error.log"))
		t.Fatalf("%v\n%s", err, b)
	}

	// Go servers: slow HTTP, TLS with an expired certificate, TLS for
	// another name, a UDP port that never answers, and DNS.
	_, _, expired := ca.leaf(t, "old.test", time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	_, _, other := ca.leaf(t, "other.test", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	serveIn(t, rs, func() (func(), error) {
		ln, err := net.Listen("tcp4", ":8082")
		if err != nil {
			return nil, err
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(1500 * time.Millisecond)
			fmt.Fprintln(w, "late")
		})}
		go srv.Serve(ln)
		return func() { srv.Close() }, nil
	})
	for port, cert := range map[int]tls.Certificate{8444: expired, 8445: other} {
		serveIn(t, rs, func() (func(), error) {
			ln, err := tls.Listen("tcp4", fmt.Sprintf(":%d", port), &tls.Config{Certificates: []tls.Certificate{cert}})
			if err != nil {
				return nil, err
			}
			lab.AcceptEach(ln, func(c net.Conn) { c.(*tls.Conn).Handshake(); c.Close() })
			return func() { ln.Close() }, nil
		})
	}
	serveIn(t, rs, func() (func(), error) {
		pc, err := net.ListenPacket("udp4", ":5354")
		return func() { pc.Close() }, err
	})
	serveIn(t, rs, func() (func(), error) { return serveDNS() })
	// SMTP: a server that greets and answers HELO, one that refuses
	// service in its banner, one that rejects the HELO name.
	for port, answers := range map[int][2]string{2525: {"220 rs1 ESMTP", "250 rs1"}, 2526: {"554 no service here", ""},
		2527: {"220-rs1 ESMTP\r\n220 ready", "501 bad HELO name"}} {
		serveIn(t, rs, func() (func(), error) { return serveSMTP(port, answers[0], answers[1]) })
	}

	// Programs for exec checks.
	bin := t.TempDir()
	for name, body := range map[string]string{"ok": "exit 0", "down": "echo disk full; exit 1", "weight5": "exit 7", "slow": "sleep 5"} {
		p := filepath.Join(bin, name)
		writeFile(t, p, "#!/bin/sh\n"+body+"\n")
		os.Chmod(p, 0o755)
	}

	sum := md5.Sum([]byte("hello directord\n"))
	digest := hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name string
		spec helperSpec
		ok   bool
		err  string // substring of the error
	}{
		{"tcp up", helperSpec{Type: "tcp", Addr: at(8081)}, true, ""},
		{"tcp refused", helperSpec{Type: "tcp", Addr: at(9)}, false, "connection refused"},
		{"http ok", helperSpec{Type: "http", Addr: at(8081), Path: "/ok", Host: "web.test"}, true, ""},
		{"http wrong status", helperSpec{Type: "http", Addr: at(8081), Path: "/nothing"}, false, "status 404"},
		{"http status list", helperSpec{Type: "http", Addr: at(8081), Path: "/moved", Status: []healthcheck.StatusRange{{From: 301, To: 302}}}, true, ""},
		{"http redirect is not 2xx", helperSpec{Type: "http", Addr: at(8081), Path: "/moved"}, false, "status 302"},
		{"http method", helperSpec{Type: "http", Addr: at(8081), Path: "/head-only", Method: "HEAD"}, true, ""},
		{"http body regex", helperSpec{Type: "http", Addr: at(8081), Path: "/ok", Body: "^hello"}, true, ""},
		{"http wrong body", helperSpec{Type: "http", Addr: at(8081), Path: "/ok", Body: "^goodbye"}, false, "body does not match"},
		{"http digest", helperSpec{Type: "http", Addr: at(8081), Path: "/ok", Digest: digest}, true, ""},
		{"http wrong digest", helperSpec{Type: "http", Addr: at(8081), Path: "/ok", Digest: strings.Repeat("0", 32)}, false, "digest"},
		{"http slow answer", helperSpec{Type: "http", Addr: at(8082), Path: "/", Timeout: "500ms"}, false, "deadline"},
		{"http slow but in time", helperSpec{Type: "http", Addr: at(8082), Path: "/", Timeout: "3s"}, true, ""},
		{"https unverified", helperSpec{Type: "https", Addr: at(8443), Path: "/ok"}, true, ""},
		{"https verified needs a trusted CA", helperSpec{Type: "https", Addr: at(8443), Path: "/ok", SNI: "web.test", Verify: true}, false, "unknown authority"},
		{"tls handshake", helperSpec{Type: "tls", Addr: at(8443), SNI: "web.test"}, true, ""},
		{"tls expired", helperSpec{Type: "tls", Addr: at(8444)}, false, "certificate expired"},
		{"tls wrong host", helperSpec{Type: "tls", Addr: at(8445), SNI: "web.test", Verify: true}, false, "web.test"},
		{"tls not tls", helperSpec{Type: "tls", Addr: at(8081)}, false, "tls"},
		{"udp answer", helperSpec{Type: "udp", Addr: at(scene.UDPPort), Payload: "hi", Expect: "^rs1$"}, true, ""},
		{"udp wrong answer", helperSpec{Type: "udp", Addr: at(scene.UDPPort), Payload: "hi", Expect: "^rs9$"}, false, "does not match"},
		{"udp no reply expected", helperSpec{Type: "udp", Addr: at(5354), Payload: "hi", Timeout: "300ms"}, true, ""},
		{"udp no reply", helperSpec{Type: "udp", Addr: at(5354), Payload: "hi", Expect: ".", Timeout: "300ms"}, false, "no reply"},
		{"udp refused", helperSpec{Type: "udp", Addr: at(5399), Payload: "hi"}, false, "port unreachable"},
		{"dns answer", helperSpec{Type: "dns", Addr: at(53), QName: "web.test", QType: "A", Expect: "^203\\.0\\.113\\.11$"}, true, ""},
		{"dns nxdomain", helperSpec{Type: "dns", Addr: at(53), QName: "nope.test", QType: "A"}, false, "NXDOMAIN"},
		{"dns nxdomain expected", helperSpec{Type: "dns", Addr: at(53), QName: "nope.test", QType: "A", Rcode: "NXDOMAIN"}, true, ""},
		{"icmp echo", helperSpec{Type: "icmp", Addr: at(0)}, true, ""},
		{"icmp nobody there", helperSpec{Type: "icmp", Addr: "203.0.113.99:0", Timeout: "500ms"}, false, "no echo reply"},
		{"smtp banner and HELO", helperSpec{Type: "smtp", Addr: at(2525), Helo: "lb1.test"}, true, ""},
		{"smtp refusing banner", helperSpec{Type: "smtp", Addr: at(2526)}, false, "smtp banner: answered 554 no service here"},
		{"smtp multi-line banner, HELO refused", helperSpec{Type: "smtp", Addr: at(2527)}, false, "smtp HELO: answered 501 bad HELO name"},
		{"smtp closed port", helperSpec{Type: "smtp", Addr: at(2599)}, false, "connection refused"},
		{"exec 0", helperSpec{Type: "exec", Argv: []string{filepath.Join(bin, "ok")}}, true, ""},
		{"exec 1", helperSpec{Type: "exec", Argv: []string{filepath.Join(bin, "down")}}, false, "exit 1: disk full"},
		{"exec dynamic weight", helperSpec{Type: "exec", Argv: []string{filepath.Join(bin, "weight5")}, Dynamic: true}, true, ""},
		{"exec 7 without dynamic", helperSpec{Type: "exec", Argv: []string{filepath.Join(bin, "weight5")}}, false, "exit 7"},
		{"exec timeout", helperSpec{Type: "exec", Argv: []string{filepath.Join(bin, "slow")}, Timeout: "300ms"}, false, "timed out"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCheck(t, s.Director, tc.spec)
			if r.OK != tc.ok || !strings.Contains(r.Err, tc.err) {
				t.Fatalf("ok=%v err=%q; want ok=%v err containing %q", r.OK, r.Err, tc.ok, tc.err)
			}
			if tc.name == "exec dynamic weight" && r.Weight != 5 {
				t.Fatalf("weight %d, want 5 (exit 7 - 2, as keepalived's misc_dynamic)", r.Weight)
			}
		})
	}

	// A timeout: the server's namespace drops the packets.
	rs.MustRun("nft", "add table inet f; add chain inet f in { type filter hook input priority 0; }; add rule inet f in tcp dport 8081 drop")
	if r := runCheck(t, s.Director, helperSpec{Type: "tcp", Addr: at(8081), Timeout: "300ms"}); r.OK || !strings.Contains(r.Err, "timeout") {
		t.Fatalf("tcp to a dropping port: %+v", r)
	}
	// An echo through a ping socket rather than a raw one, where the
	// namespace lets root's group have them.
	s.Director.MustRun("sysctl", "-qw", "net.ipv4.ping_group_range=0 0")
	if r := runCheck(t, s.Director, helperSpec{Type: "icmp", Addr: at(0)}); !r.OK {
		t.Fatalf("icmp through a ping socket: %+v", r)
	}
	// The certificate warning: nginx's expires in 10 days.
	if r := runCheck(t, s.Director, helperSpec{Type: "tls", Addr: at(8443), WarnDays: 30}); !r.OK || !strings.Contains(r.Warn, "expires in") {
		t.Fatalf("tls expiry warning: %+v", r)
	}
}

// serveSMTP greets every connection with banner and answers a HELO
// naming lb1.test with helo (keepalived's SMTP_CHECK dialogue).
func serveSMTP(port int, banner, helo string) (func(), error) {
	ln, err := net.Listen("tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, err
	}
	lab.AcceptEach(ln, func(c net.Conn) {
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s\r\n", banner)
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HELO ") {
			return
		}
		fmt.Fprintf(c, "%s\r\n", helo)
	})
	return func() { ln.Close() }, nil
}

// serveDNS answers A queries for web.test with 203.0.113.11 and
// NXDOMAIN for anything else, on UDP port 53.
func serveDNS() (func(), error) {
	pc, err := net.ListenPacket("udp4", ":53")
	if err != nil {
		return nil, err
	}
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var q dnsmessage.Message
			if q.Unpack(buf[:n]) != nil || len(q.Questions) != 1 {
				continue
			}
			r := dnsmessage.Message{Header: dnsmessage.Header{ID: q.ID, Response: true, Authoritative: true}, Questions: q.Questions}
			if q.Questions[0].Name.String() == "web.test." && q.Questions[0].Type == dnsmessage.TypeA {
				r.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: q.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
					Body: &dnsmessage.AResource{A: [4]byte{203, 0, 113, 11}}}}
			} else {
				r.RCode = dnsmessage.RCodeNameError
			}
			b, _ := r.Pack()
			pc.WriteTo(b, from)
		}
	}()
	return func() { pc.Close() }, nil
}

package healthcheck

import (
	"context"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Result is the outcome of one check.
type Result struct {
	Err error // nil: the server is up
	// Weight, when not negative, is the weight an exec check asked for.
	Weight int
	// Warn is something to log without failing (a certificate about to
	// expire).
	Warn string
}

// Checker checks a server once. Implementations keep no state between
// calls and honour ctx's deadline.
type Checker interface {
	Check(ctx context.Context) Result
}

// CheckFunc adapts a function to Checker.
type CheckFunc func(ctx context.Context) Result

func (f CheckFunc) Check(ctx context.Context) Result { return f(ctx) }

// NewChecker returns the checker for a spec.
func NewChecker(s Spec) (Checker, error) {
	return newChecker(s, nil)
}

// newChecker is NewChecker with the prober of a runner's tcp checks (nil:
// one of the checker's own).
func newChecker(s Spec, tcp *tcpProber) (Checker, error) {
	switch s.Type {
	case "tcp":
		if tcp == nil {
			tcp = newTCPProber(true)
		}
		return tcpChecker{p: tcp, t: newTCPTarget(s.Addr, s.BindTo), timeout: s.Timeout}, nil
	case "http", "https":
		return newHTTP(s), nil
	case "tls":
		return CheckFunc(s.checkTLS), nil
	case "udp":
		return CheckFunc(s.checkUDP), nil
	case "dns":
		if _, err := qtype(s.DNS.QType); err != nil {
			return nil, err
		}
		return CheckFunc(s.checkDNS), nil
	case "icmp":
		return CheckFunc(s.checkICMP), nil
	case "smtp":
		return CheckFunc(s.checkSMTP), nil
	case "exec":
		if m := s.Exec.Missing; m != "" {
			return CheckFunc(func(context.Context) Result {
				return fail("no [[check_script]] named %q on this director", m)
			}), nil
		}
		if len(s.Exec.Argv) == 0 {
			return nil, errors.New("exec check without a program")
		}
		return CheckFunc(s.checkExec), nil
	}
	return nil, fmt.Errorf("unknown check type %q", s.Type)
}

func fail(format string, args ...any) Result {
	return Result{Err: fmt.Errorf(format, args...), Weight: -1}
}

var up = Result{Weight: -1}

func (s Spec) dialer() *net.Dialer {
	// No keepalive: a check's connection lives for a moment, and the
	// socket options would cost three system calls per check.
	d := &net.Dialer{Timeout: s.Timeout, KeepAlive: -1}
	if s.BindTo.IsValid() {
		if s.Type == "udp" || s.Type == "dns" {
			d.LocalAddr = &net.UDPAddr{IP: s.BindTo.AsSlice()}
		} else {
			d.LocalAddr = &net.TCPAddr{IP: s.BindTo.AsSlice()}
		}
	}
	return d
}

// asyncChecker is a Checker that can also run without a goroutine of its
// own: start returns at once and done gets the result by the deadline.
// cancel ends a check in flight without an answer; it reports false when
// the answer is already given or on its way.
type asyncChecker interface {
	start(by time.Time, done func(Result)) (cancel func() bool)
}

type tcpChecker struct {
	p       *tcpProber
	t       tcpTarget
	timeout time.Duration
}

func (c tcpChecker) Check(ctx context.Context) Result {
	by, ok := ctx.Deadline()
	if !ok {
		by = time.Now().Add(c.timeout)
	}
	return c.p.check(ctx, c.t, by)
}

func (c tcpChecker) start(by time.Time, done func(Result)) func() bool {
	return c.p.start(c.t, by, done)
}

// unwrapOp drops net.OpError's addresses, which every message would
// otherwise repeat.
func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		err = op.Err
	}
	var sc *os.SyscallError
	if errors.As(err, &sc) {
		return sc.Err
	}
	return err
}

type httpChecker struct {
	s      Spec
	client *http.Client
	url    string
}

func newHTTP(s Spec) *httpChecker {
	tr := &http.Transport{
		DialContext:       s.dialer().DialContext,
		DisableKeepAlives: true, // every check is a new connection, as keepalived's
		TLSClientConfig:   s.tlsConfig(s.HTTP.SNI, s.HTTP.Verify),
		Proxy:             nil,
	}
	scheme := "http"
	if s.Type == "https" {
		scheme = "https"
	}
	return &httpChecker{
		s: s,
		client: &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse // a redirect is an answer, judged by its status
		}},
		url: scheme + "://" + s.Addr.String() + s.HTTP.Path,
	}
}

func (s Spec) tlsConfig(sni string, verify bool) *tls.Config {
	if sni == "" {
		sni = s.HTTP.Host
	}
	if h, _, err := net.SplitHostPort(sni); err == nil {
		sni = h
	}
	// Verification is done here rather than by crypto/tls so that an
	// expired certificate can be told from an untrusted one.
	return &tls.Config{ServerName: sni, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if !verify {
				return nil
			}
			return verifyChain(cs, sni)
		}}
}

func verifyChain(cs tls.ConnectionState, name string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no certificate")
	}
	opts := x509.VerifyOptions{DNSName: name, Intermediates: x509.NewCertPool()}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(opts)
	return err
}

func (h *httpChecker) Check(ctx context.Context) Result {
	s := h.s.HTTP
	method := s.Method
	if method == "" {
		method = http.MethodGet
	}
	req, err := http.NewRequestWithContext(ctx, method, h.url, nil)
	if err != nil {
		return fail("request: %w", err)
	}
	if s.Host != "" {
		req.Host = s.Host
	}
	for k, v := range s.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("User-Agent", "directord-healthcheck")
	resp, err := h.client.Do(req)
	if err != nil {
		return fail("%s %s: %w", method, s.Path, unwrapURL(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fail("read body: %w", err)
	}
	if !statusOK(resp.StatusCode, s.Status) {
		return fail("status %d", resp.StatusCode)
	}
	if s.Body != nil && !s.Body.Match(body) {
		return fail("body does not match %q", s.Body.String())
	}
	if s.Digest != "" {
		sum := md5.Sum(body)
		if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, s.Digest) {
			return fail("body digest %s, want %s", got, s.Digest)
		}
	}
	r := up
	if resp.TLS != nil {
		r.Warn = expiryWarning(resp.TLS, h.s.TLS.WarnDays)
	}
	return r
}

func unwrapURL(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		var op *net.OpError
		if errors.As(err, &op) {
			return unwrapOp(op)
		}
		err = u
	}
}

func statusOK(code int, ranges []StatusRange) bool {
	if len(ranges) == 0 {
		return code >= 200 && code <= 299
	}
	for _, r := range ranges {
		if code >= r.From && code <= r.To {
			return true
		}
	}
	return false
}

func (s Spec) checkTLS(ctx context.Context) Result {
	d := tls.Dialer{NetDialer: s.dialer(), Config: s.tlsConfig(s.TLS.SNI, s.TLS.Verify)}
	c, err := d.DialContext(ctx, "tcp", s.Addr.String())
	if err != nil {
		return fail("tls: %w", unwrapOp(err))
	}
	defer c.Close()
	cs := c.(*tls.Conn).ConnectionState()
	if len(cs.PeerCertificates) == 0 {
		return fail("tls: no certificate")
	}
	leaf := cs.PeerCertificates[0]
	now := time.Now()
	if now.After(leaf.NotAfter) {
		return fail("certificate expired %s", leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	if now.Before(leaf.NotBefore) {
		return fail("certificate not valid before %s", leaf.NotBefore.UTC().Format(time.DateOnly))
	}
	r := up
	r.Warn = expiryWarning(&cs, s.TLS.WarnDays)
	return r
}

func expiryWarning(cs *tls.ConnectionState, days int) string {
	if days <= 0 || len(cs.PeerCertificates) == 0 {
		return ""
	}
	left := time.Until(cs.PeerCertificates[0].NotAfter)
	if left < time.Duration(days)*24*time.Hour {
		return fmt.Sprintf("certificate expires in %d days (%s)", int(left.Hours()/24),
			cs.PeerCertificates[0].NotAfter.UTC().Format(time.DateOnly))
	}
	return ""
}

func (s Spec) checkUDP(ctx context.Context) Result {
	c, err := s.dialer().DialContext(ctx, "udp", s.Addr.String())
	if err != nil {
		return fail("udp: %w", unwrapOp(err))
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(s.UDP.Payload); err != nil {
		return fail("udp send: %w", unwrapOp(err))
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	var ne net.Error
	switch {
	case err == nil:
	case errors.Is(err, syscall.ECONNREFUSED):
		return fail("udp: port unreachable")
	case errors.As(err, &ne) && ne.Timeout() && s.UDP.Expect == nil:
		return up // no answer and no refusal: a listening UDP port
	case errors.As(err, &ne) && ne.Timeout():
		return fail("udp: no reply")
	default:
		return fail("udp: %w", unwrapOp(err))
	}
	if s.UDP.Expect != nil && !s.UDP.Expect.Match(buf[:n]) {
		return fail("udp reply does not match %q", s.UDP.Expect.String())
	}
	return up
}

var qtypes = map[string]dnsmessage.Type{
	"A": dnsmessage.TypeA, "AAAA": dnsmessage.TypeAAAA, "SOA": dnsmessage.TypeSOA, "NS": dnsmessage.TypeNS,
	"MX": dnsmessage.TypeMX, "TXT": dnsmessage.TypeTXT, "CNAME": dnsmessage.TypeCNAME, "PTR": dnsmessage.TypePTR,
	"SRV": dnsmessage.TypeSRV,
}

// DNSTypes lists the query types a dns check can ask.
var DNSTypes = []string{"A", "AAAA", "SOA", "NS", "MX", "TXT", "CNAME", "PTR", "SRV"}

func qtype(s string) (dnsmessage.Type, error) {
	if s == "" {
		return dnsmessage.TypeSOA, nil
	}
	t, ok := qtypes[strings.ToUpper(s)]
	if !ok {
		return 0, fmt.Errorf("unknown DNS type %q", s)
	}
	return t, nil
}

func (s Spec) checkDNS(ctx context.Context) Result {
	name := s.DNS.Name
	if name == "" {
		name = "."
	}
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	qn, err := dnsmessage.NewName(name)
	if err != nil {
		return fail("dns name %q: %w", name, err)
	}
	qt, _ := qtype(s.DNS.QType)
	id := uint16(rand.Uint32())
	q := dnsmessage.Message{Header: dnsmessage.Header{ID: id, RecursionDesired: true},
		Questions: []dnsmessage.Question{{Name: qn, Type: qt, Class: dnsmessage.ClassINET}}}
	pkt, err := q.Pack()
	if err != nil {
		return fail("dns query: %w", err)
	}
	c, err := s.dialer().DialContext(ctx, "udp", s.Addr.String())
	if err != nil {
		return fail("dns: %w", unwrapOp(err))
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(pkt); err != nil {
		return fail("dns send: %w", unwrapOp(err))
	}
	buf := make([]byte, 65536)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				return fail("dns: port unreachable")
			}
			return fail("dns: %w", unwrapOp(err))
		}
		var m dnsmessage.Message
		if err := m.Unpack(buf[:n]); err != nil || m.ID != id || !m.Response {
			continue // not our answer
		}
		want := s.DNS.Rcode
		if want == "" {
			want = "NOERROR"
		}
		if got := rcodeName(m.RCode); got != strings.ToUpper(want) {
			return fail("dns rcode %s, want %s", got, want)
		}
		if s.DNS.Expect != nil {
			var answers []string
			for _, a := range m.Answers {
				answers = append(answers, answerText(a.Body))
			}
			if !s.DNS.Expect.MatchString(strings.Join(answers, "\n")) {
				return fail("dns answer does not match %q", s.DNS.Expect.String())
			}
		}
		return up
	}
}

// answerText renders an answer as dig shows its data, for expect.
func answerText(b dnsmessage.ResourceBody) string {
	switch r := b.(type) {
	case *dnsmessage.AResource:
		return netip.AddrFrom4(r.A).String()
	case *dnsmessage.AAAAResource:
		return netip.AddrFrom16(r.AAAA).String()
	case *dnsmessage.CNAMEResource:
		return r.CNAME.String()
	case *dnsmessage.NSResource:
		return r.NS.String()
	case *dnsmessage.PTRResource:
		return r.PTR.String()
	case *dnsmessage.MXResource:
		return fmt.Sprintf("%d %s", r.Pref, r.MX)
	case *dnsmessage.TXTResource:
		return strings.Join(r.TXT, " ")
	case *dnsmessage.SRVResource:
		return fmt.Sprintf("%d %d %d %s", r.Priority, r.Weight, r.Port, r.Target)
	case *dnsmessage.SOAResource:
		return fmt.Sprintf("%s %s %d", r.NS, r.MBox, r.Serial)
	}
	return b.GoString()
}

func rcodeName(r dnsmessage.RCode) string {
	switch r {
	case dnsmessage.RCodeSuccess:
		return "NOERROR"
	case dnsmessage.RCodeFormatError:
		return "FORMERR"
	case dnsmessage.RCodeServerFailure:
		return "SERVFAIL"
	case dnsmessage.RCodeNameError:
		return "NXDOMAIN"
	case dnsmessage.RCodeNotImplemented:
		return "NOTIMP"
	case dnsmessage.RCodeRefused:
		return "REFUSED"
	}
	return fmt.Sprintf("RCODE%d", r)
}

// DNSRcodes lists the response codes a dns check can expect.
var DNSRcodes = []string{"NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"}

// checkExec runs the program (see Programs); on timeout its whole
// process group is killed.
func (s Spec) checkExec(ctx context.Context) Result {
	b, err := s.Exec.Programs.Run(ctx, s.Exec.Argv)
	if ctx.Err() != nil {
		return fail("exec: timed out")
	}
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		return fail("exec: %w", err)
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 {
		msg = msg[:200] + "..."
	}
	switch {
	case code == 0:
		return up
	case code >= 2 && s.Exec.Dynamic:
		return Result{Weight: code - 2}
	case msg != "":
		return fail("exit %d: %s", code, msg)
	}
	return fail("exit %d", code)
}

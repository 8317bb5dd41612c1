// Package healthcheck checks the real servers' ports (TCP, HTTP, HTTPS,
// TLS, UDP, DNS, ICMP echo, SMTP, or a program) and reports each server's transitions
// between up and down, damped by rise and fall counts, so that the load
// balancer stops sending traffic to a dead server within a bounded time
// and takes it back only when it is healthy again.
package healthcheck

import (
	"fmt"
	"net/netip"
	"regexp"
	"time"
)

// Spec says how to check one real server.
type Spec struct {
	Type string // tcp, http, https, tls, udp, dns, icmp, smtp, exec
	// Addr is what is checked: the real server's address and port, or
	// connect_ip / connect_port when set.
	Addr netip.AddrPort
	// BindTo is the source address (zero: the kernel's choice).
	BindTo netip.Addr

	Interval         time.Duration // between the starts of two checks (delay_loop)
	Timeout          time.Duration // for one attempt (connect_timeout)
	Retry            int           // further attempts before a check counts as failed
	DelayBeforeRetry time.Duration
	Warmup           time.Duration // the first check starts at a random time within this
	Rise, Fall       int           // consecutive results to come up, to go down
	Alpha            bool          // start down (else up)
	LogAllFailures   bool

	HTTP HTTPSpec
	TLS  TLSSpec
	UDP  UDPSpec
	DNS  DNSSpec
	SMTP SMTPSpec
	Exec ExecSpec
}

// SMTPSpec is for smtp checks.
type SMTPSpec struct {
	Helo string // the name said in HELO; "" = directord
}

// HTTPSpec is for http and https checks.
type HTTPSpec struct {
	Method  string
	Path    string
	Host    string // Host header (keepalived's virtualhost); "" = the address
	Headers map[string]string
	// Status lists the accepted status codes; empty means 200-299.
	Status []StatusRange
	Body   *regexp.Regexp // must match the body when set
	Digest string         // hex MD5 of the body, like keepalived's genhash
	// SNI is the server name sent in TLS (https); "" = Host, else none.
	SNI    string
	Verify bool // verify the certificate chain and name
}

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ From, To int }

// TLSSpec is for tls checks (and the certificate of https ones).
type TLSSpec struct {
	SNI      string
	Verify   bool
	WarnDays int // log a warning this many days before the certificate expires
}

// UDPSpec is for udp checks.
type UDPSpec struct {
	Payload []byte
	// Expect, when set, must match a reply; without it the check
	// passes unless the port is refused (ICMP port unreachable).
	Expect *regexp.Regexp
}

// DNSSpec is for dns checks.
type DNSSpec struct {
	Name   string // queried name, default "."
	QType  string // A, AAAA, SOA, NS, MX, TXT, CNAME, PTR, SRV; default SOA
	Rcode  string // expected response code, default NOERROR
	Expect *regexp.Regexp
}

// ExecSpec is for exec checks (keepalived's MISC_CHECK).
type ExecSpec struct {
	Argv []string
	// Missing names a script the director does not define: the check
	// fails, saying so, rather than stopping every other check.
	Missing string
	// Dynamic (misc_dynamic): exit 2-255 means up with weight code-2.
	Dynamic bool
	// Programs runs it (as the script user, bounded); nil: as this
	// process.
	Programs *Programs
}

// Types lists the check types.
var Types = []string{"tcp", "http", "https", "tls", "udp", "dns", "icmp", "smtp", "exec"}

func (s Spec) String() string {
	switch s.Type {
	case "exec":
		return fmt.Sprintf("exec %v", s.Exec.Argv)
	case "icmp":
		return "icmp " + s.Addr.Addr().String()
	}
	return fmt.Sprintf("%s %s", s.Type, s.Addr)
}

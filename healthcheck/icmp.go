package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/textproto"
	"os"
	"strings"
	"syscall"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// checkICMP sends one echo request (keepalived's PING_CHECK) and waits
// for its reply. It uses a ping socket where the kernel allows one
// (net.ipv4.ping_group_range), which filters replies for it, else a raw
// socket (CAP_NET_RAW), which sees every echo reply and so matches the
// identifier, sequence and payload itself.
func (s Spec) checkICMP(ctx context.Context) Result {
	dst := s.Addr.Addr().Unmap()
	v6 := dst.Is6()
	netw, raw := "udp4", "ip4:icmp"
	var req icmp.Type = ipv4.ICMPTypeEcho
	var reply icmp.Type = ipv4.ICMPTypeEchoReply
	proto := 1
	if v6 {
		netw, raw, req, reply, proto = "udp6", "ip6:ipv6-icmp", ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply, 58
	}
	src := ""
	if s.BindTo.IsValid() {
		src = s.BindTo.String()
	}
	c, err := icmp.ListenPacket(netw, src)
	isRaw := false
	if errors.Is(err, os.ErrPermission) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
		c, err = icmp.ListenPacket(raw, src)
		isRaw = true
	}
	if err != nil {
		return fail("icmp: %w", unwrapOp(err))
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	id, seq := rand.IntN(1<<16), rand.IntN(1<<16)
	payload := fmt.Appendf(nil, "directord %016x", rand.Uint64())
	msg := icmp.Message{Type: req, Body: &icmp.Echo{ID: id, Seq: seq, Data: payload}}
	b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
	if err != nil {
		return fail("icmp: %w", err)
	}
	var to net.Addr = &net.UDPAddr{IP: dst.AsSlice()}
	if isRaw {
		to = &net.IPAddr{IP: dst.AsSlice()}
	}
	if _, err := c.WriteTo(b, to); err != nil {
		return fail("icmp send: %w", unwrapOp(err))
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			return fail("icmp: no echo reply")
		case err != nil:
			return fail("icmp: %w", unwrapOp(err))
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.Seq != seq || string(e.Data) != string(payload) || (isRaw && e.ID != id) {
			continue // another check's, or another program's
		}
		if !sameIP(from, dst.AsSlice()) {
			continue
		}
		return up
	}
}

func sameIP(a net.Addr, ip net.IP) bool {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.IP.Equal(ip)
	case *net.IPAddr:
		return a.IP.Equal(ip)
	}
	return false
}

// checkSMTP reads the server's banner and says HELO (keepalived's
// SMTP_CHECK): both must answer with their success codes.
func (s Spec) checkSMTP(ctx context.Context) Result {
	conn, err := s.dialer().DialContext(ctx, "tcp", s.Addr.String())
	if err != nil {
		return fail("smtp: %w", unwrapOp(err))
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	tp := textproto.NewConn(conn)
	if _, msg, err := tp.ReadResponse(220); err != nil {
		return fail("smtp banner: %s", smtpError(err, msg))
	}
	helo := s.SMTP.Helo
	if helo == "" {
		helo = "directord"
	}
	if err := tp.PrintfLine("HELO %s", helo); err != nil {
		return fail("smtp: %w", unwrapOp(err))
	}
	if _, msg, err := tp.ReadResponse(250); err != nil {
		return fail("smtp HELO: %s", smtpError(err, msg))
	}
	tp.PrintfLine("QUIT") // a polite end; its answer does not matter
	return up
}

func smtpError(err error, msg string) string {
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return fmt.Sprintf("answered %d %s", pe.Code, strings.TrimSpace(pe.Msg))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "no answer in time"
	}
	if msg != "" {
		return msg
	}
	return unwrapOp(err).Error()
}

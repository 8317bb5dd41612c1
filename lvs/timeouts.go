package lvs

import (
	"fmt"
	"maps"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"
)

// Timeouts are the idle timeouts of load-balanced connections, as
// ipvsadm --set tcp tcpfin udp: established TCP, TCP after a FIN, UDP.
// Zero leaves the kernel's.
type Timeouts struct {
	TCP, TCPFin, UDP time.Duration
}

// TimeoutSetter is a data plane whose connections' idle timeouts can be
// set.
type TimeoutSetter interface {
	SetTimeouts(Timeouts) error
	Timeouts() (Timeouts, error)
}

var (
	_ TimeoutSetter = (*IPVS)(nil)
	_ TimeoutSetter = (*NFT)(nil)
)

// SetTimeouts sets IPVS's timeouts (one setting for the whole kernel, as
// ipvsadm --set; zero leaves one as it is).
func (d *IPVS) SetTimeouts(t Timeouts) error {
	if t == (Timeouts{}) {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.h.SetConfig(&ipvs.Config{TimeoutTCP: t.TCP, TimeoutTCPFin: t.TCPFin, TimeoutUDP: t.UDP}); err != nil {
		return fmt.Errorf("ipvs: set timeouts: %w", err)
	}
	return nil
}

// Timeouts reads IPVS's timeouts back.
func (d *IPVS) Timeouts() (Timeouts, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.h.GetConfig()
	if err != nil {
		return Timeouts{}, fmt.Errorf("ipvs: read timeouts: %w", err)
	}
	return Timeouts{TCP: c.TimeoutTCP, TCPFin: c.TimeoutTCPFin, UDP: c.TimeoutUDP}, nil
}

// SetTimeouts gives the services' new connections conntrack timeout
// policies (ct timeout objects, set in the service's chain while the
// connection is not yet confirmed): tcp for established, tcpfin for the
// states after a FIN, udp for UDP both ways. It takes effect for the
// connections made from the next reconcile on: the table is rebuilt.
func (n *NFT) SetTimeouts(t Timeouts) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.timeouts == t {
		return nil
	}
	n.timeouts = t
	if n.base {
		n.conn.DelTable(n.table)
		if err := n.conn.Flush(); err != nil {
			return fmt.Errorf("nftables: rebuild for timeouts: %w", err)
		}
		n.reset()
	}
	return nil
}

// Timeouts are the timeouts set.
func (n *NFT) Timeouts() (Timeouts, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.timeouts, nil
}

// linuxTCPTimeouts are Linux's TCP conntrack timeouts, copied before the
// library's marshalling writes a policy into its own table of them.
var linuxTCPTimeouts = maps.Clone(expr.CtStateTCPTimeoutDefaults)

// timeoutObj names the ct timeout object for a service's protocol and
// family, or "" when none applies.
func (n *NFT) timeoutObj(s Service) string {
	switch {
	case s.Protocol == UDP && n.timeouts.UDP > 0:
	case s.Protocol == TCP && (n.timeouts.TCP > 0 || n.timeouts.TCPFin > 0):
	default:
		return ""
	}
	fam := "4"
	if s.Is6() {
		fam = "6"
	}
	return "timeout_" + string(s.Protocol) + fam
}

// addTimeouts adds the ct timeout objects of the timeouts set.
func (n *NFT) addTimeouts() {
	secs := func(d time.Duration) uint32 { return uint32(d / time.Second) }
	for _, fam := range []struct {
		suffix string
		l3     uint16
	}{{"4", unix.NFPROTO_IPV4}, {"6", unix.NFPROTO_IPV6}} {
		if t := n.timeouts; t.TCP > 0 || t.TCPFin > 0 {
			// The whole policy is given: the library starts from its
			// own defaults, which are Linux's.
			p := maps.Clone(linuxTCPTimeouts)
			if t.TCP > 0 {
				p[expr.CtStateTCPESTABLISHED] = secs(t.TCP)
			}
			if t.TCPFin > 0 {
				for _, st := range []uint16{expr.CtStateTCPFINWAIT, expr.CtStateTCPCLOSEWAIT, expr.CtStateTCPLASTACK, expr.CtStateTCPTIMEWAIT} {
					p[st] = secs(t.TCPFin)
				}
			}
			n.conn.AddObj(&nftables.NamedObj{Table: n.table, Name: "timeout_tcp" + fam.suffix, Type: nftables.ObjTypeCtTimeout,
				Obj: &expr.CtTimeout{L3Proto: fam.l3, L4Proto: unix.IPPROTO_TCP, Policy: p}})
		}
		if t := n.timeouts; t.UDP > 0 {
			p := expr.CtStatePolicyTimeout{expr.CtStateUDPUNREPLIED: secs(t.UDP), expr.CtStateUDPREPLIED: secs(t.UDP)}
			n.conn.AddObj(&nftables.NamedObj{Table: n.table, Name: "timeout_udp" + fam.suffix, Type: nftables.ObjTypeCtTimeout,
				Obj: &expr.CtTimeout{L3Proto: fam.l3, L4Proto: unix.IPPROTO_UDP, Policy: p}})
		}
	}
}

// timeoutRule sets the service's connections' timeout policy, if any.
func (n *NFT) timeoutRule(s *nsvc, sc *nftables.Chain) {
	if name := n.timeoutObj(s.svc); name != "" {
		n.conn.AddRule(&nftables.Rule{Table: n.table, Chain: sc,
			Exprs: []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCtTimeout), Name: name}}})
	}
}

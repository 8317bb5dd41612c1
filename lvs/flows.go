package lvs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	vnl "github.com/vishvananda/netlink"
)

// Flow is one connection of a virtual service, or one persistence
// template (a client pinned to a real server), as ipvsadm -Lnc lists
// them.
type Flow struct {
	Protocol Protocol
	Client   netip.AddrPort // a template's: the client (its prefix), port 0
	Service  Key
	Real     netip.AddrPort
	State    string // ESTABLISHED, TIME_WAIT, ...; UDP; NONE for a template
	Expires  time.Duration
	Template bool
}

// FlowLister is a data plane that lists its connections and templates.
type FlowLister interface {
	Flows() ([]Flow, error)
}

var (
	_ FlowLister = (*IPVS)(nil)
	_ FlowLister = (*NFT)(nil)
)

// SortFlows orders flows by service, then client, then real server.
func SortFlows(fs []Flow) {
	slices.SortFunc(fs, func(a, b Flow) int {
		if c := strings.Compare(a.Service.String(), b.Service.String()); c != 0 {
			return c
		}
		if c := a.Client.Compare(b.Client); c != 0 {
			return c
		}
		return a.Real.Compare(b.Real)
	})
}

// Flows lists IPVS's connection table (/proc/net/ip_vs_conn), templates
// included.
func (d *IPVS) Flows() ([]Flow, error) {
	b, err := os.ReadFile("/proc/net/ip_vs_conn")
	if err != nil {
		return nil, fmt.Errorf("ipvs: %w", err)
	}
	return parseIPVSConns(b)
}

// parseIPVSConns reads the kernel's ip_vs_conn table: a header line, then
// "PRO CADDR CPORT VADDR VPORT DADDR DPORT STATE EXPIRES [PE...]" with
// IPv4 addresses as 8 hex digits and IPv6 ones in full, ports in hex and
// the time left in seconds. A template's protocol is the service's (IP
// for a firewall mark, whose mark stands in the virtual address).
func parseIPVSConns(b []byte) ([]Flow, error) {
	var out []Flow
	sc := bufio.NewScanner(bytes.NewReader(b))
	for first := true; sc.Scan(); first = false {
		f := strings.Fields(sc.Text())
		if first || len(f) < 9 {
			continue
		}
		client, err1 := hexAddrPort(f[1], f[2])
		virtual, err2 := hexAddrPort(f[3], f[4])
		real, err3 := hexAddrPort(f[5], f[6])
		secs, err4 := strconv.ParseUint(f[8], 10, 32)
		if err := firstErr(err1, err2, err3, err4); err != nil {
			return nil, fmt.Errorf("ipvs connection %q: %w", sc.Text(), err)
		}
		// A template has no client port: persistence is per client. (Its
		// state reads NONE, or ASSURED once a connection used it.)
		fl := Flow{Protocol: Protocol(strings.ToLower(f[0])), Client: client, Real: real, State: f[7],
			Expires: time.Duration(secs) * time.Second, Template: client.Port() == 0}
		if fl.Protocol == "ip" {
			// A firewall mark's template: the mark in the address's
			// first four bytes.
			a := virtual.Addr().As16()
			if virtual.Addr().Is4() {
				a4 := virtual.Addr().As4()
				copy(a[:4], a4[:])
			}
			fl.Protocol, fl.Service = "", Key{FWMark: binary.BigEndian.Uint32(a[:4]), IPv6: virtual.Addr().Is6()}
		} else {
			fl.Service = Key{Protocol: fl.Protocol, Addr: virtual}
		}
		out = append(out, fl)
	}
	return out, sc.Err()
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// hexAddrPort reads an address as ip_vs_conn prints it (IPv4: 8 hex
// digits; IPv6: the full colon form) and a port in hex.
func hexAddrPort(addr, port string) (netip.AddrPort, error) {
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if strings.Contains(addr, ":") {
		a, err := netip.ParseAddr(addr)
		return netip.AddrPortFrom(a, uint16(p)), err
	}
	v, err := strconv.ParseUint(addr, 16, 32)
	if err != nil {
		return netip.AddrPort{}, err
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(v))
	return netip.AddrPortFrom(netip.AddrFrom4(b), uint16(p)), nil
}

// tcpStates are conntrack's TCP state names, by number, as IPVS spells
// its own.
var tcpStates = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT"}

// Flows lists the conntrack entries of the table's services and the
// persistence entries (as templates).
func (n *NFT) Flows() ([]Flow, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	byAddr := map[Key]*nsvc{}
	byMark := map[uint32]*nsvc{}
	for _, s := range n.svcs {
		if s.svc.FWMark != 0 {
			byMark[s.svc.FWMark] = s
		} else {
			byAddr[s.svc.Key] = s
		}
	}
	var out []Flow
	for _, six := range []bool{false, true} {
		flows, err := dumpConntrack(n.nl, six) // what is there now, not a dump kept for draining
		if err != nil {
			return nil, err
		}
		for _, f := range flows {
			proto := protoName(f.Forward.Protocol)
			vip, _ := netip.AddrFromSlice(f.Forward.DstIP)
			s := byMark[f.Mark]
			if s == nil {
				s = byAddr[Key{Protocol: proto, Addr: netip.AddrPortFrom(vip.Unmap(), f.Forward.DstPort)}]
			}
			if s == nil {
				continue
			}
			rs, _ := netip.AddrFromSlice(f.Reverse.SrcIP)
			real := netip.AddrPortFrom(rs.Unmap(), f.Reverse.SrcPort)
			if !slices.ContainsFunc(s.reals, func(r Real) bool { return flowTo(f, s.svc.Key, r.Addr) }) {
				continue // not NATed to one of its servers (the director's own traffic)
			}
			client, _ := netip.AddrFromSlice(f.Forward.SrcIP)
			state := strings.ToUpper(string(proto))
			if tcp, ok := f.ProtoInfo.(*vnl.ProtoInfoTCP); ok && int(tcp.State) < len(tcpStates) {
				state = tcpStates[tcp.State]
			}
			out = append(out, Flow{Protocol: proto, Client: netip.AddrPortFrom(client.Unmap(), f.Forward.SrcPort), Service: s.svc.Key,
				Real: real, State: state, Expires: time.Duration(f.TimeOut) * time.Second})
		}
	}
	pers, err := n.persistEntries()
	if err != nil {
		return nil, err
	}
	for _, p := range pers {
		out = append(out, Flow{Protocol: p.Service.Protocol, Client: netip.AddrPortFrom(p.Client, 0), Service: p.Service, Real: p.Real,
			State: "NONE", Expires: p.Expires, Template: true})
	}
	return out, nil
}

// protoName is the Protocol of an IP protocol number ("" for others).
func protoName(p uint8) Protocol {
	for _, x := range []Protocol{TCP, UDP, SCTP} {
		if protoNum(x) == p {
			return x
		}
	}
	return ""
}

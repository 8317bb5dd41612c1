package lvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// IPVS service flags (linux/ip_vs.h); moby/ipvs exports none.
const (
	svcPersistent = 0x1
	svcHashed     = 0x2 // set by the kernel, never by us
	svcOnePacket  = 0x4
)

// ipvsHandle is the part of moby's handle we use. There is no double of
// it: the IPVS data plane is tested on a kernel with IPVS, in the qemu
// guest (make test-ipvs); the reconciler's logic on lvstest.Fake.
type ipvsHandle interface {
	GetServices() ([]*ipvs.Service, error)
	GetDestinations(*ipvs.Service) ([]*ipvs.Destination, error)
	NewService(*ipvs.Service) error
	UpdateService(*ipvs.Service) error
	DelService(*ipvs.Service) error
	NewDestination(*ipvs.Service, *ipvs.Destination) error
	UpdateDestination(*ipvs.Service, *ipvs.Destination) error
	DelDestination(*ipvs.Service, *ipvs.Destination) error
	SetConfig(*ipvs.Config) error
	GetConfig() (*ipvs.Config, error)
	Close()
}

var _ ipvsHandle = (*ipvs.Handle)(nil)

// IPVS is the data plane of the kernel's IP Virtual Server, through
// github.com/moby/ipvs. Calls are serialised: one netlink socket, one
// request at a time.
type IPVS struct {
	mu   sync.Mutex
	h    ipvsHandle
	caps Capabilities // IPVSCapabilities with this kernel's schedulers
	genl *ipvsGenl    // 64-bit counters and zeroing (ipvsstats.go); opened when first needed
}

var (
	_ Dataplane   = (*IPVS)(nil)
	_ StatsLister = (*IPVS)(nil)
)

// DetectIPVS reports why the kernel cannot do IPVS, or nil. It loads
// ip_vs if it is a module. moby/ipvs cannot be asked: without IPVS it
// hands out a handle that accepts every call and does nothing.
func DetectIPVS() error {
	if _, err := netlink.GenlFamilyGet("IPVS"); err == nil {
		return nil
	}
	out, err := exec.Command("modprobe", "ip_vs").CombinedOutput()
	if _, gerr := netlink.GenlFamilyGet("IPVS"); gerr == nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("no IPVS in this kernel (modprobe ip_vs: %s)", strings.TrimSpace(string(out)+" "+err.Error()))
	}
	return errors.New("no IPVS in this kernel (no IPVS generic netlink family after modprobe ip_vs)")
}

// NewIPVS opens the IPVS data plane in the daemon's network namespace.
func NewIPVS() (*IPVS, error) {
	if err := DetectIPVS(); err != nil {
		return nil, err
	}
	h, err := ipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("ipvs: %w", err)
	}
	caps, _ := IPVSKernelCapabilities()
	return &IPVS{h: h, caps: caps}, nil
}

func (d *IPVS) Name() string               { return "ipvs" }
func (d *IPVS) Capabilities() Capabilities { return d.caps }

func (d *IPVS) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.h.Close()
	if d.genl != nil {
		d.genl.Close()
	}
	return nil
}

// ListStats is List with the kernel's 64-bit counters in place of the
// 32-bit ones moby/ipvs reads (which wrap after 4 G packets).
func (d *IPVS) ListStats() ([]Entry, error) {
	es, err := d.List()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	g, err := d.genlConn()
	if err != nil {
		return nil, err
	}
	st, err := g.stats()
	if err != nil {
		return nil, err
	}
	for i := range es {
		if s, ok := st.svc[es[i].Key]; ok {
			es[i].Stats = s
		}
		for j := range es[i].Reals {
			if s, ok := st.dest[realKey{es[i].Key, es[i].Reals[j].Addr}]; ok {
				es[i].Reals[j].Stats = s
			}
		}
	}
	return es, nil
}

// Zero sets every service's and real server's counters to zero, as
// ipvsadm -Z.
func (d *IPVS) Zero() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	g, err := d.genlConn()
	if err != nil {
		return err
	}
	return g.zero()
}

// genlConn is the generic netlink socket, opened at its first use; d.mu
// is held.
func (d *IPVS) genlConn() (*ipvsGenl, error) {
	if d.genl == nil {
		g, err := dialIPVSGenl()
		if err != nil {
			return nil, err
		}
		d.genl = g
	}
	return d.genl, nil
}

func (d *IPVS) List() ([]Entry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	svcs, err := d.h.GetServices()
	if err != nil {
		return nil, fmt.Errorf("ipvs: list services: %w", err)
	}
	out := make([]Entry, 0, len(svcs))
	for _, s := range svcs {
		e := Entry{Service: fromIPVSService(s), Stats: fromIPVSStats(ipvs.DstStats(s.Stats))}
		dsts, err := d.h.GetDestinations(s)
		if err != nil {
			return nil, fmt.Errorf("ipvs: list real servers of %s: %w", e.Key, err)
		}
		for _, dst := range dsts {
			e.Reals = append(e.Reals, RealState{
				Real:     fromIPVSDest(dst),
				Active:   dst.ActiveConnections,
				Inactive: dst.InactiveConnections,
				Stats:    fromIPVSStats(dst.Stats),
			})
		}
		out = append(out, e)
	}
	Sort(out)
	return out, nil
}

func (d *IPVS) Apply(ops []Op) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, op := range ops {
		s := toIPVSService(op.Service)
		var err error
		switch op.Kind {
		case AddService:
			err = d.h.NewService(s)
		case UpdateService:
			err = d.h.UpdateService(s)
		case DelService:
			err = d.h.DelService(s)
		case AddReal:
			err = d.h.NewDestination(s, toIPVSDest(op.Real))
		case UpdateReal:
			err = d.h.UpdateDestination(s, toIPVSDest(op.Real))
		case DelReal:
			err = d.h.DelDestination(s, toIPVSDest(op.Real))
		default:
			err = errors.New("unknown operation")
		}
		if err != nil {
			return fmt.Errorf("ipvs: %s: %w", op, err)
		}
	}
	return nil
}

var protoNums = map[Protocol]uint16{TCP: unix.IPPROTO_TCP, UDP: unix.IPPROTO_UDP, SCTP: unix.IPPROTO_SCTP}

func toIPVSService(s Service) *ipvs.Service {
	out := &ipvs.Service{SchedName: s.Scheduler, Flags: s.Flags, AddressFamily: unix.AF_INET}
	if s.Is6() {
		out.AddressFamily = unix.AF_INET6
	}
	if s.FWMark != 0 {
		out.FWMark = s.FWMark
	} else {
		out.Protocol = protoNums[s.Protocol]
		out.Address = net.IP(s.Addr.Addr().AsSlice())
		out.Port = s.Addr.Port()
	}
	if s.OnePacket {
		out.Flags |= svcOnePacket
	}
	if s.Persistence > 0 {
		out.Flags |= svcPersistent
		out.Timeout = uint32(s.Persistence / time.Second)
	}
	// The kernel wants a netmask on every IPv6 service (a prefix length,
	// 1-128) and keeps one on IPv4 ones (the mask in network order, which
	// moby sends in host order), as ipvsadm sends them.
	bits := s.persistenceBits()
	if s.Persistence == 0 {
		bits = 128
		if !s.Is6() {
			bits = 32
		}
	}
	if s.Is6() {
		out.Netmask = uint32(bits)
	} else {
		out.Netmask = binary.NativeEndian.Uint32(net.CIDRMask(bits, 32))
	}
	return out
}

func fromIPVSService(s *ipvs.Service) Service {
	var out Service
	six := s.AddressFamily == unix.AF_INET6
	if s.FWMark != 0 {
		out.Key = Key{FWMark: s.FWMark, IPv6: six}
	} else {
		for p, n := range protoNums {
			if n == s.Protocol {
				out.Protocol = p
			}
		}
		a, _ := netip.AddrFromSlice(s.Address)
		if !six {
			a = a.Unmap()
		}
		out.Addr = netip.AddrPortFrom(a, s.Port)
	}
	out.Scheduler = s.SchedName
	out.Flags = s.Flags &^ (svcPersistent | svcHashed | svcOnePacket)
	out.OnePacket = s.Flags&svcOnePacket != 0
	if s.Flags&svcPersistent != 0 {
		out.Persistence = time.Duration(s.Timeout) * time.Second
		if six {
			out.PersistenceBits = int(s.Netmask)
		} else {
			b := binary.NativeEndian.AppendUint32(nil, s.Netmask)
			out.PersistenceBits, _ = net.IPMask(b).Size()
		}
	}
	return out
}

var methods = map[Method]uint32{NAT: ipvs.ConnectionFlagMasq, DR: ipvs.ConnectionFlagDirectRoute, Tunnel: ipvs.ConnectionFlagTunnel}

func toIPVSDest(r Real) *ipvs.Destination {
	fam := uint16(unix.AF_INET)
	if r.Addr.Addr().Is6() {
		fam = unix.AF_INET6
	}
	return &ipvs.Destination{
		Address: net.IP(r.Addr.Addr().AsSlice()), Port: r.Addr.Port(), Weight: r.Weight,
		ConnectionFlags: methods[r.Method], AddressFamily: fam,
		UpperThreshold: r.Upper, LowerThreshold: r.Lower,
	}
}

func fromIPVSDest(d *ipvs.Destination) Real {
	a, _ := netip.AddrFromSlice(d.Address)
	if d.AddressFamily != unix.AF_INET6 {
		a = a.Unmap()
	}
	out := Real{Addr: netip.AddrPortFrom(a, d.Port), Weight: d.Weight, Upper: d.UpperThreshold, Lower: d.LowerThreshold}
	for m, f := range methods {
		if d.ConnectionFlags&ipvs.ConnectionFlagFwdMask == f {
			out.Method = m
		}
	}
	if out.Method == "" {
		out.Method = Method(fmt.Sprintf("fwd%d", d.ConnectionFlags&ipvs.ConnectionFlagFwdMask))
	}
	return out
}

func fromIPVSStats(s ipvs.DstStats) Stats {
	return Stats{
		Connections: uint64(s.Connections), PacketsIn: uint64(s.PacketsIn), PacketsOut: uint64(s.PacketsOut),
		BytesIn: s.BytesIn, BytesOut: s.BytesOut,
		CPS: uint64(s.CPS), PPSIn: uint64(s.PPSIn), PPSOut: uint64(s.PPSOut), BPSIn: uint64(s.BPSIn), BPSOut: uint64(s.BPSOut),
	}
}

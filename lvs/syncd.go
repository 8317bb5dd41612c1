package lvs

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The IPVS sync daemon's generic-netlink commands and attributes
// (linux/ip_vs.h). moby/ipvs has the command numbers but no call.
const (
	ipvsCmdNewDaemon  = 9
	ipvsCmdDelDaemon  = 10
	ipvsCmdGetDaemon  = 11
	ipvsCmdAttrDaemon = 3

	daemonAttrState       = 1
	daemonAttrMcastIfn    = 2
	daemonAttrSyncID      = 3
	daemonAttrSyncMaxlen  = 4
	daemonAttrMcastGroup  = 5
	daemonAttrMcastGroup6 = 6
	daemonAttrMcastPort   = 7
	daemonAttrMcastTTL    = 8
)

// SyncState is the role of an IPVS sync daemon.
type SyncState uint32

const (
	SyncMaster SyncState = 1
	SyncBackup SyncState = 2
)

func (s SyncState) String() string {
	switch s {
	case SyncMaster:
		return "master"
	case SyncBackup:
		return "backup"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// SyncDaemon is one of the kernel's IPVS connection-sync daemons, as
// ipvsadm --start-daemon sets it up.
type SyncDaemon struct {
	State     SyncState  `json:"state"`
	Interface string     `json:"interface"`
	SyncID    uint32     `json:"sync_id"`
	MaxLen    uint16     `json:"maxlen,omitempty"` // 0: the kernel's default
	Group     netip.Addr `json:"group,omitzero"`   // zero: 224.0.0.81; IPv4 or IPv6
	Port      uint16     `json:"port,omitempty"`   // 0: 8848
	TTL       uint8      `json:"ttl,omitempty"`    // 0: 1
}

func ipvsFamily() (int, error) {
	f, err := netlink.GenlFamilyGet("IPVS")
	if err != nil {
		return 0, fmt.Errorf("no IPVS in this kernel: %w", err)
	}
	return int(f.ID), nil
}

// StartSyncDaemon starts a sync daemon in the kernel.
func StartSyncDaemon(d SyncDaemon) error {
	fam, err := ipvsFamily()
	if err != nil {
		return err
	}
	req := nl.NewNetlinkRequest(fam, unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: ipvsCmdNewDaemon, Version: 1})
	attr := nl.NewRtAttr(ipvsCmdAttrDaemon|unix.NLA_F_NESTED, nil)
	attr.AddRtAttr(daemonAttrState, nl.Uint32Attr(uint32(d.State)))
	attr.AddRtAttr(daemonAttrMcastIfn, nl.ZeroTerminated(d.Interface))
	attr.AddRtAttr(daemonAttrSyncID, nl.Uint32Attr(d.SyncID))
	if d.MaxLen != 0 {
		attr.AddRtAttr(daemonAttrSyncMaxlen, nl.Uint16Attr(d.MaxLen))
	}
	switch {
	case d.Group.Is4():
		a := d.Group.As4()
		attr.AddRtAttr(daemonAttrMcastGroup, a[:])
	case d.Group.Is6():
		a := d.Group.As16()
		attr.AddRtAttr(daemonAttrMcastGroup6, a[:])
	}
	if d.Port != 0 {
		attr.AddRtAttr(daemonAttrMcastPort, binary.BigEndian.AppendUint16(nil, d.Port))
	}
	if d.TTL != 0 {
		attr.AddRtAttr(daemonAttrMcastTTL, nl.Uint8Attr(d.TTL))
	}
	req.AddData(attr)
	if _, err := req.Execute(unix.NETLINK_GENERIC, 0); err != nil {
		return fmt.Errorf("start IPVS sync daemon %s on %s: %w", d.State, d.Interface, err)
	}
	return nil
}

// StopSyncDaemon stops the kernel's sync daemon of that state.
func StopSyncDaemon(state SyncState) error {
	fam, err := ipvsFamily()
	if err != nil {
		return err
	}
	req := nl.NewNetlinkRequest(fam, unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: ipvsCmdDelDaemon, Version: 1})
	attr := nl.NewRtAttr(ipvsCmdAttrDaemon|unix.NLA_F_NESTED, nil)
	attr.AddRtAttr(daemonAttrState, nl.Uint32Attr(uint32(state)))
	req.AddData(attr)
	if _, err := req.Execute(unix.NETLINK_GENERIC, 0); err != nil && err != syscall.ESRCH {
		return fmt.Errorf("stop IPVS sync daemon %s: %w", state, err)
	}
	return nil
}

// SyncDaemons lists the sync daemons the kernel runs.
func SyncDaemons() ([]SyncDaemon, error) {
	fam, err := ipvsFamily()
	if err != nil {
		return nil, err
	}
	req := nl.NewNetlinkRequest(fam, unix.NLM_F_DUMP)
	req.AddData(&nl.Genlmsg{Command: ipvsCmdGetDaemon, Version: 1})
	msgs, err := req.Execute(unix.NETLINK_GENERIC, 0)
	if err != nil {
		return nil, fmt.Errorf("list IPVS sync daemons: %w", err)
	}
	var out []SyncDaemon
	for _, m := range msgs {
		if len(m) < 4 {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[4:]) // after the generic header
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED != ipvsCmdAttrDaemon {
				continue
			}
			inner, err := nl.ParseRouteAttr(a.Value)
			if err != nil {
				return nil, err
			}
			var d SyncDaemon
			for _, x := range inner {
				switch x.Attr.Type {
				case daemonAttrState:
					d.State = SyncState(native.Uint32(x.Value))
				case daemonAttrMcastIfn:
					d.Interface = string(trimNul(x.Value))
				case daemonAttrSyncID:
					d.SyncID = native.Uint32(x.Value)
				case daemonAttrSyncMaxlen:
					d.MaxLen = native.Uint16(x.Value)
				case daemonAttrMcastGroup:
					// The kernel sends both groups, the unused one zero.
					if len(x.Value) == 4 {
						if a := netip.AddrFrom4([4]byte(x.Value)); !a.IsUnspecified() {
							d.Group = a
						}
					}
				case daemonAttrMcastGroup6:
					if len(x.Value) == 16 {
						if a := netip.AddrFrom16([16]byte(x.Value)); !a.IsUnspecified() {
							d.Group = a
						}
					}
				case daemonAttrMcastPort:
					d.Port = binary.BigEndian.Uint16(x.Value)
				case daemonAttrMcastTTL:
					d.TTL = x.Value[0]
				}
			}
			out = append(out, d)
		}
	}
	return out, nil
}

var native = binary.NativeEndian

func trimNul(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

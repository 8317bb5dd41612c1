package vrrp

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
)

// VMACs makes and removes the macvlan interfaces of use_vmac.
type VMACs interface {
	// Ensure makes name, a macvlan on base with mac, and brings it up;
	// one already there as asked is kept.
	Ensure(base, name string, mac net.HardwareAddr) error
	Remove(name string) error
}

// NetlinkVMACs manages VMAC interfaces with rtnetlink, as keepalived's
// vrrp_vmac.c: private mode, and the sysctls that make the parent leave
// ARP for the virtual addresses to the VMAC.
type NetlinkVMACs struct {
	// Sysctl is /proc/sys (tests point it elsewhere); empty: /proc/sys.
	Sysctl string
}

var _ VMACs = NetlinkVMACs{}

func (n NetlinkVMACs) Ensure(base, name string, mac net.HardwareAddr) error {
	parent, err := netlink.LinkByName(base)
	if err != nil {
		return fmt.Errorf("VMAC %s: interface %s: %w", name, base, err)
	}
	l, err := netlink.LinkByName(name)
	switch {
	case err == nil:
		mv, ok := l.(*netlink.Macvlan)
		if !ok || mv.ParentIndex != parent.Attrs().Index || !bytes.Equal(mv.HardwareAddr, mac) {
			return fmt.Errorf("VMAC %s: an interface of that name exists and is not a macvlan on %s with %s; rename one", name, base, mac)
		}
	case errors.As(err, new(netlink.LinkNotFoundError)):
		mv := &netlink.Macvlan{
			LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: parent.Attrs().Index, HardwareAddr: mac},
			Mode:      netlink.MACVLAN_MODE_PRIVATE,
		}
		if err := netlink.LinkAdd(mv); err != nil {
			return fmt.Errorf("VMAC %s on %s: %w", name, base, err)
		}
		l = mv
	default:
		return fmt.Errorf("VMAC %s: %w", name, err)
	}
	// The parent must not answer ARP for the addresses on the VMAC with
	// its own MAC (keepalived's arp_ignore and arp_filter), nor name one
	// as the sender of its own ARP requests (arp_announce: answering the
	// VIP's clients it would teach them its own MAC for the VIP, and a
	// failover would strand them); the VMAC answers only for its own
	// addresses and takes packets from its own addresses.
	// No IPv6 on it: its link-local address and multicast reports would
	// come from the virtual MAC while another director is master, and
	// the switch would send the master's traffic here.
	for _, s := range []struct{ family, ifname, key, value string }{
		{"ipv4", base, "arp_ignore", "1"}, {"ipv4", base, "arp_filter", "1"}, {"ipv4", base, "arp_announce", "2"},
		{"ipv4", name, "arp_ignore", "1"}, {"ipv4", name, "accept_local", "1"}, {"ipv4", name, "rp_filter", "0"},
		{"ipv6", name, "disable_ipv6", "1"},
	} {
		if err := n.set(s.family, s.ifname, s.key, s.value); err != nil {
			return fmt.Errorf("VMAC %s: %w", name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("VMAC %s: up: %w", name, err)
	}
	return nil
}

func (n NetlinkVMACs) set(family, ifname, key, value string) error {
	root := n.Sysctl
	if root == "" {
		root = "/proc/sys"
	}
	path := filepath.Join(root, "net", family, "conf", ifname, key)
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set %s: %w", path, err)
	}
	return nil
}

func (NetlinkVMACs) Remove(name string) error {
	l, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("VMAC %s: %w", name, err)
	}
	if _, ok := l.(*netlink.Macvlan); !ok {
		return fmt.Errorf("VMAC %s: not a macvlan; left alone", name)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("remove VMAC %s: %w", name, err)
	}
	return nil
}

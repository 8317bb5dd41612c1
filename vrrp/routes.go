package vrrp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/directord/directord/vrrp/route"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route and Rule are an instance's virtual_routes and virtual_rules,
// present while it is master.
type (
	Route = route.Route
	Rule  = route.Rule
)

// Routing adds and removes an instance's virtual routes and rules.
type Routing interface {
	AddRoute(dev string, r Route) error
	RemoveRoute(dev string, r Route) error
	AddRule(r Rule) error
	RemoveRule(r Rule) error
}

// NetlinkRouting manages routes and rules with rtnetlink.
type NetlinkRouting struct{}

var _ Routing = NetlinkRouting{}

func (NetlinkRouting) route(dev string, r Route) (*netlink.Route, error) {
	nr := &netlink.Route{Dst: prefixNet(r.Dst), Table: r.Table, Priority: r.Metric}
	if r.Blackhole {
		nr.Type = unix.RTN_BLACKHOLE
	} else {
		if r.Dev != "" {
			dev = r.Dev
		}
		l, err := netlink.LinkByName(dev)
		if err != nil {
			return nil, fmt.Errorf("route %s: interface %s: %w", r, dev, err)
		}
		nr.LinkIndex = l.Attrs().Index
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
	}
	if r.Src.IsValid() {
		nr.Src = r.Src.AsSlice()
	}
	switch r.Scope {
	case "host":
		nr.Scope = netlink.SCOPE_HOST
	case "link":
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.Dst.Addr().Is4() {
		nr.Family = netlink.FAMILY_V4
	} else {
		nr.Family = netlink.FAMILY_V6
	}
	return nr, nil
}

// AddRoute replaces the route, so that a leftover from an earlier run is
// taken over rather than an error.
func (n NetlinkRouting) AddRoute(dev string, r Route) error {
	nr, err := n.route(dev, r)
	if err != nil {
		return err
	}
	if err := netlink.RouteReplace(nr); err != nil {
		return fmt.Errorf("add route %s: %w", r, err)
	}
	return nil
}

func (n NetlinkRouting) RemoveRoute(dev string, r Route) error {
	nr, err := n.route(dev, r)
	if err != nil {
		return err
	}
	if err := netlink.RouteDel(nr); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("remove route %s: %w", r, err)
	}
	return nil
}

func rule(r Rule) *netlink.Rule {
	nr := netlink.NewRule()
	nr.Table = r.Table
	nr.Priority = -1
	if r.Priority != 0 {
		nr.Priority = r.Priority
	}
	if r.From.IsValid() {
		nr.Src = prefixNet(r.From)
	}
	if r.To.IsValid() {
		nr.Dst = prefixNet(r.To)
	}
	nr.IifName, nr.OifName = r.IIF, r.OIF
	if r.FWMark != 0 {
		nr.Mark = r.FWMark
	}
	nr.Family = netlink.FAMILY_V4
	if r.Family() == 6 {
		nr.Family = netlink.FAMILY_V6
	}
	return nr
}

func (NetlinkRouting) AddRule(r Rule) error {
	// A rule is not replaced but added again: remove a leftover first.
	_ = netlink.RuleDel(rule(r))
	if err := netlink.RuleAdd(rule(r)); err != nil {
		return fmt.Errorf("add rule %s: %w", r, err)
	}
	return nil
}

func (NetlinkRouting) RemoveRule(r Rule) error {
	if err := netlink.RuleDel(rule(r)); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove rule %s: %w", r, err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

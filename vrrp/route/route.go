// Package route reads keepalived's virtual_routes and virtual_rules
// syntax into values: no kernel here, so that directorctl's configuration
// checks can use it.
package route

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Route is one of an instance's virtual_routes: present while it is
// master, as keepalived's.
type Route struct {
	Dst       netip.Prefix `json:"dst"`
	Via       netip.Addr   `json:"via,omitzero"`
	Src       netip.Addr   `json:"src,omitzero"`
	Dev       string       `json:"dev,omitempty"` // empty: the instance's interface
	Table     int          `json:"table,omitempty"`
	Metric    int          `json:"metric,omitempty"`
	Scope     string       `json:"scope,omitempty"` // host, link or global (default)
	Blackhole bool         `json:"blackhole,omitempty"`
}

// Rule is one of an instance's virtual_rules (a policy routing rule):
// present while it is master.
type Rule struct {
	From     netip.Prefix `json:"from,omitzero"`
	To       netip.Prefix `json:"to,omitzero"`
	Table    int          `json:"table"`
	Priority int          `json:"priority,omitempty"`
	IIF      string       `json:"iif,omitempty"`
	OIF      string       `json:"oif,omitempty"`
	FWMark   uint32       `json:"fwmark,omitempty"`
}

// words walks "key value" pairs of keepalived's route and rule syntax.
type words struct {
	f []string
	i int
}

func (w *words) next() (string, bool) {
	if w.i >= len(w.f) {
		return "", false
	}
	w.i++
	return w.f[w.i-1], true
}

// pairs calls fn with each remaining "key value" pair, until an error.
func (w *words) pairs(fn func(k, v string) error) error {
	for {
		k, ok := w.next()
		if !ok {
			return nil
		}
		v, ok := w.next()
		if !ok {
			return fmt.Errorf("%s needs a value", k)
		}
		if err := fn(k, v); err != nil {
			return err
		}
	}
}

func prefixOf(s string) (netip.Prefix, error) {
	if s == "default" {
		return netip.Prefix{}, errors.New(`"default" needs the family: write 0.0.0.0/0 or ::/0`)
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		if p != p.Masked() {
			return p, fmt.Errorf("%s has host bits set (%s)", s, p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address or prefix", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func number(key, s string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s %q: want a number from %d to %d", key, s, lo, hi)
	}
	return n, nil
}

func addrOf(key, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("%s %q is not an IP address", key, s)
	}
	return a, nil
}

// Parse reads keepalived's virtual_routes syntax:
// "[blackhole] DST [via|gw ADDR] [src ADDR] [dev IF] [table N] [metric N] [scope host|link|global]".
func Parse(s string) (Route, error) {
	w := &words{f: strings.Fields(s)}
	var r Route
	first, ok := w.next()
	if !ok {
		return r, errors.New("empty route")
	}
	if first == "blackhole" {
		r.Blackhole = true
		if first, ok = w.next(); !ok {
			return r, errors.New("blackhole needs a destination")
		}
	}
	var err error
	if r.Dst, err = prefixOf(first); err != nil {
		return r, err
	}
	if err := w.pairs(func(k, v string) (err error) {
		switch k {
		case "via", "gw":
			r.Via, err = addrOf(k, v)
		case "src":
			r.Src, err = addrOf(k, v)
		case "dev":
			r.Dev = v
			if len(v) > 15 {
				err = fmt.Errorf("dev %q is not an interface name", v)
			}
		case "table":
			r.Table, err = number(k, v, 1, 1<<31-1)
		case "metric", "preference":
			r.Metric, err = number(k, v, 0, 1<<31-1)
		case "scope":
			r.Scope = v
			if v != "host" && v != "link" && v != "global" {
				err = fmt.Errorf("scope %q: want host, link or global", v)
			}
		default:
			err = fmt.Errorf("%q is not a route option directord knows (via, src, dev, table, metric, scope)", k)
		}
		return err
	}); err != nil {
		return r, err
	}
	for _, a := range []netip.Addr{r.Via, r.Src} {
		if a.IsValid() && a.Is4() != r.Dst.Addr().Is4() {
			return r, fmt.Errorf("%s is not of the destination's family", a)
		}
	}
	if r.Blackhole && (r.Via.IsValid() || r.Dev != "") {
		return r, errors.New("a blackhole route has no gateway or device")
	}
	return r, nil
}

func (r Route) String() string {
	dst := r.Dst.String()
	if r.Blackhole {
		dst = "blackhole " + dst
	}
	return dst + options("via", addr(r.Via), "src", addr(r.Src), "dev", r.Dev, "table", num(r.Table),
		"metric", num(r.Metric), "scope", r.Scope)
}

// options writes " key value" for each pair with a value.
func options(kv ...string) string {
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			fmt.Fprintf(&b, " %s %s", kv[i], kv[i+1])
		}
	}
	return b.String()
}

func addr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func pfx(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func num(n int) string {
	if n == 0 {
		return ""
	}
	return strconv.Itoa(n)
}

// ParseRule reads keepalived's virtual_rules syntax:
// "[from PREFIX] [to PREFIX] [iif IF] [oif IF] [fwmark N] [priority N] table N".
func ParseRule(s string) (Rule, error) {
	w := &words{f: strings.Fields(s)}
	var r Rule
	if err := w.pairs(func(k, v string) (err error) {
		var n int
		switch k {
		case "from":
			r.From, err = prefixOf(v)
		case "to":
			r.To, err = prefixOf(v)
		case "iif":
			r.IIF = v
		case "oif":
			r.OIF = v
		case "fwmark":
			n, err = number(k, v, 1, 1<<31-1)
			r.FWMark = uint32(n)
		case "priority", "preference", "pref":
			r.Priority, err = number(k, v, 1, 32765)
		case "table", "lookup":
			r.Table, err = number(k, v, 1, 1<<31-1)
		default:
			err = fmt.Errorf("%q is not a rule option directord knows (from, to, iif, oif, fwmark, priority, table)", k)
		}
		return err
	}); err != nil {
		return r, err
	}
	switch {
	case r.Table == 0:
		return r, errors.New("a rule needs a table")
	case !r.From.IsValid() && !r.To.IsValid():
		return r, errors.New("a rule needs from or to (its address family)")
	case r.From.IsValid() && r.To.IsValid() && r.From.Addr().Is4() != r.To.Addr().Is4():
		return r, errors.New("from and to are of different families")
	}
	return r, nil
}

// Family is the rule's address family: 4 or 6.
func (r Rule) Family() int {
	p := r.From
	if !p.IsValid() {
		p = r.To
	}
	if p.Addr().Is4() {
		return 4
	}
	return 6
}

func (r Rule) String() string {
	return strings.TrimPrefix(options("from", pfx(r.From), "to", pfx(r.To), "iif", r.IIF, "oif", r.OIF,
		"fwmark", num(int(r.FWMark)), "priority", num(r.Priority), "table", strconv.Itoa(r.Table)), " ")
}

// Package conf writes directord's TOML files from Go values for the tests,
// the benchmarks and the demo: the one place outside internal/config that
// knows the file's shape, instead of a template in each of them.
//
// Keys the builder has no field for go in Extra, as TOML lines
// ("preempt = false"); they are written at the end of their table.
package conf

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/directord/directord/cluster/pki"
)

// File is one directord configuration file.
type File struct {
	Node           Node
	Dataplane      []string // lines of [dataplane]
	Cluster        *Cluster
	Sync           *Sync
	VRRP           []Instance
	SyncGroups     []SyncGroup
	VirtualServers []VirtualServer
}

// Node is [node].
type Node struct {
	Name, Role, DataDir, StatusSocket, MetricsListen string
	Extra                                            []string
}

// Cluster is [cluster].
type Cluster struct {
	Bind, RaftBind  string
	Peers           []string
	Members         []string
	BootstrapExpect int
	EncryptKey      string
	TLS             TLS
	Extra           []string
}

// TLS are a member's [cluster] certificate files.
type TLS struct{ Cert, Key, CA string }

// Certs writes into dir a CA and a key pair for each member (name and
// IPs, as directorctl cluster certs does) and returns each one's files.
func Certs(dir string, members ...pki.Member) (map[string]TLS, error) {
	ca, err := pki.NewCA("directord test CA", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	f, err := pki.WriteAll(dir, ca, members, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	out := map[string]TLS{}
	for _, m := range members {
		out[m.Name] = TLS{Cert: f.Cert[m.Name], Key: f.Key[m.Name], CA: f.CA}
	}
	return out, nil
}

// Sync is [sync]: the conntrack sync.
type Sync struct{ Listen, Peer, Key, Instance string }

// Instance is a [[vrrp_instance]].
type Instance struct {
	Name, Interface string
	VRID, Priority  int
	AdvertInt       string // "" for the default
	VIPs            []string
	Extra           []string
}

// SyncGroup is a [[vrrp_sync_group]].
type SyncGroup struct {
	Name    string
	Members []string
}

// VirtualServer is a [[virtual_server]] with its check and real servers.
type VirtualServer struct {
	Name, Address, Protocol, Scheduler string
	Extra                              []string
	Check                              *Check
	Reals                              []Real
}

// Check is [virtual_server.health_check].
type Check struct {
	Type, Interval, Timeout string
	Extra                   []string
}

// Real is a [[virtual_server.real_server]]; Weight 0 leaves the default.
type Real struct {
	Address string
	Weight  int
	Extra   []string
}

// writer writes tables of key = value lines, leaving out empty values.
type writer struct{ strings.Builder }

func (w *writer) table(header string) { fmt.Fprintf(w, "\n%s\n", header) }

func (w *writer) str(indent, key, v string) {
	if v != "" {
		fmt.Fprintf(w, "%s%s = %q\n", indent, key, v)
	}
}

func (w *writer) num(indent, key string, v int) {
	if v != 0 {
		fmt.Fprintf(w, "%s%s = %d\n", indent, key, v)
	}
}

func (w *writer) list(indent, key string, vs []string) {
	if vs == nil {
		return
	}
	q := make([]string, len(vs))
	for i, v := range vs {
		q[i] = fmt.Sprintf("%q", v)
	}
	fmt.Fprintf(w, "%s%s = [%s]\n", indent, key, strings.Join(q, ", "))
}

func (w *writer) lines(indent string, ls []string) {
	for _, l := range ls {
		fmt.Fprintf(w, "%s%s\n", indent, l)
	}
}

// String is the file's text.
func (f File) String() string {
	var w writer
	w.WriteString("[node]\n")
	w.str("", "name", f.Node.Name)
	w.str("", "role", f.Node.Role)
	w.str("", "data_dir", f.Node.DataDir)
	w.str("", "status_socket", f.Node.StatusSocket)
	w.str("", "metrics_listen", f.Node.MetricsListen)
	w.lines("", f.Node.Extra)
	if f.Dataplane != nil {
		w.table("[dataplane]")
		w.lines("", f.Dataplane)
	}
	if c := f.Cluster; c != nil {
		w.table("[cluster]")
		w.str("", "bind", c.Bind)
		w.str("", "raft_bind", c.RaftBind)
		w.list("", "peers", c.Peers)
		w.list("", "members", c.Members)
		w.num("", "bootstrap_expect", c.BootstrapExpect)
		w.str("", "encrypt_key", c.EncryptKey)
		w.str("", "tls_cert", c.TLS.Cert)
		w.str("", "tls_key", c.TLS.Key)
		w.str("", "tls_ca", c.TLS.CA)
		w.lines("", c.Extra)
	}
	if s := f.Sync; s != nil {
		w.table("[sync]")
		w.str("", "listen", s.Listen)
		w.str("", "peer", s.Peer)
		w.str("", "key", s.Key)
		w.str("", "instance", s.Instance)
	}
	for _, in := range f.VRRP {
		w.table("[[vrrp_instance]]")
		w.str("", "name", in.Name)
		w.str("", "interface", in.Interface)
		w.num("", "virtual_router_id", in.VRID)
		w.num("", "priority", in.Priority)
		w.str("", "advert_int", in.AdvertInt)
		w.list("", "virtual_ipaddress", in.VIPs)
		w.lines("", in.Extra)
	}
	for _, g := range f.SyncGroups {
		w.table("[[vrrp_sync_group]]")
		w.str("", "name", g.Name)
		w.list("", "group", g.Members)
	}
	for _, vs := range f.VirtualServers {
		w.table("[[virtual_server]]")
		w.str("", "name", vs.Name)
		w.str("", "address", vs.Address)
		w.str("", "protocol", vs.Protocol)
		w.str("", "scheduler", vs.Scheduler)
		w.lines("", vs.Extra)
		if c := vs.Check; c != nil {
			w.WriteString("  [virtual_server.health_check]\n")
			w.str("  ", "type", c.Type)
			w.str("  ", "interval", c.Interval)
			w.str("  ", "timeout", c.Timeout)
			w.lines("  ", c.Extra)
		}
		for _, r := range vs.Reals {
			w.WriteString("  [[virtual_server.real_server]]\n")
			w.str("  ", "address", r.Address)
			w.num("  ", "weight", r.Weight)
			w.lines("  ", r.Extra)
		}
	}
	return w.String()
}

// Write writes the file at path.
func (f File) Write(path string) error {
	return os.WriteFile(path, []byte(f.String()), 0o600)
}

// Table is n TCP wrr services on 192.0.2.100 (ports from 10000) with m
// real servers each (203.0.113.11 on, port 8080): the benchmarks' table.
func Table(n, m int) []VirtualServer {
	vss := make([]VirtualServer, n)
	for i := range vss {
		vs := VirtualServer{Name: fmt.Sprintf("s%d", i), Address: fmt.Sprintf("192.0.2.100:%d", 10000+i), Scheduler: "wrr"}
		for j := range m {
			vs.Reals = append(vs.Reals, Real{Address: fmt.Sprintf("203.0.113.%d:8080", 11+j)})
		}
		vss[i] = vs
	}
	return vss
}

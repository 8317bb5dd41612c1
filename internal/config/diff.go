package config

import (
	"encoding/json"
	"reflect"
	"slices"

	"github.com/directord/directord/internal/api"
)

// Changes says what a reload changes, by name, so that each subsystem can
// apply only its part and the daemon can report the rest. It is the API's
// type: reload answers carry it as it is.
type Changes = api.Changes

// Delta names the added, removed and changed entries of a named list.
type Delta = api.Delta

// Diff compares the running configuration with a newly loaded one.
func Diff(old, cur *Config) Changes {
	var c Changes
	c.VRRP = diffNamed(old.VRRP, cur.VRRP, func(v VRRPInstance) string { return v.Name })
	c.VirtualServers = diffNamed(old.VirtualServers, cur.VirtualServers, func(v VirtualServer) string { return v.Name })
	if old.Node.LogLevel != cur.Node.LogLevel {
		c.Live = append(c.Live, "node.log_level")
	}
	if old.BGP != nil && cur.BGP != nil && old.BGP.ShutdownDelay != cur.BGP.ShutdownDelay {
		c.Live = append(c.Live, "bgp.shutdown_delay")
	}
	if old.Cluster != nil && cur.Cluster != nil && (!reflect.DeepEqual(old.Cluster.EncryptKey, cur.Cluster.EncryptKey) ||
		!reflect.DeepEqual(old.Cluster.EncryptKeysOld, cur.Cluster.EncryptKeysOld)) {
		c.Live = append(c.Live, "cluster.encrypt_key") // rotated without a restart
	}
	for _, f := range []struct {
		key      string
		old, cur any
	}{
		{"node.name", old.Node.Name, cur.Node.Name},
		{"node.data_dir", old.Node.DataDir, cur.Node.DataDir},
		{"node.status_socket", old.Node.StatusSocket, cur.Node.StatusSocket},
		{"node.metrics_listen", old.Node.MetricsListen, cur.Node.MetricsListen},
		{"node.log_format", old.Node.LogFormat, cur.Node.LogFormat},
		{"node.script_user", old.Node.ScriptUser, cur.Node.ScriptUser},
		{"node.realtime_priority", old.Node.RealtimePriority, cur.Node.RealtimePriority},
		{"dataplane", old.Dataplane, cur.Dataplane},
		{"cluster", withoutKeys(old.Cluster), withoutKeys(cur.Cluster)},
		{"bgp", withoutDelay(old.BGP), withoutDelay(cur.BGP)},
	} {
		if !reflect.DeepEqual(f.old, f.cur) {
			c.Restart = append(c.Restart, f.key)
		}
	}
	return c
}

func diffNamed[T any](old, cur []T, name func(T) string) Delta {
	var d Delta
	before := map[string]T{}
	for _, o := range old {
		before[name(o)] = o
	}
	for _, n := range cur {
		o, ok := before[name(n)]
		switch {
		case !ok:
			d.Added = append(d.Added, name(n))
		case !reflect.DeepEqual(o, n):
			d.Changed = append(d.Changed, name(n))
		}
		delete(before, name(n))
	}
	for _, o := range old {
		if _, gone := before[name(o)]; gone {
			d.Removed = append(d.Removed, name(o))
		}
	}
	slices.Sort(d.Removed)
	return d
}

// withoutKeys is c without its gossip keys, which change live.
func withoutKeys(c *Cluster) *Cluster {
	if c == nil {
		return nil
	}
	k := *c
	k.EncryptKey, k.EncryptKeysOld = nil, nil
	return &k
}

// Documents are virtual servers as the cluster stores them: each one's
// JSON document by name.
func Documents(vss []VirtualServer) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for _, vs := range vss {
		b, _ := json.Marshal(vs)
		out[vs.Name] = b
	}
	return out
}

// withoutDelay is b without its shutdown delay, which changes live (the
// speaker's sessions and communities are set when it starts).
func withoutDelay(b *BGP) *BGP {
	if b == nil {
		return nil
	}
	c := *b
	c.ShutdownDelay = 0
	return &c
}

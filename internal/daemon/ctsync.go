package daemon

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"syscall"

	"github.com/directord/directord/internal/api"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/lvs"
	dsync "github.com/directord/directord/sync"
	"github.com/directord/directord/vrrp"
	"github.com/prometheus/client_golang/prometheus"
)

// ctSync runs the conntrack sync of the nftables data plane: this node
// sends its flows to the peer while the [sync] instance is MASTER and
// applies the peer's otherwise.
type ctSync struct {
	s        ConnSync
	instance string
}

func newCTSync(cfg *config.Config, dp lvs.Dataplane, log *slog.Logger, deps Deps, secure func(net.Conn, bool) (net.Conn, error)) (*ctSync, error) {
	if cfg.Sync == nil {
		return nil, nil
	}
	log = log.With("subsystem", "sync")
	if dp == nil || !dp.Capabilities().ConntrackSync {
		log.Warn("[sync] is for the nftables data plane; IPVS uses lvs_sync_daemon", "dataplane", planeName(dp))
		return nil, nil
	}
	vips := map[netip.Addr]bool{}
	for _, vs := range cfg.VirtualServers {
		if vs.FWMark == 0 {
			vips[vs.Address.Addr()] = true
		}
	}
	var list []netip.Addr
	for a := range vips {
		list = append(list, a)
	}
	// A synced entry carries no TCP window: without liberal tracking the
	// first packets after a takeover would be out of window.
	liberal := deps.Sysctls([]lvs.Sysctl{{Key: "net.netfilter.nf_conntrack_tcp_be_liberal", Want: "1",
		Why: "a synced entry carries no TCP window"}})
	if err := liberal[0].Err; err != "" {
		log.Warn("cannot set nf_conntrack_tcp_be_liberal; synced TCP flows may be dropped after a takeover", "err", err)
	}
	c := dsync.Config{Listen: cfg.Sync.Listen, Peer: cfg.Sync.Peer, Key: cfg.Sync.Key, VIPs: list, Logger: log,
		Services: syncServices(cfg.VirtualServers), Secure: secure}
	if nft, ok := dp.(*lvs.NFT); ok {
		keys := map[string]lvs.Key{}
		for _, vs := range lvsConfigs(cfg) {
			keys[vs.Key.String()] = vs.Key
		}
		c.Persist = persistStore{nft: nft, keys: keys}
	}
	s, err := deps.ConnSync(c)
	if err != nil {
		return nil, err
	}
	return &ctSync{s: s, instance: cfg.Sync.Instance}, nil
}

// syncServices are the services whose flows the backup takes: each
// address service with its real servers and sorry server.
func syncServices(vss []config.VirtualServer) []dsync.Service {
	protos := map[string]uint8{"tcp": syscall.IPPROTO_TCP, "udp": syscall.IPPROTO_UDP, "sctp": syscall.IPPROTO_SCTP}
	var out []dsync.Service
	for _, vs := range vss {
		if vs.FWMark != 0 {
			continue
		}
		sv := dsync.Service{Proto: protos[vs.Protocol], VIP: vs.Address}
		for _, rs := range vs.RealServers {
			sv.Reals = append(sv.Reals, rs.Address)
		}
		if vs.SorryServer != nil {
			sv.Reals = append(sv.Reals, *vs.SorryServer)
		}
		out = append(out, sv)
	}
	return out
}

// setServices follows the table in force (the file's or the cluster's).
func (c *ctSync) setServices(vss []config.VirtualServer) {
	if c != nil {
		c.s.SetServices(syncServices(vss))
	}
}

func (c *ctSync) transition(instance string, t vrrp.Transition) {
	if c != nil && instance == c.instance {
		c.s.SetMaster(t.To == vrrp.Master)
	}
}

func (c *ctSync) Run(ctx context.Context) error { return c.s.Run(ctx) }

func (c *ctSync) status() *api.SyncStatus {
	st := api.SyncStatus(c.s.Status())
	return &st
}

// ctSyncCollector exports the sync counters.
type ctSyncCollector struct {
	c                  *ctSync
	counter, connected *prometheus.Desc
	master, lag        *prometheus.Desc
	rejected           *prometheus.Desc
}

func newCTSyncCollector(c *ctSync) *ctSyncCollector {
	return &ctSyncCollector{c: c,
		counter:   prometheus.NewDesc("directord_sync_messages_total", "Conntrack sync messages, by what became of them.", []string{"what"}, nil),
		connected: prometheus.NewDesc("directord_sync_connected", "1 while this master is connected to its peer.", nil, nil),
		master:    prometheus.NewDesc("directord_sync_master", "1 while this node sends its flows (its instance is MASTER).", nil, nil),
		lag:       prometheus.NewDesc("directord_sync_lag_seconds", "Age of the last message applied, by the sender's clock.", nil, nil),
		rejected: prometheus.NewDesc("directord_sync_rejected_total", "Flows, messages and connections a backup refused, by reason.",
			[]string{"reason"}, nil),
	}
}

func (m *ctSyncCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.counter, m.connected, m.master, m.lag, m.rejected} {
		ch <- d
	}
}

func (m *ctSyncCollector) Collect(ch chan<- prometheus.Metric) {
	st := m.c.s.Status()
	for what, v := range map[string]uint64{"sent": st.Sent, "received": st.Received, "applied": st.Applied,
		"failed": st.Failed, "dropped": st.Dropped, "refused": st.Refused} {
		ch <- prometheus.MustNewConstMetric(m.counter, prometheus.CounterValue, float64(v), what)
	}
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(m.connected, prometheus.GaugeValue, b(st.Connected))
	ch <- prometheus.MustNewConstMetric(m.master, prometheus.GaugeValue, b(st.Role == "master"))
	ch <- prometheus.MustNewConstMetric(m.lag, prometheus.GaugeValue, st.LagMillis/1000)
	for _, reason := range []string{dsync.RejectNotService, dsync.RejectNotReal, dsync.RejectProtocol, dsync.RejectReplay,
		dsync.RejectAuth, dsync.RejectPeer, dsync.RejectBusy} {
		ch <- prometheus.MustNewConstMetric(m.rejected, prometheus.CounterValue, float64(st.Rejected[reason]), reason)
	}
}

// persistStore carries the nftables persistence entries over the sync.
type persistStore struct {
	nft  *lvs.NFT
	keys map[string]lvs.Key // service names on the wire
}

func (p persistStore) Entries() ([]dsync.PersistEntry, error) {
	es, err := p.nft.PersistEntries()
	if err != nil {
		return nil, err
	}
	out := make([]dsync.PersistEntry, len(es))
	for i, e := range es {
		out[i] = dsync.PersistEntry{Service: e.Service.String(), Real: e.Real, Client: e.Client, TTL: e.Expires}
	}
	return out, nil
}

func (p persistStore) Apply(es []dsync.PersistEntry) error {
	var in []lvs.PersistEntry
	for _, e := range es {
		if k, ok := p.keys[e.Service]; ok {
			in = append(in, lvs.PersistEntry{Service: k, Real: e.Real, Client: e.Client, Expires: e.TTL})
		}
	}
	return p.nft.AddPersist(in)
}

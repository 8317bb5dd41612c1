package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"os"

	"github.com/directord/directord/internal/config"
	dsync "github.com/directord/directord/sync"
	"github.com/directord/directord/vrrp"
)

// ctSync runs the conntrack sync of the nftables data plane: this node
// sends its flows to the peer while the [sync] instance is MASTER and
// applies the peer's otherwise.
type ctSync struct {
	s        *dsync.Syncer
	instance string
}

func newCTSync(cfg *config.Config, dataplane string, log *slog.Logger) (*ctSync, error) {
	if cfg.Sync == nil {
		return nil, nil
	}
	log = log.With("subsystem", "sync")
	if dataplane != "nftables" {
		log.Warn("[sync] is for the nftables data plane; IPVS uses lvs_sync_daemon", "dataplane", dataplane)
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
	const liberal = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"
	if err := os.WriteFile(liberal, []byte("1"), 0o644); err != nil {
		log.Warn("cannot set nf_conntrack_tcp_be_liberal; synced TCP flows may be dropped after a takeover", "err", err)
	}
	s, err := dsync.New(dsync.Config{Listen: cfg.Sync.Listen, Peer: cfg.Sync.Peer, Key: cfg.Sync.Key, VIPs: list, Logger: log})
	if err != nil {
		return nil, err
	}
	return &ctSync{s: s, instance: cfg.Sync.Instance}, nil
}

func (c *ctSync) transition(instance string, t vrrp.Transition) {
	if c != nil && instance == c.instance {
		c.s.SetMaster(t.To == vrrp.Master)
	}
}

func (c *ctSync) Run(ctx context.Context) error { return c.s.Run(ctx) }

func (c *ctSync) status() any { return c.s.Status() }

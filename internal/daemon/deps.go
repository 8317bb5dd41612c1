package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"time"

	"github.com/directord/directord/cluster"
	"github.com/directord/directord/internal/bgp"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/lvs"
	dsync "github.com/directord/directord/sync"
	"github.com/directord/directord/vrrp"
)

// Deps are what the daemon needs from the machine. KernelDeps gives the
// real ones; unit tests pass vrrptest's fake link and lvstest's data plane
// and run the whole daemon without root. (The kernel's IPVS sync daemons
// are driven only when the data plane is IPVS itself.)
type Deps struct {
	// VRRP opens sockets, holds addresses and announces them; the daemon
	// sets its Notify and Log.
	VRRP vrrp.Deps
	// Dataplane opens the load-balancer data plane of a kind ("auto",
	// "ipvs" or "nftables") and says why it chose it.
	Dataplane func(c config.Dataplane, log *slog.Logger) (dp lvs.Dataplane, reason string, err error)
	// Sysctls sets kernel settings and reports what each was and is.
	Sysctls func([]lvs.Sysctl) []lvs.Sysctl
	// ConnSync opens the conntrack sync of [sync].
	ConnSync func(dsync.Config) (ConnSync, error)
	// Cluster opens this node's cluster member ([cluster]).
	Cluster func(cluster.Config) (ClusterNode, error)
	// Privileges says what the process lacks to run, or nil.
	Privileges func() error
	// Realtime puts the process under SCHED_RR at a priority ([node]
	// realtime_priority); nil: left as it is.
	Realtime func(prio int) error
	// BGP makes the speaker of [bgp].
	BGP func(log *slog.Logger, c bgp.Config) Announcer
	// Loopback puts an address announced with BGP on lo (add), or takes
	// it off; it reports whether it was there before.
	Loopback func(p netip.Prefix, add bool) (was bool, err error)
}

// Announcer is the BGP speaker as the daemon drives it.
type Announcer interface {
	Start(ctx context.Context) error
	Stop() error
	Announce(ctx context.Context, p netip.Prefix) error
	Withdraw(ctx context.Context, p netip.Prefix) error
	GracefulShutdown(ctx context.Context) error
	Peers(ctx context.Context) ([]bgp.Peer, error)
}

var _ Announcer = (*bgp.Speaker)(nil)

// ConnSync is the conntrack sync as the daemon drives it.
type ConnSync interface {
	Run(ctx context.Context) error
	SetMaster(bool)
	// SetServices says which flows the backup may write.
	SetServices([]dsync.Service)
	Status() dsync.Status
}

var _ ConnSync = (*dsync.Syncer)(nil)

// ClusterNode is this node's cluster member as the daemon drives it.
type ClusterNode interface {
	Run(ctx context.Context) error
	// State is the replicated table as last committed here.
	State() cluster.State
	Status() cluster.Status
	AppliedIndex() uint64
	Submit(c cluster.Command, timeout time.Duration) error
	Leave(timeout time.Duration) error
	Rejoin(timeout time.Duration) error
	// Left: this node left and has not rejoined.
	Left() bool
	// SetGossipKeys rotates the gossip key without a restart.
	SetGossipKeys(primary []byte, old [][]byte) error
	// Ping asks a member for a direct gossip answer.
	Ping(name string) (time.Duration, error)
	// SetAppMeta sets what this node gossips about itself.
	SetAppMeta(b json.RawMessage) error
}

var _ ClusterNode = (*cluster.Node)(nil)

// KernelDeps are the real kernel's.
func KernelDeps() Deps {
	return Deps{
		VRRP:      vrrp.KernelDeps(nil), // the daemon sets the log
		Dataplane: openDataplane,
		Sysctls:   lvs.ApplySysctls,
		ConnSync: func(c dsync.Config) (ConnSync, error) {
			s, err := dsync.New(c)
			if err != nil {
				return nil, err
			}
			return s, nil
		},
		Cluster: func(c cluster.Config) (ClusterNode, error) {
			n, err := cluster.New(c)
			if err != nil {
				return nil, err
			}
			return n, nil
		},
		Privileges: checkPrivileges,
		Realtime:   vrrp.SetProcessRealtime,
		BGP:        func(log *slog.Logger, c bgp.Config) Announcer { return bgp.New(log, c) },
		Loopback:   loopbackAddr,
	}
}

// openDataplane opens the kernel's data plane of kind.
func openDataplane(c config.Dataplane, log *slog.Logger) (lvs.Dataplane, string, error) {
	name, reason, err := chooseDataplane(c.Kind)
	if err != nil {
		return nil, "", err
	}
	if name == "ipvs" {
		dp, err := lvs.NewIPVS()
		return dp, reason, err
	}
	dp, err := lvs.NewNFT(lvs.NFTOptions{DRInterface: c.DRInterface, Log: log})
	return dp, reason, err
}

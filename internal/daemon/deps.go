package daemon

import (
	"context"

	"github.com/directord/directord/cluster"
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
	Dataplane func(kind string) (dp lvs.Dataplane, reason string, err error)
	// Sysctls sets kernel settings and reports what each was and is.
	Sysctls func([]lvs.Sysctl) []lvs.Sysctl
	// ConnSync opens the conntrack sync of [sync].
	ConnSync func(dsync.Config) (ConnSync, error)
	// Cluster opens this node's cluster member ([cluster]).
	Cluster func(cluster.Config) (*cluster.Node, error)
	// Privileges says what the process lacks to run, or nil.
	Privileges func() error
}

// ConnSync is the conntrack sync as the daemon drives it.
type ConnSync interface {
	Run(ctx context.Context) error
	SetMaster(bool)
	Status() dsync.Status
}

var _ ConnSync = (*dsync.Syncer)(nil)

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
		Cluster:    cluster.New,
		Privileges: checkPrivileges,
	}
}

// openDataplane opens the kernel's data plane of kind.
func openDataplane(kind string) (lvs.Dataplane, string, error) {
	name, reason, err := chooseDataplane(kind)
	if err != nil {
		return nil, "", err
	}
	if name == "ipvs" {
		dp, err := lvs.NewIPVS()
		return dp, reason, err
	}
	dp, err := lvs.NewNFT(lvs.NFTOptions{})
	return dp, reason, err
}

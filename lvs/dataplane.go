package lvs

import (
	"fmt"
	"net/netip"
	"time"
)

// Dataplane is the kernel side: IPVS, nftables, or lvstest.Fake.
type Dataplane interface {
	// Name is "ipvs", "nftables" or "fake".
	Name() string
	// List returns every virtual service the data plane holds, with
	// counters. For IPVS that includes services directord did not make.
	List() ([]Entry, error)
	// Apply carries out ops in order. IPVS stops at the first failure;
	// nftables applies all of them in one transaction or none.
	Apply(ops []Op) error
	// Capabilities is what the data plane can carry out.
	Capabilities() Capabilities
	Close() error
}

// OpKind is the kind of one kernel operation.
type OpKind uint8

const (
	AddService OpKind = iota + 1
	UpdateService
	DelService
	AddReal
	UpdateReal
	DelReal
)

var opNames = [...]string{"", "add-service", "update-service", "del-service", "add-real", "update-real", "del-real"}

func (k OpKind) String() string {
	if int(k) < len(opNames) {
		return opNames[k]
	}
	return fmt.Sprintf("op(%d)", k)
}

// Op is one kernel operation. Real is set for the real-server kinds.
type Op struct {
	Kind    OpKind
	Service Service
	Real    Real
}

func (o Op) String() string {
	switch o.Kind {
	case AddReal, UpdateReal, DelReal:
		return fmt.Sprintf("%s %s -> %s weight %d %s", o.Kind, o.Service.Key, o.Real.Addr, o.Real.Weight, o.Real.Method)
	default:
		return fmt.Sprintf("%s %s %s", o.Kind, o.Service.Key, o.Service.Scheduler)
	}
}

// ConnCounter is implemented by data planes whose List cannot report
// connection counts (nftables): the reconciler asks it for the real
// servers it drains.
type ConnCounter interface {
	Conns(svc Key, addr netip.AddrPort) (active, inactive int, err error)
}

// StatsLister is implemented by data planes whose List leaves counters
// out; ListWithStats uses it.
type StatsLister interface {
	ListStats() ([]Entry, error)
}

// ListWithStats lists dp's services with their counters.
func ListWithStats(dp Dataplane) ([]Entry, error) {
	if sl, ok := dp.(StatsLister); ok {
		return sl.ListStats()
	}
	return dp.List()
}

// Zeroer is a data plane whose counters can be set to zero (ipvsadm -Z).
type Zeroer interface {
	Zero() error
}

var (
	_ Zeroer = (*IPVS)(nil)
	_ Zeroer = (*NFT)(nil)
)

// PersistenceKeeper is a data plane whose persistence entries age from a
// client's last new connection (nftables), not from its last connection
// as IPVS's templates do: Run asks it at every reconcile to renew those
// that would expire before the next while the client still has a
// connection to that server.
type PersistenceKeeper interface {
	KeepPersistence(soon time.Duration) (renewed int, err error)
}

var _ PersistenceKeeper = (*NFT)(nil)

// Repair is drift a data plane found and undid: the kernel's table had
// been changed outside directord.
type Repair struct {
	Kind  string // "table" (nftables), "service", "real_server"
	Found string // what was found
}

// Repairer is a Dataplane that finds drift the reconciler cannot see in
// List (nftables reads its own table back); the reconciler reports it.
type Repairer interface {
	TakeRepairs() []Repair
}

var _ Repairer = (*NFT)(nil)

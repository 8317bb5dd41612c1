package daemon

import (
	"log/slog"
	"sync"

	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/lvs"
	"github.com/directord/directord/vrrp"
)

// syncDaemons runs the kernel's IPVS sync daemons as keepalived's
// lvs_sync_daemon does: the backup daemon always, the master daemon while
// the named VRRP instance is MASTER. Reloads do not restart them.
type syncDaemons struct {
	log *slog.Logger
	cfg *config.SyncDaemon // nil: none

	mu     sync.Mutex
	master bool
}

func newSyncDaemons(log *slog.Logger, cfg *config.Config, dp lvs.Dataplane) *syncDaemons {
	s := &syncDaemons{log: log.With("subsystem", "lvs-sync")}
	if cfg.Dataplane.LVSSyncDaemon == nil {
		return s
	}
	if dp == nil || !dp.Capabilities().SyncDaemon {
		s.log.Warn("lvs_sync_daemon needs the IPVS data plane; not started", "dataplane", planeName(dp))
		return s
	}
	s.cfg = cfg.Dataplane.LVSSyncDaemon
	if err := lvs.StartSyncDaemon(s.daemon(lvs.SyncBackup)); err != nil {
		s.log.Error("IPVS sync daemon not started", "state", "backup", "err", err)
	} else {
		s.log.Info("IPVS sync daemon started", "state", "backup", "interface", s.cfg.Interface, "sync_id", s.cfg.SyncID)
	}
	return s
}

func (s *syncDaemons) daemon(state lvs.SyncState) lvs.SyncDaemon {
	return lvs.SyncDaemon{State: state, Interface: s.cfg.Interface, SyncID: s.cfg.SyncID,
		MaxLen: s.cfg.MaxLen, Group: s.cfg.Group, Port: s.cfg.Port, TTL: s.cfg.TTL}
}

// transition follows the VRRP instance: it is called in order, from the
// VRRP actor, and only talks to the kernel.
func (s *syncDaemons) transition(instance string, t vrrp.Transition) {
	if s.cfg == nil || instance != s.cfg.Instance {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case t.To == vrrp.Master && !s.master:
		if err := lvs.StartSyncDaemon(s.daemon(lvs.SyncMaster)); err != nil {
			s.log.Error("IPVS sync daemon not started", "state", "master", "err", err)
			return
		}
		s.master = true
		s.log.Info("IPVS sync daemon started", "state", "master", "instance", instance)
	case t.To != vrrp.Master && s.master:
		if err := lvs.StopSyncDaemon(lvs.SyncMaster); err != nil {
			s.log.Error("IPVS sync daemon not stopped", "state", "master", "err", err)
		}
		s.master = false
		s.log.Info("IPVS sync daemon stopped", "state", "master", "instance", instance)
	}
}

// stop ends both daemons at exit.
func (s *syncDaemons) stop() {
	if s.cfg == nil {
		return
	}
	lvs.StopSyncDaemon(lvs.SyncMaster)
	lvs.StopSyncDaemon(lvs.SyncBackup)
}

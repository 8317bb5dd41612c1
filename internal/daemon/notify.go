package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/directord/directord/healthcheck"
	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/vrrp"
)

// notifier runs the notify programs of VRRP transitions: for each instance
// in the order of its transitions, one at a time, without a shell, each
// bounded by its timeout. Transitions are queued, so a slow program never
// holds up the state machine; a full queue drops (and logs) the notice.
type notifier struct {
	log      *slog.Logger
	lookup   func(instance string) (config.Notify, bool)
	programs *healthcheck.Programs

	mu     sync.Mutex
	closed bool
	queues map[string]chan notice
	wg     sync.WaitGroup
}

type notice struct {
	instance string
	t        vrrp.Transition
	cfg      config.Notify
	// rxLower: a master heard a lower priority (t.Priority) from from.
	rxLower bool
	from    netip.Addr
}

const notifyQueue = 32

func newNotifier(log *slog.Logger, lookup func(string) (config.Notify, bool), programs *healthcheck.Programs) *notifier {
	return &notifier{log: log, lookup: lookup, programs: programs, queues: map[string]chan notice{}}
}

// Notify queues a transition; it is vrrp.Deps.Notify and returns at once.
func (n *notifier) Notify(instance string, t vrrp.Transition) {
	cfg, ok := n.lookup(instance)
	if !ok || cfg.Master == nil && cfg.Backup == nil && cfg.Fault == nil && cfg.Stop == nil && cfg.Any == nil {
		return
	}
	n.queue(notice{instance: instance, t: t, cfg: cfg})
}

// LowerPriority queues notify_master_rx_lower_pri; it is
// vrrp.Deps.LowerPriority and returns at once.
func (n *notifier) LowerPriority(instance string, from netip.Addr, prio uint8) {
	cfg, ok := n.lookup(instance)
	if !ok || cfg.MasterRxLowerPri == nil {
		return
	}
	n.queue(notice{instance: instance, cfg: cfg, rxLower: true, from: from, t: vrrp.Transition{To: vrrp.Master, Priority: prio}})
}

func (n *notifier) queue(nt notice) {
	instance := nt.instance
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	q, ok := n.queues[instance]
	if !ok {
		q = make(chan notice, notifyQueue)
		n.queues[instance] = q
		n.wg.Go(func() { n.work(q) })
	}
	select {
	case q <- nt:
	default:
		n.log.Error("notify queue full: notice dropped", "instance", instance, "state", nt.t.To)
	}
}

// Close runs what is queued (notify_stop of the shutdown among it) and
// stops the workers.
func (n *notifier) Close() {
	n.mu.Lock()
	if !n.closed {
		n.closed = true
		for _, q := range n.queues {
			close(q)
		}
	}
	n.mu.Unlock()
	n.wg.Wait()
}

// stateName is keepalived's name for a state in notify arguments.
func stateName(s vrrp.State) string {
	if s == vrrp.Init {
		return "STOP"
	}
	return s.String()
}

func (n *notifier) work(q chan notice) {
	for nt := range q {
		if nt.rxLower {
			// keepalived's arguments: TYPE NAME STATE PRIORITY, the
			// priority being the one heard; then its source.
			n.run(nt, append(slices.Clone(nt.cfg.MasterRxLowerPri), "INSTANCE", nt.instance, "MASTER_RX_LOWER_PRI",
				strconv.Itoa(int(nt.t.Priority)), nt.from.String()))
			continue
		}
		var specific []string
		switch nt.t.To {
		case vrrp.Master:
			specific = nt.cfg.Master
		case vrrp.Backup:
			specific = nt.cfg.Backup
		case vrrp.Fault:
			specific = nt.cfg.Fault
		case vrrp.Init:
			specific = nt.cfg.Stop
		}
		if specific != nil {
			n.run(nt, specific)
		}
		if nt.cfg.Any != nil {
			// keepalived's generic notify: TYPE NAME STATE PRIORITY.
			args := append(append([]string{}, nt.cfg.Any...), "INSTANCE", nt.instance, stateName(nt.t.To), strconv.Itoa(int(nt.t.Priority)))
			n.run(nt, args)
		}
	}
}

func (n *notifier) run(nt notice, args []string) {
	start := time.Now()
	out, err, timedOut := runProgram(n.programs, args, nt.cfg.Timeout)
	log := n.log.With("instance", nt.instance, "state", stateName(nt.t.To), "program", args[0], "took", time.Since(start).Round(time.Millisecond))
	switch {
	case timedOut:
		log.Error("notify program timed out and was killed", "timeout", nt.cfg.Timeout)
	case err != nil:
		log.Error("notify program failed", "err", err, "output", clip(out))
	default:
		log.Info("notify program ran", "output", clip(out))
	}
}

func clip(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 512 {
		return fmt.Sprintf("%s... (%d bytes)", s[:512], len(s))
	}
	return s
}

package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// systemd speaks sd_notify to the service manager: READY=1 once the
// daemon answers and has programmed its table, RELOADING=1 and READY=1
// around each reload, STOPPING=1, and WATCHDOG=1 while the VRRP loops
// answer. Without NOTIFY_SOCKET it says nothing.
type systemd struct {
	addr     string        // NOTIFY_SOCKET ("@" for the abstract namespace)
	watchdog time.Duration // WATCHDOG_USEC for this process; 0: none
}

func newSystemd(getenv func(string) string) *systemd {
	s := &systemd{addr: getenv("NOTIFY_SOCKET")}
	if us, err := strconv.ParseInt(getenv("WATCHDOG_USEC"), 10, 64); err == nil && us > 0 {
		pid := getenv("WATCHDOG_PID")
		if pid == "" || pid == strconv.Itoa(os.Getpid()) {
			s.watchdog = time.Duration(us) * time.Microsecond
		}
	}
	return s
}

// notify sends one state message; errors are the caller's to log.
func (s *systemd) notify(lines ...string) error {
	if s == nil || s.addr == "" {
		return nil
	}
	addr := s.addr
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(lines, "\n"))); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// reloading is RELOADING=1 with the CLOCK_MONOTONIC time systemd asks for.
func (s *systemd) reloading() error {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return err
	}
	return s.notify("RELOADING=1", fmt.Sprintf("MONOTONIC_USEC=%d", ts.Nano()/1000))
}

// watch sends WATCHDOG=1 every half watchdog interval for as long as
// alive answers within that half; a stalled VRRP loop stops the pings,
// and systemd restarts the daemon.
func (s *systemd) watch(ctx context.Context, alive func(context.Context) error, log func(error)) error {
	if s == nil || s.watchdog <= 0 {
		return nil
	}
	half := s.watchdog / 2
	t := time.NewTicker(half)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, half)
		err := alive(pctx)
		cancel()
		if err != nil {
			log(err)
			continue
		}
		if err := s.notify("WATCHDOG=1"); err != nil {
			log(err)
		}
	}
}

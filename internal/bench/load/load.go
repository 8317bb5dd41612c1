// Package load is the benchmarks' connection generator: a process of its
// own in the client's namespace (the bench runs its own binary there with
// -load), opening connections at a set rate and counting those answered.
package load

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	stdsync "sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/directord/directord/internal/testbed/lab"
)

// Start runs the generator in h (the bench's own binary, which must call
// Generate when given -load ADDR -src A,B -rate N -duration D) and returns
// a function that waits for it and returns the rate answered.
func Start(h *lab.Host, addr string, srcs []string, rate int, d time.Duration) (wait func() (float64, error), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	gen := h.Command(self, "-load", addr, "-src", strings.Join(srcs, ","), "-rate", strconv.Itoa(rate), "-duration", d.String())
	var out strings.Builder
	gen.Stdout, gen.Stderr = &out, &out
	if err := gen.Start(); err != nil {
		return nil, err
	}
	return func() (float64, error) {
		if err := gen.Wait(); err != nil {
			return 0, fmt.Errorf("load generator: %v: %s", err, out.String())
		}
		var achieved float64
		if _, err := fmt.Sscanf(strings.TrimSpace(out.String()), "%f", &achieved); err != nil {
			return 0, fmt.Errorf("load generator said %q", out.String())
		}
		return achieved, nil
	}, nil
}

// Flags are the generator's own flags, -load and -src, which Start passes
// to the bench's binary (-rate and -duration are the bench's own).
type Flags struct{ addr, srcs *string }

// RegisterFlags registers -load and -src; call it before flag.Parse.
func RegisterFlags() Flags {
	return Flags{
		addr: flag.String("load", "", "internal: open -rate connections a second to this address for -duration and print how many were answered"),
		srcs: flag.String("src", "", "internal: the load's source addresses, comma-separated"),
	}
}

// Run generates the load and prints the rate answered when the process
// is a generator Start began; it reports whether it was.
func (f Flags) Run(rate int, d time.Duration) bool {
	if *f.addr == "" {
		return false
	}
	fmt.Println(Generate(*f.addr, strings.Split(*f.srcs, ","), rate, d))
	return true
}

// Generate opens rate connections a second to addr for d, each reading
// the server's greeting, from the source addresses in turn, and returns
// the rate answered.
func Generate(addr string, srcs []string, rate int, d time.Duration) float64 {
	tokens := make(chan struct{}, rate)
	var done atomic.Int64
	var wg stdsync.WaitGroup
	start := time.Now()
	for i := range 256 {
		// The port is chosen at connect, for the whole 4-tuple, not at
		// bind for the address alone.
		dialer := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(srcs[i%len(srcs)])},
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
				})
				return errors.Join(err, serr)
			}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64)
			for range tokens {
				if time.Since(start) > d {
					// Asked more than the lab carries: the backlog is
					// not part of the run.
					continue
				}
				c, err := dialer.Dial("tcp4", addr)
				if err != nil {
					continue
				}
				c.SetDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Read(buf); err == nil {
					done.Add(1)
				}
				c.Close()
			}
		}()
	}
	Paced(rate, d, func(from, to int) bool {
		for range to - from {
			select {
			case tokens <- struct{}{}:
			default:
			}
		}
		return true
	})
	close(tokens)
	wg.Wait()
	return float64(done.Load()) / time.Since(start).Seconds()
}

// Paced calls each every millisecond for d with the numbers of the items
// due since the previous call, rate a second, until it returns false. The
// count follows the clock, not the ticks: a busy machine drops ticks,
// which would lower the rate asked.
func Paced(rate int, d time.Duration, each func(from, to int) bool) {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	begin, issued := time.Now(), 0
	for time.Since(begin) < d {
		<-t.C
		due := int(time.Since(begin).Seconds() * float64(rate))
		if due > issued && !each(issued, due) {
			return
		}
		issued = max(issued, due)
	}
}

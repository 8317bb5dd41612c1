package scene

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
)

// Chat is a set of long-lived client connections through the VIP, each
// exchanging a message with its real server every interval, as a failover
// would find them. The first error of each connection is kept.
type Chat struct {
	Conns  []*Conn
	errs   []error
	counts []atomic.Int64
	mu     sync.Mutex
	stop   chan struct{}
	wg     sync.WaitGroup
}

// Chat opens n connections to addr and checks that each answers once.
func (s *Sync) Chat(n int, addr string) (*Chat, error) {
	c := &Chat{stop: make(chan struct{})}
	if err := lab.Eventually(10*time.Second, func() error {
		for len(c.Conns) < n {
			x, err := s.Open("", addr)
			if err != nil {
				return err
			}
			c.Conns = append(c.Conns, x)
		}
		return nil
	}); err != nil {
		c.Close()
		return nil, err
	}
	for _, x := range c.Conns {
		if ans, err := x.Echo("before"); err != nil || ans != x.Server+" before" {
			c.Close()
			return nil, fmt.Errorf("connection to %s before the failover: %q, %v", x.Server, ans, err)
		}
	}
	c.errs, c.counts = make([]error, n), make([]atomic.Int64, n)
	return c, nil
}

// Start sends a message on every connection every interval until Stop.
func (c *Chat) Start(interval time.Duration) {
	for i, x := range c.Conns {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			t := time.NewTicker(interval)
			defer t.Stop()
			for n := 0; ; n++ {
				select {
				case <-c.stop:
					return
				case <-t.C:
				}
				msg := fmt.Sprintf("m%d", n)
				if ans, err := x.Echo(msg); err != nil || ans != x.Server+" "+msg {
					c.mu.Lock()
					c.errs[i] = fmt.Errorf("message %d: %q, %v", n, ans, err)
					c.mu.Unlock()
					return
				}
				c.counts[i].Add(1)
			}
		}()
	}
}

// Counts is the number of messages each connection has exchanged.
func (c *Chat) Counts() []int64 {
	out := make([]int64, len(c.counts))
	for i := range c.counts {
		out[i] = c.counts[i].Load()
	}
	return out
}

// WaitMore waits until every connection still going has exchanged n
// more messages than in base (Counts), or fails after timeout.
func (c *Chat) WaitMore(base []int64, n int64, timeout time.Duration) error {
	return lab.Eventually(timeout, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i := range c.counts {
			if c.errs[i] == nil && c.counts[i].Load() < base[i]+n {
				return fmt.Errorf("connection %d has exchanged %d messages of %d", i, c.counts[i].Load()-base[i], n)
			}
		}
		return nil
	})
}

// Stop ends the exchanges and returns how many connections never failed,
// with up to five of the failures.
func (c *Chat) Stop() (survived int, failures []string) {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, err := range c.errs {
		if err == nil {
			survived++
		} else if len(failures) < 5 {
			failures = append(failures, fmt.Sprintf("conn %d to %s: %v", i, c.Conns[i].Server, err))
		}
	}
	return survived, failures
}

// Close stops the exchanges and closes the connections.
func (c *Chat) Close() error {
	if c.stop != nil && c.errs != nil {
		c.Stop()
	}
	var errs []error
	for _, x := range c.Conns {
		errs = append(errs, x.Close())
	}
	return errors.Join(errs...)
}

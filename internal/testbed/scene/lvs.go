package scene

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/directord/directord/internal/testbed/lab"
	"github.com/directord/directord/lvs/lvstest/echo"
)

const (
	TCPPort  = 8080
	UDPPort  = 5353
	HTTPPort = 8000
	ClientIP = "192.0.2.50"
)

// LVS is the lab.
type LVS struct {
	Lab              *lab.Lab
	Front, Back      *lab.Switch
	Client, Director *lab.Host
	Reals            []*lab.Host
	mu               sync.Mutex
	listeners        map[*lab.Host][]func()
	resets           atomic.Int64
	udpPorts         atomic.Int32 // AskUDP's source ports
}

// Resets counts the connections the real servers saw end in an error.
func (s *LVS) Resets() int64 { return s.resets.Load() }

// Clients is the number of addresses the client has: ClientAddr(0..Clients-1).
const Clients = 8

// ClientAddr is the client's i-th address (192.0.2.50 + i).
func ClientAddr(i int) string { return fmt.Sprintf("192.0.2.%d", 50+i) }

// RealAddr is the i-th real server's address (from 0).
func RealAddr(i int) string { return fmt.Sprintf("203.0.113.%d", 11+i) }

// NewLVS builds the scene with n real servers, named rs1..rsn, all serving.
func NewLVS(l *lab.Lab, n int) *LVS {
	s := &LVS{Lab: l, Front: l.AddSwitch("front"), Back: l.AddSwitch("back"), listeners: map[*lab.Host][]func(){}}
	s.Client, s.Director = l.AddHost("client"), l.AddHost("dir")
	s.Front.Plug(s.Client, "eth0", ClientIP+"/24")
	for i := 1; i < Clients; i++ {
		s.Client.AddAddr("eth0", ClientAddr(i)+"/24")
	}
	s.Front.Plug(s.Director, "eth0", "192.0.2.11/24", VIP+"/32")
	s.Back.Plug(s.Director, "eth1", "203.0.113.1/24")
	s.Sysctl(s.Director, "net/ipv4/ip_forward", "1")
	for i := range n {
		h := l.AddHost(fmt.Sprintf("rs%d", i+1))
		s.Back.Plug(h, "eth0", RealAddr(i)+"/24")
		h.AddRoute("default", "via", "203.0.113.1")
		s.Reals = append(s.Reals, h)
		s.Serve(h)
	}
	l.OnClose(s.stopAll)
	return s
}

// The scene's IPv6 addresses, once AddIPv6 has run.
const (
	VIP6      = "2001:db8::100"
	ClientIP6 = "2001:db8::50"
)

// RealAddr6 is the i-th real server's IPv6 address (from 0).
func RealAddr6(i int) string { return fmt.Sprintf("2001:db8:1::%x", 0x11+i) }

// AddIPv6 gives the scene IPv6 beside IPv4: the client ClientIP6, the
// director VIP6 and a forwarding leg on each side, the real servers
// RealAddr6 routed through the director (their servers already listen on
// both families).
func (s *LVS) AddIPv6() {
	s.Client.AddAddr("eth0", ClientIP6+"/64")
	s.Director.AddAddr("eth0", "2001:db8::11/64")
	s.Director.AddAddr("eth0", VIP6+"/128")
	s.Director.AddAddr("eth1", "2001:db8:1::1/64")
	s.Sysctl(s.Director, "net/ipv6/conf/all/forwarding", "1")
	for i, h := range s.Reals {
		h.AddAddr("eth0", RealAddr6(i)+"/64")
		h.IP("-6", "route", "add", "default", "via", "2001:db8:1::1")
	}
}

// Sysctl writes /proc/sys/<key> inside h.
func (s *LVS) Sysctl(h *lab.Host, key, value string) {
	if err := h.Sysctl(key, value); err != nil {
		s.Lab.Fatalf("%s: sysctl %s: %v", h.Name, key, err)
	}
}

// Serve starts h's TCP and UDP servers: TCP writes the name, then echoes
// lines; UDP answers every datagram with the name.
func (s *LVS) Serve(h *lab.Host) {
	var ln net.Listener
	var pc net.PacketConn
	if err := h.Do(func() (err error) {
		// Both families: a test may give the servers IPv6 addresses.
		if ln, err = net.Listen("tcp", fmt.Sprintf(":%d", TCPPort)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", fmt.Sprintf(":%d", UDPPort))
		return err
	}); err != nil {
		s.Lab.Fatalf("%s: serve: %v", h.Name, err)
	}
	var conns sync.Map
	go echo.Serve(ln, h.Name, func(c net.Conn) { conns.Store(c, true) }, func(c net.Conn, err error) {
		conns.Delete(c)
		if err != nil {
			s.resets.Add(1) // the connection ended in an error (a reset)
		}
	})
	go echo.ServeUDP(pc, h.Name)
	s.mu.Lock()
	if s.listeners == nil {
		s.listeners = map[*lab.Host][]func(){}
	}
	s.listeners[h] = append(s.listeners[h], func() {
		ln.Close()
		pc.Close()
		conns.Range(func(c, _ any) bool { c.(net.Conn).Close(); return true })
	})
	s.mu.Unlock()
}

// ServeHTTP starts a small HTTP server on h's port HTTPPort: every path
// answers "hello from NAME".
func (s *LVS) ServeHTTP(h *lab.Host) {
	var ln net.Listener
	if err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", HTTPPort))
		return err
	}); err != nil {
		s.Lab.Fatalf("%s: serve http: %v", h.Name, err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", h.Name)
	})}
	go srv.Serve(ln)
	s.mu.Lock()
	if s.listeners == nil {
		s.listeners = map[*lab.Host][]func(){}
	}
	s.listeners[h] = append(s.listeners[h], func() { srv.Close() })
	s.mu.Unlock()
}

// HTTPClient makes its connections from the client's namespace, a new one
// for every request so that each is scheduled afresh.
func (s *LVS) HTTPClient(timeout time.Duration) *http.Client {
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = s.Client.Do(func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// Stop closes h's servers and their connections.
func (s *LVS) Stop(h *lab.Host) {
	s.mu.Lock()
	fns := s.listeners[h]
	delete(s.listeners, h)
	s.mu.Unlock()
	for _, f := range fns {
		f()
	}
}

func (s *LVS) stopAll() {
	s.mu.Lock()
	hosts := make([]*lab.Host, 0, len(s.listeners))
	for h := range s.listeners {
		hosts = append(hosts, h)
	}
	s.mu.Unlock()
	for _, h := range hosts {
		s.Stop(h)
	}
}

// Conn is a client connection through the VIP.
type Conn = echo.Conn

// Open connects from the client (from src, "" for the default address)
// to addr and reads the server's name.
func (s *LVS) Open(src, addr string) (*Conn, error) {
	var c net.Conn
	err := s.Client.Do(func() (err error) {
		d := net.Dialer{Timeout: 3 * time.Second}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		c, err = d.Dial("tcp", addr) // IPv4, or IPv6 in brackets
		return err
	})
	if err != nil {
		return nil, err
	}
	return echo.Greeted(c)
}

// Ask opens a TCP connection, returns the server's name and closes it.
func (s *LVS) Ask(src, addr string) (string, error) {
	c, err := s.Open(src, addr)
	if err != nil {
		return "", err
	}
	c.Close()
	return c.Server, nil
}

// AskUDP sends one datagram from a fresh socket and returns the answer.
func (s *LVS) AskUDP(addr string) (string, error) {
	// A source port of its own for each question: a port the kernel
	// happened to hand out twice would reuse the first flow's conntrack
	// entry, and so its real server (a 1-in-70 chance over 30 questions).
	port := 20000 + int(s.udpPorts.Add(1)%20000)
	var c net.Conn
	if err := s.Client.Do(func() (err error) {
		d := net.Dialer{LocalAddr: &net.UDPAddr{Port: port}}
		c, err = d.Dial("udp4", addr)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	return echo.AskUDP(c)
}

// NetNS opens h's namespace file, for data planes working from outside.
func NetNS(h *lab.Host) (*os.File, error) {
	return os.Open("/run/netns/" + h.NS)
}

// Talker has connections exchange a line every period, each waiting up
// to a minute for its answer (TCP retransmits through a repair), and
// keeps each one's longest silence and whether it broke.
type Talker struct {
	mu     sync.Mutex
	last   []time.Time
	gaps   []time.Duration
	broken int
	done   chan struct{}
	wg     sync.WaitGroup
}

// Talk starts the exchanges on conns.
func Talk(conns []*Conn, period time.Duration) *Talker {
	t := &Talker{last: make([]time.Time, len(conns)), gaps: make([]time.Duration, len(conns)), done: make(chan struct{})}
	for i, c := range conns {
		t.last[i] = time.Now()
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			for n := 0; ; n++ {
				select {
				case <-t.done:
					return
				case <-time.After(period):
				}
				line := fmt.Sprintf("talk %d", n)
				ans, err := c.EchoWithin(line, time.Minute)
				t.mu.Lock()
				if err != nil || ans != c.Server+" "+line {
					t.broken++
					t.gaps[i] = time.Hour
					t.mu.Unlock()
					return
				}
				now := time.Now()
				t.gaps[i] = max(t.gaps[i], now.Sub(t.last[i]))
				t.last[i] = now
				t.mu.Unlock()
			}
		}()
	}
	return t
}

// Waiting is how many connections have had no answer for longer than d.
func (t *Talker) Waiting(d time.Duration) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, l := range t.last {
		if time.Since(l) > d {
			n++
		}
	}
	return n
}

// Longest is the longest silence any connection saw so far, and how many
// broke (a wrong answer or an error: a reset, another server).
func (t *Talker) Longest() (time.Duration, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var worst time.Duration
	for _, g := range t.gaps {
		worst = max(worst, g)
	}
	return worst, t.broken
}

// Stop ends the exchanges and returns what Longest returns.
func (t *Talker) Stop() (time.Duration, int) {
	close(t.done)
	t.wg.Wait()
	return t.Longest()
}

// Answering counts the connections that still exchange a line with the
// server they started with, each within d: all at once.
func Answering(conns []*Conn, line string, d time.Duration) int {
	var ok atomic.Int64
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ans, err := c.EchoWithin(line, d); err == nil && ans == c.Server+" "+line {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(ok.Load())
}

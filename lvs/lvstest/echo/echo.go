// Package echo is the protocol of the real servers in the load-balancer
// tests, in namespaces on the host and in the IPVS guest: a TCP server
// greets each connection with its name, then answers each line with its
// name and the line; a UDP server answers each datagram with its name. It
// imports nothing of directord, so that lvs's own tests can use it.
package echo

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"time"
)

// Serve answers the connections ln accepts, as name, until ln is closed.
// opened (if not nil) is told of each connection, and closed of its end:
// the error it ended with, nil when the client closed it.
func Serve(ln net.Listener, name string, opened func(net.Conn), closed func(net.Conn, error)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if opened != nil {
			opened(c)
		}
		go func() {
			defer c.Close()
			fmt.Fprintf(c, "%s\n", name)
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				fmt.Fprintf(c, "%s %s\n", name, sc.Text())
			}
			if closed != nil {
				closed(c, sc.Err())
			}
		}()
	}
}

// ServeUDP answers every datagram pc reads with name, until pc is closed.
func ServeUDP(pc net.PacketConn, name string) {
	buf := make([]byte, 1500)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo([]byte(name), from)
	}
}

// AskUDP sends one datagram on c and returns the name in the answer.
func AskUDP(c net.Conn) (string, error) {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("who?")); err != nil {
		return "", err
	}
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("udp answer: %w", err)
	}
	return string(buf[:n]), nil
}

// Conn is a client's connection to a server.
type Conn struct {
	net.Conn
	// Server is the name of the server that answered.
	Server string
	r      *bufio.Reader
}

// Greeted reads the server's name on c, a connection just made; c is
// closed if it does not come.
func Greeted(c net.Conn) (*Conn, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	name, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read the server's name from %s: %w", c.RemoteAddr(), err)
	}
	return &Conn{Conn: c, Server: strings.TrimSpace(name), r: r}, nil
}

// Echo sends a line and returns the server's answer.
func (c *Conn) Echo(line string) (string, error) { return c.EchoWithin(line, 5*time.Second) }

// EchoWithin is Echo with a deadline of its own, for a path that is being
// repaired (TCP retransmits until the router has moved).
func (c *Conn) EchoWithin(line string, d time.Duration) (string, error) {
	c.SetDeadline(time.Now().Add(d))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return "", err
	}
	s, err := c.r.ReadString('\n')
	return strings.TrimSpace(s), err
}

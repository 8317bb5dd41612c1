package vrrp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The adverts' send and receive calls go to the kernel with RawSyscall on
// the non-blocking socket, waiting for readiness in the runtime's poller.
// A plain syscall enters the runtime's syscall state: that wakes the
// scheduler's monitor thread out of its deep sleep, and a send that
// lasts (the kernel forwards a multicast across a bridge in the sender's
// context, ~100 µs here) makes it hand the processor to another thread.
// Measured at 20 ms adverts, that was ten context switches per advert
// against keepalived's one, and most of directord's CPU. A non-blocking
// call never waits, so it needs none of that care.

// rawSock is a socket's descriptor in the poller.
type rawSock struct {
	rc syscall.RawConn
}

// sendmsg sends b to the raw sockaddr name with the control message oob.
func (s rawSock) sendmsg(b, oob []byte, name unsafe.Pointer, namelen uint32) error {
	if len(b) == 0 {
		return errors.New("empty message")
	}
	iov := unix.Iovec{Base: &b[0]}
	iov.SetLen(len(b))
	msg := unix.Msghdr{Name: (*byte)(name), Namelen: namelen, Iov: &iov}
	msg.SetIovlen(1)
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	var errno syscall.Errno
	if err := s.rc.Write(func(fd uintptr) bool {
		_, _, errno = unix.RawSyscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&msg)), 0)
		return errno != unix.EAGAIN
	}); err != nil {
		return err
	}
	if errno != 0 {
		return fmt.Errorf("sendmsg: %w", errno)
	}
	return nil
}

// errNonePending is recvmsg's answer without wait when the socket holds
// nothing.
var errNonePending = errors.New("no datagram pending")

// recvmsg reads one datagram into b and its control messages into oob,
// the sender into from; without wait, it answers errNonePending at once
// when none is there.
func (s rawSock) recvmsg(b, oob []byte, from *unix.RawSockaddrAny, wait bool) (n, oobn int, err error) {
	iov := unix.Iovec{Base: &b[0]}
	iov.SetLen(len(b))
	msg := unix.Msghdr{Name: (*byte)(unsafe.Pointer(from)), Namelen: uint32(unsafe.Sizeof(*from)), Iov: &iov}
	msg.SetIovlen(1)
	msg.Control = &oob[0]
	msg.SetControllen(len(oob))
	var r uintptr
	var errno syscall.Errno
	call := func(fd uintptr) {
		r, _, errno = unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&msg)), 0)
	}
	if wait {
		err = s.rc.Read(func(fd uintptr) bool { call(fd); return errno != unix.EAGAIN })
	} else {
		// Not Read: it holds the descriptor's read lock, which the read
		// loop keeps while it waits for a datagram.
		err = s.rc.Control(call)
	}
	if err != nil {
		return 0, 0, err
	}
	if errno == unix.EAGAIN {
		return 0, 0, errNonePending
	}
	if errno != 0 {
		return 0, 0, fmt.Errorf("recvmsg: %w", errno)
	}
	return int(r), int(msg.Controllen), nil
}

// cmsgs calls fn for each control message in oob.
func cmsgs(oob []byte, fn func(level, typ int32, data []byte)) {
	hdr := unix.CmsgLen(0)
	for len(oob) >= hdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < hdr || l > len(oob) {
			return
		}
		fn(h.Level, h.Type, oob[hdr:l])
		next := unix.CmsgSpace(l - hdr)
		if next > len(oob) {
			return
		}
		oob = oob[next:]
	}
}

// oobSpace holds the control messages a VRRP socket asks for: the packet
// info and the TTL or hop limit.
var oobSpace = unix.CmsgSpace(unix.SizeofInet6Pktinfo) + unix.CmsgSpace(4)

// readIPv4 reads one datagram's payload and its source, destination and
// TTL (without wait: errNonePending when none is there). An IPv4 raw
// socket hands over the IP header too: it is dropped.
func readIPv4(s rawSock, b, oob []byte, wait bool) (n int, src, dst netip.Addr, ttl int, err error) {
	var from unix.RawSockaddrAny
	n, oobn, err := s.recvmsg(b, oob, &from, wait)
	if err != nil {
		return 0, src, dst, 0, err
	}
	if n < 20 || b[0]>>4 != 4 || int(b[0]&0x0f)*4 > n {
		return 0, src, dst, 0, nil // not an IPv4 packet: Parse drops it as too short
	}
	n = copy(b, b[int(b[0]&0x0f)*4:n])
	if from.Addr.Family == unix.AF_INET {
		src = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(&from)).Addr)
	}
	cmsgs(oob[:oobn], func(level, typ int32, data []byte) {
		switch {
		case level == unix.IPPROTO_IP && typ == unix.IP_TTL && len(data) >= 4:
			ttl = int(binary.NativeEndian.Uint32(data))
		case level == unix.IPPROTO_IP && typ == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			dst = netip.AddrFrom4((*unix.Inet4Pktinfo)(unsafe.Pointer(&data[0])).Addr)
		}
	})
	return n, src, dst, ttl, nil
}

// readIPv6 reads one datagram and its source, destination and hop limit
// (without wait: errNonePending when none is there).
func readIPv6(s rawSock, b, oob []byte, wait bool) (n int, src, dst netip.Addr, hops int, err error) {
	var from unix.RawSockaddrAny
	n, oobn, err := s.recvmsg(b, oob, &from, wait)
	if err != nil {
		return 0, src, dst, 0, err
	}
	if from.Addr.Family == unix.AF_INET6 {
		src = netip.AddrFrom16((*unix.RawSockaddrInet6)(unsafe.Pointer(&from)).Addr)
	}
	cmsgs(oob[:oobn], func(level, typ int32, data []byte) {
		switch {
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_HOPLIMIT && len(data) >= 4:
			hops = int(binary.NativeEndian.Uint32(data))
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			dst = netip.AddrFrom16((*unix.Inet6Pktinfo)(unsafe.Pointer(&data[0])).Addr)
		}
	})
	return n, src, dst, hops, nil
}

// writeIPv4 sends b from src (IP_PKTINFO) to dst on the interface ifindex.
func writeIPv4(s rawSock, b []byte, ifindex int, src, dst netip.Addr) error {
	var oob [unix.SizeofCmsghdr + unix.SizeofInet4Pktinfo + 8]byte
	o := oob[:unix.CmsgSpace(unix.SizeofInet4Pktinfo)]
	h := (*unix.Cmsghdr)(unsafe.Pointer(&o[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
	pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&o[unix.CmsgLen(0)]))
	pi.Ifindex = int32(ifindex)
	if src.Is4() {
		pi.Spec_dst = src.As4()
	}
	to := unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.As4()}
	return s.sendmsg(b, o, unsafe.Pointer(&to), unix.SizeofSockaddrInet4)
}

// writeIPv6 sends b from src (IPV6_PKTINFO) with hop limit 255 to dst on
// the interface ifindex (also dst's scope).
func writeIPv6(s rawSock, b []byte, ifindex int, src, dst netip.Addr) error {
	var oob [2*unix.SizeofCmsghdr + unix.SizeofInet6Pktinfo + 16]byte
	space := unix.CmsgSpace(unix.SizeofInet6Pktinfo)
	o := oob[:space+unix.CmsgSpace(4)]
	h := (*unix.Cmsghdr)(unsafe.Pointer(&o[0]))
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
	pi := (*unix.Inet6Pktinfo)(unsafe.Pointer(&o[unix.CmsgLen(0)]))
	pi.Ifindex = uint32(ifindex)
	if src.IsValid() {
		pi.Addr = src.As16()
	}
	h = (*unix.Cmsghdr)(unsafe.Pointer(&o[space]))
	h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(o[space+unix.CmsgLen(0):], 255)
	to := unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.As16(), Scope_id: uint32(ifindex)}
	return s.sendmsg(b, o, unsafe.Pointer(&to), unix.SizeofSockaddrInet6)
}

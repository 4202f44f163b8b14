package main

// flood: hostile connections at the highest rate one core can send, for
// "a flood that saturates one core" of the proxy. The Go net client of
// hostile spends ~38 µs of CPU 1 per connection (dial through the
// poller, a goroutine per connection, getsockname/getpeername, deadline
// timers) and topped out near 26,000 conn/s, about 60% of the proxy's
// core. flood does the same on the wire with raw syscalls on one
// thread: non-blocking sockets in one epoll set, the bytes built before
// the clock starts, no TLS library, no timer, no allocation per
// connection.
//
// -kind:
//
//	unknown  a whole ClientHello for a name the proxy does not route;
//	         wait for the answer (alert or close), then reset
//	partial  the first half of a ClientHello for a routed name (-sni),
//	         then reset at once, or after -hold: a handshake that never
//	         finishes, at full rate
//	stall    the first half of a ClientHello for a routed name, then
//	         hold until the proxy closes it (its handshake timeout) or
//	         -hold ends; -c of them at a time

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

type floodResult struct {
	Kind    string  `json:"kind"`
	Conns   int64   `json:"conns"`  // connections finished (answered, or reset by the client)
	Alerts  int64   `json:"alerts"` // answered with a TLS alert record
	Served  int64   `json:"served"` // answered with a handshake record (a ServerHello): must be 0 for unknown
	Closed  int64   `json:"closed"` // closed or reset by the proxy without an alert
	Errors  int64   `json:"errors"` // connect failures
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
}

const (
	fsConnecting = iota + 1
	fsSent
)

type floodConn struct {
	state uint8
	until int64 // partial/stall with -hold: reset at (unix ns)
}

func runFlood(kind string, hold time.Duration) (any, error) {
	host, portS, err := net.SplitHostPort(*addr)
	if err != nil {
		return nil, err
	}
	ip := net.ParseIP(host).To4()
	port, _ := strconv.Atoi(portS)
	if ip == nil || port == 0 {
		return nil, fmt.Errorf("flood: -addr must be IPv4:port, not %q", *addr)
	}
	sa := &syscall.SockaddrInet4{Port: port}
	copy(sa.Addr[:], ip)

	var hellos [][]byte
	switch kind {
	case "unknown":
		for i := 0; i < 64; i++ {
			hellos = append(hellos, buildHello(fmt.Sprintf("unknown-%d.invalid", i)))
		}
	case "partial", "stall":
		if *sni == "" {
			return nil, errors.New("flood: -sni (a routed name) is required for " + kind)
		}
		h := buildHello(*sni)
		hellos = append(hellos, h[:len(h)/2])
	default:
		return nil, fmt.Errorf("flood: unknown -kind %q", kind)
	}

	threads := max(*fThreads, 1)
	results := make(chan floodResult, threads)
	errc := make(chan error, threads)
	start := time.Now()
	deadline := start.Add(*dur).UnixNano()
	per := max(*conc/threads, 1)
	var cpus []int
	for _, f := range strings.Split(*fCPUs, ",") {
		if c, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			cpus = append(cpus, c)
		}
	}
	for i := range threads {
		cpu := -1
		if len(cpus) > 0 {
			cpu = cpus[i%len(cpus)]
		}
		go func() {
			r, err := floodThread(kind, hold, sa, hellos, per, deadline, cpu)
			if err != nil {
				errc <- err
				return
			}
			results <- r
		}()
	}
	sum := floodResult{Kind: kind}
	for range threads {
		select {
		case err := <-errc:
			return nil, err
		case r := <-results:
			sum.Conns += r.Conns
			sum.Alerts += r.Alerts
			sum.Served += r.Served
			sum.Closed += r.Closed
			sum.Errors += r.Errors
		}
	}
	sum.Seconds = time.Since(start).Seconds()
	sum.Rate = float64(sum.Conns) / sum.Seconds
	return sum, nil
}

// floodThread runs conc connections on one OS thread and its own epoll
// set until deadline (unix ns).
func floodThread(kind string, hold time.Duration, sa *syscall.SockaddrInet4, hellos [][]byte, conc int, deadline int64, cpu int) (floodResult, error) {
	runtime.LockOSThread()
	if cpu >= 0 {
		// this thread only (pid 0 of sched_setaffinity is the caller)
		var mask [16]uint64
		mask[cpu/64] |= 1 << (cpu % 64)
		if _, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETAFFINITY, 0, uintptr(len(mask)*8), uintptr(unsafe.Pointer(&mask))); e != 0 {
			return floodResult{}, fmt.Errorf("pinning a flood thread to CPU %d: %v", cpu, e)
		}
	}
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return floodResult{}, err
	}
	defer syscall.Close(epfd)

	var r floodResult
	conns := make([]floodConn, 1024) // by fd
	inflight := 0
	next := 0
	linger := &syscall.Linger{Onoff: 1, Linger: 0}
	open := func() {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			r.Errors++
			return
		}
		// close resets: no TIME_WAIT on either side (see noTimeWait)
		_ = syscall.SetsockoptLinger(fd, syscall.SOL_SOCKET, syscall.SO_LINGER, linger)
		if err := syscall.Connect(fd, sa); err != nil && err != syscall.EINPROGRESS {
			syscall.Close(fd)
			r.Errors++
			return
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | -syscall.EPOLLET&0xffffffff, Fd: int32(fd)}
		if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			syscall.Close(fd)
			r.Errors++
			return
		}
		for fd >= len(conns) {
			conns = append(conns, make([]floodConn, len(conns))...)
		}
		conns[fd] = floodConn{state: fsConnecting}
		inflight++
	}
	finish := func(fd int) {
		syscall.Close(fd) // leaves the epoll set with it
		conns[fd] = floodConn{}
		inflight--
		r.Conns++
	}

	buf := make([]byte, 4096)
	events := make([]syscall.EpollEvent, 256)
	for i := 0; i < conc; i++ {
		open()
	}
	for {
		now := time.Now().UnixNano()
		if now >= deadline {
			break
		}
		wait := 10 // ms: the -hold resets and the end are checked at least this often
		n, err := syscall.EpollWait(epfd, events, wait)
		if err != nil && err != syscall.EINTR {
			return r, err
		}
		for _, ev := range events[:max(n, 0)] {
			fd := int(ev.Fd)
			c := &conns[fd]
			if c.state == fsConnecting {
				if ev.Events&syscall.EPOLLOUT == 0 || ev.Events&syscall.EPOLLERR != 0 {
					syscall.Close(fd)
					conns[fd] = floodConn{}
					inflight--
					r.Errors++
					continue
				}
				h := hellos[next%len(hellos)]
				next++
				if w, err := syscall.Write(fd, h); err != nil || w != len(h) {
					finish(fd)
					r.Closed++
					continue
				}
				c.state = fsSent
				if kind == "partial" && hold == 0 {
					finish(fd)
					continue
				}
				if hold > 0 {
					c.until = now + int64(hold)
				}
				if ev.Events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP) == 0 {
					continue
				}
			}
			if ev.Events&(syscall.EPOLLIN|syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) == 0 {
				continue
			}
			m, err := syscall.Read(fd, buf)
			if err == syscall.EAGAIN {
				continue
			}
			switch {
			case m > 0 && buf[0] == 21: // alert record
				r.Alerts++
			case m > 0 && buf[0] == 22: // handshake record: a ServerHello
				r.Served++
			default:
				r.Closed++
			}
			finish(fd)
		}
		if hold > 0 {
			now = time.Now().UnixNano()
			for fd := range conns {
				if conns[fd].state == fsSent && conns[fd].until != 0 && now >= conns[fd].until {
					finish(fd)
				}
			}
		}
		for inflight < conc {
			before := r.Errors
			open()
			if r.Errors != before {
				break // out of ports or descriptors: try again on the next turn
			}
		}
	}
	for fd := range conns {
		if conns[fd].state != 0 {
			syscall.Close(fd)
		}
	}
	return r, nil
}

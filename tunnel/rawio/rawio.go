// Package rawio reads and writes sockets with raw system calls on their
// non-blocking descriptors, waiting for readiness through syscall.RawConn
// as package net does. The agents use it for the connections they carry
// and for their sessions' connections.
package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// The per-message reads and writes of a connection an agent carries, and
// of its session, are made with raw system calls (syscall.RawSyscall) on
// the socket's non-blocking descriptor, waiting for readiness through
// syscall.RawConn as the net package does.
//
// A system call made through package net tells the Go scheduler that it is
// entering and leaving one. With one processor (GOMAXPROCS=1, as the
// agents run), that wakes the runtime's monitor thread (sysmon) whenever
// every goroutine was idle before, which for an agent carrying one message
// at a time is every message; and a call that lasts over 20 µs (a loopback
// write delivers to the reader within the call) has the monitor hand the
// processor to another thread and take it back after. perf put the monitor
// alone at a third of each agent's CPU under 64-byte round trips. A read
// or write on a non-blocking socket does not block (it returns EAGAIN when
// the socket is not ready), so the scheduler needs no notice; the price is
// that the processor stays with the call while it runs.
//
// Each Read tries the socket before it waits, and so makes one read that
// finds nothing (EAGAIN) per message, as package net does: RawConn.Read
// starts by forgetting any readiness that came while nobody waited, so a
// Read that waited first, after a short read, could miss bytes that arrived
// in between (TestRawConnShortRead).
//
// unsafe is used only to pass a buffer's address to the kernel, in the
// call expression, as package syscall does.

// Read is read(2) on the non-blocking descriptor fd; n is 0 on an error.
func Read(fd uintptr, p []byte) (int, syscall.Errno) { return sysRW(syscall.SYS_READ, fd, p) }

// Write is write(2) on the non-blocking descriptor fd; n is 0 on an error.
func Write(fd uintptr, p []byte) (int, syscall.Errno) { return sysRW(syscall.SYS_WRITE, fd, p) }

// Socket is a stream connection with a descriptor: a *net.TCPConn or a
// *net.UnixConn. Both are pointers, so holding one in this interface
// allocates nothing.
type Socket interface {
	net.Conn
	CloseWrite() error
	SyscallConn() (syscall.RawConn, error)
}

// sysRW makes the read or write call trap on fd with p, again after EINTR.
func sysRW(trap, fd uintptr, p []byte) (int, syscall.Errno) {
	if len(p) == 0 {
		return 0, 0
	}
	for {
		n, _, e := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			return int(n), 0
		case syscall.EINTR:
		default:
			return 0, e
		}
	}
}

// Conn is a connection whose Read and Write are the raw Read and Write;
// everything else (deadlines, Close, addresses) is the wrapped one's. One
// Read and one Write may run at once, not two of either. Neither allocates.
type Conn struct {
	Socket
	rc syscall.RawConn

	rp         []byte // the Read in progress
	rn         int
	rerr       syscall.Errno
	readFn     func(fd uintptr) bool
	wp         []byte // the Write in progress
	wn         int
	werr       syscall.Errno
	writeFn    func(fd uintptr) bool
	tryWriteFn func(fd uintptr) bool
}

// ErrBlocking: a descriptor without O_NONBLOCK, on which a raw read or
// write could block the thread, and the processor with it, unseen by the
// scheduler.
var ErrBlocking = errors.New("rawio: descriptor is in blocking mode")

// NewConn returns c with raw reads and writes, or ErrBlocking if c's
// descriptor is not non-blocking (package net's always are; one made
// otherwise, as os.NewFile leaves a blocking one, is not given raw I/O).
func NewConn(c Socket) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = fcntlGetFlags(fd) }); err != nil {
		return nil, err
	}
	if ferr != nil {
		return nil, ferr
	}
	if flags&syscall.O_NONBLOCK == 0 {
		return nil, ErrBlocking
	}
	r := &Conn{Socket: c, rc: rc}
	r.readFn, r.writeFn, r.tryWriteFn = r.readFD, r.writeFD, r.tryWriteFD
	return r, nil
}

// fcntlGetFlags is fcntl(fd, F_GETFL).
func fcntlGetFlags(fd uintptr) (int, error) {
	flags, _, e := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
	if e != 0 {
		return 0, os.NewSyscallError("fcntl", e)
	}
	return int(flags), nil
}

// readFD is RawConn.Read's callback: false means "not readable yet, wait".
func (c *Conn) readFD(fd uintptr) bool {
	c.rn, c.rerr = Read(fd, c.rp)
	return c.rerr != syscall.EAGAIN
}

// writeFD is RawConn.Write's callback: false means "wait until writable".
func (c *Conn) writeFD(fd uintptr) bool {
	for c.wn < len(c.wp) {
		n, e := Write(fd, c.wp[c.wn:])
		if e == syscall.EAGAIN {
			return false
		}
		if e != 0 {
			c.werr = e
			return true
		}
		c.wn += n
	}
	return true
}

// Read reads into p once the connection is readable.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rp, c.rn, c.rerr = p, 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerr
	c.rp = nil
	switch {
	case err != nil:
		return 0, err // a *net.OpError already
	case errno != 0:
		return 0, c.opError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// TryWrite writes what of p the socket takes now, without waiting: n may
// be short, with a nil error, when the socket's buffer is full.
func (c *Conn) TryWrite(p []byte) (int, error) {
	c.wp, c.wn, c.werr = p, 0, 0
	err := c.rc.Write(c.tryWriteFn)
	n, errno := c.wn, c.werr
	c.wp = nil
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, c.opError("write", errno)
	}
	return n, nil
}

// tryWriteFD is TryWrite's callback: it writes until the socket is full,
// and never asks to wait.
func (c *Conn) tryWriteFD(fd uintptr) bool {
	c.writeFD(fd)
	return true
}

// Write writes all of p, waiting for the connection to be writable as
// needed.
func (c *Conn) Write(p []byte) (int, error) {
	c.wp, c.wn, c.werr = p, 0, 0
	err := c.rc.Write(c.writeFn)
	n, errno := c.wn, c.werr
	c.wp = nil
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, c.opError("write", errno)
	}
	return n, nil
}

func (c *Conn) opError(op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: c.LocalAddr().Network(), Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}

// Wrap returns c with raw reads and writes (a *Conn) when it is a TCP or
// UNIX connection on a non-blocking descriptor, and c itself otherwise.
// The caller makes at most one Read and one Write at a time, as the
// handshake and the record layer do.
func Wrap(c net.Conn) net.Conn {
	if s, ok := c.(Socket); ok {
		if r, err := NewConn(s); err == nil {
			return r
		}
	}
	return c
}

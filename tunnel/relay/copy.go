package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel/rawio"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// copyFromConn copies conn to st until conn's EOF. It waits for conn to be
// readable without holding a buffer. Each chunk read is added to
// o.FromConn once, even if it is sent again later (from o.Unacked, on
// another stream). What it writes before the peer acknowledges st goes to
// o.Unacked too. total is what st took; readErr is conn's failure,
// writeErr the stream's; both are nil after EOF.
func (rl *Relay) copyFromConn() (total int64, readErr, writeErr error) {
	st, o := rl.st, &rl.o
	r, err := newChunkReader(rl.conn, rl.raw, o.Pool)
	if err != nil {
		return 0, err, nil
	}
	var wd writeDeadline
	for {
		buf, n, err := r.read()
		if n > 0 {
			add(o.FromConn, int64(n))
			buf = o.Pool.shrink(buf, n) // the write may wait for the session's send loop
			o.Unacked.keep(st, (*buf)[:n])
			wd.arm(st, o.Stall)
			w, werr := st.Write((*buf)[:n])
			o.Pool.put(buf)
			total += int64(w)
			if werr != nil {
				return total, nil, werr
			}
		}
		if err == io.EOF {
			return total, nil, nil
		}
		if err != nil {
			return total, err, nil
		}
	}
}

// add adds n to c, if c is not nil.
func add(c *atomic.Int64, n int64) {
	if c != nil {
		c.Add(n)
	}
}

// writeDeadline bounds how long one write may block. Moving a deadline
// costs a timer update, so it is moved only once half of it is used up: a
// write that blocks is aborted after between stall/2 and stall.
type writeDeadline struct{ at time.Time }

func (d *writeDeadline) arm(w interface{ SetWriteDeadline(time.Time) error }, stall time.Duration) {
	now := time.Now()
	if d.at.Sub(now) < stall/2 {
		d.at = now.Add(stall)
		w.SetWriteDeadline(d.at)
	}
}

// Receive buffers. yamux allocates a stream's receive buffer at the size of
// the frame that finds it empty and doubles it once that frame is in, and
// keeps it. A stream that received a large burst and then pauses drops it
// after shrinkAfter of silence, so that a pooled connection that has worked
// holds no burst-sized buffer; a stream in steady bulk flow, whose next
// frame comes sooner, keeps its buffer rather than allocate it per frame.
// Buffers of small messages cost little and wait for the session's sweep.
const (
	shrinkAfter = 20 * time.Millisecond
	largeRead   = 16 << 10 // a read at least this large makes a pause drop the buffer
)

// copyToConn copies st to conn until st's EOF. A zero-length Read waits for
// data without holding a copy buffer; what conn took is added to
// o.ToConn. stopped is set by abort before it sets st's read deadline, so
// that the deadline copyToConn sets for shrinkAfter never hides an abort.
// readErr is the stream's failure, writeErr conn's; both are nil after EOF.
func (rl *Relay) copyToConn() (total int64, readErr, writeErr error) {
	st, o, stopped := rl.st, &rl.o, &rl.stopped
	large := false // the last read was large and drained the stream's buffer
	for {
		if large {
			st.SetReadDeadline(time.Now().Add(shrinkAfter))
			_, err := st.Read(nil)
			st.SetReadDeadline(time.Time{})
			if stopped.Load() {
				return total, session.ErrTimeout, nil
			}
			if errors.Is(err, session.ErrTimeout) {
				st.Shrink()
			}
			large = false
		}
		if _, err := st.Read(nil); err != nil {
			if err == io.EOF {
				return total, nil, nil
			}
			return total, err, nil
		}
		st.Touch()
		buf := o.Pool.get()
		n, err := st.Read(*buf)
		large = n >= largeRead && n < len(*buf)
		if n > 0 {
			w, werr := rl.writeConn((*buf)[:n])
			total += int64(w)
			add(o.ToConn, int64(w))
			if werr != nil {
				o.Pool.put(buf)
				return total, nil, werr
			}
		}
		o.Pool.put(buf)
		if err == io.EOF {
			return total, nil, nil
		}
		if err != nil {
			return total, err, nil
		}
	}
}

// writeConn writes all of p to conn, waiting for a reader that is slow for
// up to the stall time. With raw I/O, a write that the socket takes at once
// moves no deadline: that goes deep into the runtime's timers, and would
// double the stack of the goroutine that waits here for good. Only a write
// that must wait sets one, and clears it when done.
func (rl *Relay) writeConn(p []byte) (int, error) {
	if rl.raw == nil {
		rl.toWD.arm(rl.conn, rl.o.Stall)
		return rl.conn.Write(p)
	}
	n, err := rl.raw.TryWrite(p)
	if err != nil || n == len(p) {
		return n, err
	}
	rl.conn.SetWriteDeadline(time.Now().Add(rl.o.Stall))
	m, err := rl.raw.Write(p[n:])
	rl.conn.SetWriteDeadline(time.Time{})
	return n + m, err
}

// chunkReader reads a connection in chunks, each in a buffer borrowed
// from the pool that the caller gives back.
type chunkReader interface {
	read() (buf *[]byte, n int, err error)
}

// newChunkReader returns a rawReader for a socket that has raw I/O (raw
// is not nil), a plainReader for any other connection.
func newChunkReader(conn net.Conn, raw *rawio.Conn, pool *Pool) (chunkReader, error) {
	if raw != nil {
		return newRawReader(raw.Socket, pool)
	}
	return plainReader{conn, pool}, nil
}

// plainReader reads a connection through its Read, holding a borrowed
// buffer while it waits.
type plainReader struct {
	conn net.Conn
	pool *Pool
}

func (r plainReader) read() (*[]byte, int, error) {
	buf := r.pool.get()
	n, err := r.conn.Read(*buf)
	if n > 0 {
		return buf, n, nil // an error comes again with the next read
	}
	r.pool.put(buf)
	if err == nil {
		err = io.ErrNoProgress
	}
	return nil, 0, err
}

// rawReader reads a connection without holding a buffer while it waits: it
// borrows one from the pool only once the socket is readable, and reads in
// the same system call. Not safe for concurrent use.
type rawReader struct {
	rc   syscall.RawConn
	pool *Pool
	fn   func(fd uintptr) bool // readFD, bound once so that a read allocates nothing

	buf *[]byte
	n   int
	err error
}

func newRawReader(conn rawio.Socket, pool *Pool) (*rawReader, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &rawReader{rc: rc, pool: pool}
	r.fn = r.readFD
	return r, nil
}

// readFD is RawConn.Read's callback: false means "not readable yet, wait".
func (r *rawReader) readFD(fd uintptr) bool {
	b := r.pool.get()
	var err error
	n, errno := rawio.Read(fd, *b)
	if errno == syscall.EAGAIN {
		r.pool.put(b)
		return false
	}
	if errno != 0 {
		err = errno
	}
	r.buf, r.n, r.err = b, n, err
	return true
}

// read returns a borrowed buffer holding n > 0 bytes, which the caller
// gives back, or io.EOF, or the failure (net.ErrClosed once conn is
// closed, ECONNRESET as an *os.SyscallError after a reset).
func (r *rawReader) read() (*[]byte, int, error) {
	r.buf, r.n, r.err = nil, 0, nil
	if err := r.rc.Read(r.fn); err != nil {
		return nil, 0, err
	}
	buf, n, err := r.buf, r.n, r.err
	r.buf = nil
	switch {
	case err != nil:
		r.pool.put(buf)
		return nil, 0, os.NewSyscallError("read", err)
	case n == 0:
		r.pool.put(buf)
		return nil, 0, io.EOF
	}
	return buf, n, nil
}

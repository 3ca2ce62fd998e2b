package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// bufPool hands out copy buffers of copyBufSize. Each agent owns one.
type bufPool struct{ p sync.Pool }

func newBufPool() *bufPool {
	return &bufPool{p: sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}}
}

func (p *bufPool) get() *[]byte  { return p.p.Get().(*[]byte) }
func (p *bufPool) put(b *[]byte) { p.p.Put(b) }

// flow is what forward reports when both directions are done.
type flow struct {
	toStream, fromStream int64 // bytes
	aborted              bool  // the tunnel side died: conn was reset, not closed cleanly
	err                  error // the first error that ended a direction early, if any
}

// forward carries conn (an application or backend TCP connection) and st
// both ways until both directions end, then closes both. One goroutine per
// direction. Half-close travels end to end: EOF from conn becomes the
// stream's FIN, the stream's FIN becomes conn's CloseWrite. If the stream
// ends because its session died, conn is reset rather than closed, so the
// peer application sees an abort and never a clean, truncated end.
// before, if not nil, runs in the stream-to-conn direction before copying
// (the entry reads the exit's status there); an error from it aborts both.
// A direction left half-open is bounded by yamux's StreamCloseTimeout; a
// write that stalls for longer than stall (a reader that stopped reading)
// aborts the connection, so nothing waits, or buffers, without bound.
func forward(conn *net.TCPConn, st *yamux.Stream, pool *bufPool, stall time.Duration, before func() error) flow {
	var f flow
	var once sync.Once
	fail := func(err error) {
		once.Do(func() { f.err = err })
	}
	// abort ends both directions now: conn is reset and st stops reading.
	abort := func() {
		conn.SetLinger(0)
		conn.Close()
		st.SetReadDeadline(time.Now())
	}

	done := make(chan struct{})
	go func() { // conn -> stream
		defer close(done)
		buf := pool.get()
		defer pool.put(buf)
		n, err := copyPlain(st, conn, *buf, stall)
		f.toStream = n
		if err != nil {
			fail(err)
			st.SetReadDeadline(time.Now()) // the other direction cannot complete either
		}
		st.Close() // FIN: this direction is done (yamux Close is a half-close)
	}()

	// stream -> conn
	if before != nil {
		if err := before(); err != nil {
			fail(err)
			abort()
		}
	}
	if f.err == nil {
		buf := pool.get()
		n, err := copyPlain(conn, st, *buf, stall)
		pool.put(buf)
		f.fromStream = n
		switch {
		case err == nil && st.Session().IsClosed():
			// yamux ends a stream of a dead session with io.EOF too: tell them apart.
			f.aborted = true
			fail(errSessionLost)
			abort()
		case err == nil:
			conn.CloseWrite()
		default:
			if errors.Is(err, yamux.ErrConnectionReset) || st.Session().IsClosed() {
				f.aborted = true
			}
			fail(err)
			abort()
		}
	}
	<-done
	conn.Close()
	st.Close()
	return f
}

var errSessionLost = errors.New("tunnel session lost")

// deadlineWriter is a writer with write deadlines: a TCP conn or a stream.
type deadlineWriter interface {
	io.Writer
	SetWriteDeadline(time.Time) error
}

// defaultWriteStall is how long one write may block on a peer that does
// not read before the connection is aborted.
const defaultWriteStall = 2 * time.Minute

// copyPlain copies src to dst with buf until src's EOF (returned as nil);
// each write must complete within stall. It avoids io.Copy's
// ReaderFrom/WriterTo paths so that buf, sized to one record, is what is used.
func copyPlain(dst deadlineWriter, src io.Reader, buf []byte, stall time.Duration) (int64, error) {
	var total int64
	for {
		n, err := src.Read(buf)
		if n > 0 {
			dst.SetWriteDeadline(time.Now().Add(stall))
			w, werr := dst.Write(buf[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// isClosed reports errors that mean "we closed it ourselves".
func isClosed(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, yamux.ErrSessionShutdown)
}

package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
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
// finSeen reports whether the peer's FIN for st arrived: a dead session's
// streams read io.EOF too, and only those whose FIN came first ended cleanly.
func forward(conn *net.TCPConn, st *yamux.Stream, pool *bufPool, stall time.Duration, finSeen func() bool, before func() error) flow {
	var (
		f       flow // the byte counts; err and aborted are filled in at the end
		aborted atomic.Bool
		mu      sync.Mutex
		first   error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = err
		}
	}
	// abort ends both directions now: conn is reset and st stops reading.
	abort := func() {
		conn.SetLinger(0)
		conn.Close()
		st.SetReadDeadline(time.Now())
	}
	lost := func() {
		aborted.Store(true)
		fail(errSessionLost)
		abort()
	}

	// A session that dies ends the stream now, unless the peer's FIN came
	// first: a write blocked on a reader that does not read would otherwise
	// wait out the stall timeout.
	finished, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-st.Session().CloseChan():
			if !finSeen() {
				lost()
			}
		case <-finished:
		}
	}()

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
	ok := true
	if before != nil {
		if err := before(); err != nil {
			fail(err)
			abort()
			ok = false
		}
	}
	if ok {
		buf := pool.get()
		n, err := copyPlain(conn, st, *buf, stall)
		pool.put(buf)
		f.fromStream = n
		switch {
		case err == nil && st.Session().IsClosed() && !finSeen():
			lost()
		case err == nil:
			conn.CloseWrite()
		default:
			if errors.Is(err, yamux.ErrConnectionReset) || st.Session().IsClosed() {
				aborted.Store(true)
			}
			fail(err)
			abort()
		}
	}
	<-done
	close(finished)
	<-watched
	conn.Close()
	st.Close()
	f.err, f.aborted = first, aborted.Load()
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

// shrinker is a yamux stream: Shrink drops its receive buffer when empty.
// yamux's buffer keeps the capacity of the largest burst it held (up to a
// window per stream), so idle streams would otherwise hold it for life.
type shrinker interface{ Shrink() }

// copyPlain copies src to dst with buf until src's EOF (returned as nil);
// each write must complete within stall. It avoids io.Copy's
// ReaderFrom/WriterTo paths so that buf, sized to one record, is what is used.
func copyPlain(dst deadlineWriter, src io.Reader, buf []byte, stall time.Duration) (int64, error) {
	sh, _ := src.(shrinker)
	burst := false // a read filled buf: the stream's buffer may have grown
	var total int64
	for {
		n, err := src.Read(buf)
		if sh != nil {
			if n == len(buf) {
				burst = true
			} else if burst {
				sh.Shrink() // the burst is drained; small messages keep their small buffer
				burst = false
			}
		}
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

package status

import (
	"net"
	"sync"
	"sync/atomic"
)

// idleConns are the status endpoint's connections idle in keep-alive.
// Safe for concurrent use.
type idleConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// track records whether c is idle now.
func (ic *idleConns) track(c net.Conn, idle bool) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if idle {
		ic.conns[c] = struct{}{}
	} else {
		delete(ic.conns, c)
	}
}

// closeAll closes every idle connection.
func (ic *idleConns) closeAll() {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	for c := range ic.conns {
		c.Close()
		delete(ic.conns, c)
	}
}

// limitListener accepts at most n connections open at once: Accept waits
// while n are open, after calling full once per wait, so that its owner can
// close some. A connection it returns gives its place back when closed
// (once, however often it is closed). Close ends a wait. Safe for concurrent
// use.
type limitListener struct {
	net.Listener
	slots    chan struct{}
	full     func()
	blocked  atomic.Int32 // Accept calls waiting for a place
	stopOnce sync.Once
	stopped  chan struct{}
}

func newLimitListener(ln net.Listener, n int, full func()) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), full: full, stopped: make(chan struct{})}
}

// waiting reports whether an Accept waits for a place.
func (l *limitListener) waiting() bool { return l.blocked.Load() > 0 }

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	default:
		l.blocked.Add(1)
		l.full()
		select {
		case l.slots <- struct{}{}:
			l.blocked.Add(-1)
		case <-l.stopped:
			l.blocked.Add(-1)
			return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.stopOnce.Do(func() { close(l.stopped) })
	return l.Listener.Close()
}

// limitConn is a connection of a limitListener.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite is the wrapped connection's, which net/http uses to end an
// answer it closes the connection after.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

package tunnel

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Accepting through a shortage. An accept fails, without anything being
// wrong with the listener, when the process or the system is out of file
// descriptors (EMFILE, ENFILE) or of kernel memory (ENOBUFS, ENOMEM), or when
// the peer reset the connection while it waited in the queue
// (ECONNABORTED). Ending the accept loop on such an error would end the
// agent, and every session with it, over a shortage that passes as soon as
// a few connections close. RetryingListener waits and tries again instead,
// as net/http's Server.Serve does: 5 ms after the first failure, doubling up
// to 1 s, and back to 5 ms after an accept succeeds. Meanwhile the kernel
// keeps queueing new connections in the listen backlog.

// Backoff of RetryingListener.Accept after a temporary error.
const (
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

// RetryingListener is a net.Listener whose Accept retries temporary errors
// (temporaryAcceptError) until an accept succeeds, the listener is closed,
// or another error comes, which it returns. It logs the first failure of a
// run of them at warn, with what to do, and the end of the run at info. Close
// ends a wait at once. Safe for concurrent use; the backoff is shared by
// concurrent Accept calls.
type RetryingListener struct {
	net.Listener
	log zerolog.Logger
	// wait waits d, or until stop is closed, and reports whether the whole
	// of d passed. Tests replace it.
	wait func(d time.Duration, stop <-chan struct{}) bool

	closeOnce sync.Once
	closed    chan struct{} // closed by Close

	mu       sync.Mutex
	delay    time.Duration // the next wait; 0: no failure since the last accept
	failures int           // in the current run
	since    time.Time     // the current run's first failure
}

// NewRetryingListener wraps ln; Close closes ln. An agent's Serve and
// ServeListeners may be given one (the command does), and StartStatus
// makes its own. A caller that closes the
// listener to stop accepting must close the wrapper, so that a wait in
// progress ends at once (closing ln alone ends it within acceptRetryMax).
func NewRetryingListener(ln net.Listener, log zerolog.Logger) *RetryingListener {
	return &RetryingListener{Listener: ln, log: log, wait: waitOrStop, closed: make(chan struct{})}
}

// waitOrStop waits d, or until stop is closed; it reports whether d passed.
func waitOrStop(d time.Duration, stop <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	}
}

// Accept waits for and returns the next connection, retrying temporary
// errors. Once the listener is closed it returns an error that wraps
// net.ErrClosed.
func (l *RetryingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err == nil {
			l.recovered()
			return c, nil
		}
		if !temporaryAcceptError(err) {
			return nil, err
		}
		if !l.wait(l.failed(err), l.closed) {
			return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
		}
	}
}

// Close closes the listener and ends any wait of Accept.
func (l *RetryingListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// failed records the failure err and returns how long to wait before the
// next accept.
func (l *RetryingListener) failed(err error) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.delay == 0 {
		l.delay, l.failures, l.since = acceptRetryMin, 0, time.Now()
		ev := l.log.Warn().Err(err).Str("addr", l.Addr().String())
		if isFDShortage(err) {
			ev.Msg("cannot accept connections: out of file descriptors; retrying with backoff up to 1s. " +
				"Raise the open-file limit (LimitNOFILE= in the systemd unit, ulimit -n in the shell that starts the agent, " +
				"the container's nofile ulimit), or look for what holds so many connections open (open_fds on /status)")
		} else {
			ev.Msg("cannot accept connections for now; retrying with backoff up to 1s. " +
				"If this repeats, the host is short of memory for sockets (ENOBUFS, ENOMEM): check its memory and socket buffers")
		}
	} else {
		l.delay = min(2*l.delay, acceptRetryMax)
	}
	l.failures++
	return l.delay
}

// FailingFor returns how long, at now, accepts have failed in a row (a run
// not yet ended by one that succeeded); 0 when the last accept succeeded.
// Safe for concurrent use.
func (l *RetryingListener) FailingFor(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.delay == 0 {
		return 0
	}
	return max(now.Sub(l.since), 1)
}

// recovered ends a run of failures, if there was one.
func (l *RetryingListener) recovered() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.delay == 0 {
		return
	}
	l.log.Info().Str("addr", l.Addr().String()).Int("failed_accepts", l.failures).
		Str("duration", logDuration(time.Since(l.since))).Msg("accepting connections again")
	l.delay, l.failures = 0, 0
}

// temporaryAcceptError reports whether an accept that failed with err may
// succeed if tried again later: a shortage of descriptors or kernel memory,
// a connection aborted in the queue, or a timeout.
func temporaryAcceptError(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED:
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isFDShortage reports whether err says the process or the system is out of
// file descriptors.
func isFDShortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// Connections before their handshake. The exit's handshake slots
// (--max-handshakes) bound the handshakes past a valid HELLO, and
// sourceLimiter bounds those of one source; but a connection that sends
// nothing, or garbage, holds a descriptor and a goroutine for up to the
// hello timeout before either applies, and a flood from many sources could
// hold every descriptor the process may open. pendingGate bounds all of
// them together, so that part of the open-file limit is always left to the
// sessions and the connections they carry.

// maxPending bounds pendingLimit: more connections than this waiting for
// their handshake at once is a flood, whatever the open-file limit.
const maxPending = 4096

// pendingLimit is the cap of a pendingGate for a process whose soft
// open-file limit is soft: half of what fdReserve leaves, at least 1 and at
// most maxPending.
func pendingLimit(soft uint64) int {
	if soft <= fdReserve+2 {
		return 1
	}
	return int(min((soft-fdReserve)/2, maxPending))
}

// pendingGate counts the connections that have been accepted and have not
// finished their handshake, up to a cap. Safe for concurrent use.
type pendingGate struct {
	limit int64
	n     atomic.Int64
}

// processPendingGate returns a gate sized from this process's open-file
// limit (pendingLimit), or for maxPending if it cannot be read.
func processPendingGate() *pendingGate {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return newPendingGate(maxPending)
	}
	return newPendingGate(pendingLimit(lim.Cur))
}

// retrying returns ln as a RetryingListener, wrapping it unless it is one.
func retrying(ln net.Listener, log zerolog.Logger) net.Listener {
	if _, ok := ln.(*RetryingListener); ok {
		return ln
	}
	return NewRetryingListener(ln, log)
}

// newPendingGate returns a gate for at most limit connections (at least 1).
func newPendingGate(limit int) *pendingGate {
	return &pendingGate{limit: int64(max(limit, 1))}
}

// enter takes a place for one connection and reports whether there was
// one. A caller that got true calls leave exactly once, when the
// connection's handshake has ended (succeeded, failed or refused); one that
// got false closes the connection without a handshake.
func (g *pendingGate) enter() bool {
	if g.n.Add(1) > g.limit {
		g.n.Add(-1)
		return false
	}
	return true
}

// leave gives back the place enter took.
func (g *pendingGate) leave() { g.n.Add(-1) }

// pending is how many connections hold a place now.
func (g *pendingGate) pending() int { return int(g.n.Load()) }

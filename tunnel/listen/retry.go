package listen

import (
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
)

// Accepting through a shortage. An accept fails, without anything being
// wrong with the listener, when the process or the system is out of file
// descriptors (EMFILE, ENFILE) or of kernel memory (ENOBUFS, ENOMEM), or when
// the peer reset the connection while it waited in the queue
// (ECONNABORTED). Ending the accept loop on such an error would end the
// agent, and every session with it, over a shortage that passes as soon as
// a few connections close. Retrying waits and tries again instead,
// as net/http's Server.Serve does: 5 ms after the first failure, doubling up
// to 1 s, and back to 5 ms after an accept succeeds. Meanwhile the kernel
// keeps queueing new connections in the listen backlog.

// Backoff of Retrying.Accept after a temporary error.
const (
	acceptRetryMin = 5 * time.Millisecond
	acceptRetryMax = time.Second
)

// Retrying is a net.Listener whose Accept retries temporary errors
// (temporaryAcceptError) until an accept succeeds, the listener is closed,
// or another error comes, which it returns. It logs the first failure of a
// run of them at warn, with what to do, and the end of the run at info. Close
// ends a wait at once. Safe for concurrent use; the backoff is shared by
// concurrent Accept calls.
type Retrying struct {
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

// NewRetrying wraps ln; Close closes ln. An agent's Serve and
// ServeListeners may be given one (the command does), and status.Serve
// makes its own. A caller that closes the
// listener to stop accepting must close the wrapper, so that a wait in
// progress ends at once (closing ln alone ends it within acceptRetryMax).
func NewRetrying(ln net.Listener, log zerolog.Logger) *Retrying {
	return &Retrying{Listener: ln, log: log, wait: waitOrStop, closed: make(chan struct{})}
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
func (l *Retrying) Accept() (net.Conn, error) {
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
func (l *Retrying) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// failed records the failure err and returns how long to wait before the
// next accept.
func (l *Retrying) failed(err error) time.Duration {
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
func (l *Retrying) FailingFor(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.delay == 0 {
		return 0
	}
	return max(now.Sub(l.since), 1)
}

// recovered ends a run of failures, if there was one.
func (l *Retrying) recovered() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.delay == 0 {
		return
	}
	l.log.Info().Str("addr", l.Addr().String()).Int("failed_accepts", l.failures).
		Str("duration", logfield.Duration(time.Since(l.since))).Msg("accepting connections again")
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

// Wrap returns ln as a Retrying, wrapping it unless it is one.
func Wrap(ln net.Listener, log zerolog.Logger) net.Listener {
	if _, ok := ln.(*Retrying); ok {
		return ln
	}
	return NewRetrying(ln, log)
}

package tunnel

// The Go API, entry side: a program that embeds an entry dials streams
// itself (DialContext) instead of, or as well as, accepting applications on
// listeners. The session is kept by Run or ServeListeners, whichever runs;
// DialContext only uses it. The exit side is in apiexit.go, the
// connection both hand out in apiconn.go; opening a stream in outgoing.go.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// Errors of the Go API. An exit's refusal of a stream is a *StatusError.
var (
	// ErrNoSession: the entry has no session with an exit to open a stream
	// on. It is not running (see Entry.Run), it is shutting down, or it
	// could not reach an exit within its dial timeout; the error wrapping
	// it says which, and why (errors.Is finds the handshake's error too,
	// such as handshake.ErrUnknownKey).
	ErrNoSession = errors.New("tunnel: no session with the exit")
)

// StatusError is an exit's refusal of a stream: the status it answered,
// never StatusOK, and its message.
type StatusError struct {
	Service string // the service dialed, as on the wire: "" for the default one
	Status  Status
	Message string // the exit's words, made safe to print
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("tunnel: the exit refused a stream to service %s: %s: %s",
		wireServiceName(e.Service), e.Status, e.Message)
}

// entryRun is an entry's state while Run or ServeListeners runs.
type entryRun struct {
	ctx    context.Context // done once the drain begins: no more dials
	dialed openStreams     // the Conns of DialContext not yet over, for the drain
}

// Run keeps a session with an exit up, for DialContext, until ctx is done,
// as ServeListeners does, but with no listener. Then it lets the
// connections DialContext returned finish for up to the drain timeout,
// closes the session, which cuts those still open, and returns.
//
// DialContext works while Run, Serve or ServeListeners runs; only one of
// them may run at a time.
func (e *Entry) Run(ctx context.Context) error { return e.ServeListeners(ctx, nil) }

// beginRun marks e as running until the returned function is called.
func (e *Entry) beginRun(ctx context.Context) (*entryRun, func(), error) {
	r := &entryRun{ctx: ctx}
	if !e.running.CompareAndSwap(nil, r) {
		return nil, nil, errors.New("tunnel: the entry is running already: call one of Run, Serve and ServeListeners at a time")
	}
	e.runMu.Lock()
	close(e.runChanged) // wakes DialContext calls waiting for it (awaitRun)
	e.runChanged = make(chan struct{})
	e.runMu.Unlock()
	return r, func() { e.running.Store(nil) }, nil
}

// awaitRun returns the state of the entry's Run, waiting up to the dial
// timeout for it to start, so that a program may dial right after it
// started Run in a goroutine.
func (e *Entry) awaitRun(ctx context.Context) (*entryRun, error) {
	timer := time.NewTimer(e.cfg.DialTimeout)
	defer timer.Stop()
	for {
		e.runMu.Lock()
		changed := e.runChanged
		e.runMu.Unlock()
		if r := e.running.Load(); r != nil {
			return r, nil
		}
		select {
		case <-changed:
		case <-timer.C:
			return nil, fmt.Errorf("%w: the entry is not running: call its Run (or Serve)", ErrNoSession)
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: the entry is not running: %w", ErrNoSession, ctx.Err())
		}
	}
}

// DialContext opens a stream to the exit's service (its name; "" or
// config.DefaultService for the default service) and returns it once the
// exit has accepted it, as a *Conn. network must be "tcp". Use it as the
// dial function of a program's client, for example an http.Transport's
// DialContext, wrapped to ignore the address the client asks for.
//
// Run (or Serve, or ServeListeners) must be running, or start soon: it
// keeps the session that DialContext opens streams on. While there is
// none, DialContext waits for one for up to the dial timeout, or until ctx
// is done, and then returns an error wrapping ErrNoSession. If the exit refuses the stream,
// the error is a *StatusError. ctx bounds the dial only, not the returned
// connection. Each connection must be closed; until it is, the entry's
// drain waits for it. Each service dialed has its own counters in Stats
// and the metrics, as each listener's service does.
func (e *Entry) DialContext(ctx context.Context, network, service string) (net.Conn, error) {
	name, err := parseServiceName(service)
	if err != nil {
		return nil, fmt.Errorf("tunnel: dial: %w", err)
	}
	if network != "tcp" {
		return nil, fmt.Errorf("tunnel: dial %s: network %q: a stream to a service is a \"tcp\" connection", name, network)
	}
	run, err := e.awaitRun(ctx)
	if err != nil {
		return nil, err
	}
	if run.ctx.Err() != nil {
		return nil, fmt.Errorf("%w: the entry is shutting down", ErrNoSession)
	}
	svc := e.books.Service(name.String())
	e.books.Began(svc)
	run.dialed.Add(1)
	c, err := e.dialStream(ctx, run, name, svc)
	if err != nil {
		run.dialed.Done()
		return nil, err
	}
	return c, nil
}

// dialStream is DialContext once it is counted; on error it has counted the
// stream's end under svc.
func (e *Entry) dialStream(ctx context.Context, run *entryRun, service serviceName, svc *ledger.Service) (*Conn, error) {
	log := e.log.With().Str("service", service.String()).Logger()
	for carries := 1; ; carries++ {
		o, err := e.attempt(ctx, log)
		if err != nil {
			e.books.Ended(svc, ledger.EndNoSession)
			return nil, fmt.Errorf("%w: %w", ErrNoSession, err)
		}
		status, msg, err := exchange(ctx, o.st, service)
		switch {
		case err != nil && o.refusedBeforeAccept(err) && carries < maxCarries:
			// The exit is going away; nothing reached it. Try the next
			// session.
			o.st.Close()
			e.done(o)
			continue
		case err != nil:
			o.st.Reset()
			o.st.Close()
			e.done(o)
			e.books.Ended(svc, ledger.EndAborted)
			if ctx.Err() != nil {
				return nil, fmt.Errorf("tunnel: dial %s: %w", service, ctx.Err())
			}
			if o.s.Sess.IsClosed() {
				return nil, fmt.Errorf("%w: the session was lost before the exit answered", ErrNoSession)
			}
			return nil, fmt.Errorf("tunnel: dial %s: no answer from the exit: %w", service, err)
		case status != StatusOK:
			o.st.Close()
			e.done(o)
			e.books.Ended(svc, statusLabel(status))
			ev := o.log.Warn().Int("status", int(status)).Str("status_text", status.String()).Str("reason", msg)
			if status == StatusRefused {
				ev = ev.Str("fingerprint", e.keeper.Fingerprint()) // for the operator who grants access
			}
			ev.Msg("the exit refused a stream dialed by the program")
			return nil, &StatusError{Service: service.wire(), Status: status, Message: msg}
		}
		return newConn(o.st, service, o.s.Fingerprint, "", svc.Moved(), func(c *Conn) {
			e.done(o)
			ev := o.log.Info()
			if c.aborted.Load() {
				e.books.Ended(svc, ledger.EndAborted)
				ev = o.log.Warn().Bool("aborted", true)
			} else {
				e.books.Ended(svc, ledger.EndOK)
			}
			run.dialed.Done()
			ev.Int64("bytes_to_backend", c.written.Load()).Int64("bytes_to_app", c.read.Load()).
				Str("duration", logfield.Duration(time.Since(o.start))).Msg("connection closed")
		}), nil
	}
}

// exchange sends the stream header for service on st and reads the exit's
// answer, until ctx is done.
func exchange(ctx context.Context, st *session.Stream, service serviceName) (Status, string, error) {
	if _, err := st.Write(streamHeader{service: service.wire()}.marshal()); err != nil {
		return 0, "", err
	}
	stop := context.AfterFunc(ctx, func() { st.SetReadDeadline(time.Now()) })
	status, msg, err := readStatus(st)
	if !stop() {
		return 0, "", ctx.Err() // the deadline is set, or about to be
	}
	return status, msg, err
}

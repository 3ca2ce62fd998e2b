package tunnel

// The Go API, exit side: a program that embeds an exit serves some of its
// services itself. Exit.Listen returns a net.Listener for a service; the
// exit then hands that service's streams to the program instead of
// dialing a backend.
//
//	stream header read, access rules checked (serveStream)
//	  -> serveLocal: queued in the Listener's backlog (full: status 4)
//	  -> Accept takes it, answers status 0, returns the *Conn
//	     (not taken within the dial timeout: status 4; Listener closed: 2)
//	  -> serveLocal waits until the Conn is over, then counts and logs it
//
// The stream goroutine of the session keeps the stream while the program
// has it, so that the session's stream limit and the drain count it as
// they count a stream forwarded to a backend. Until Accept, the stream is
// not read: what the application sends meanwhile waits in the stream's
// receive window, as it does while the exit dials a backend.

import (
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// acceptBacklog is how many streams may wait for a Listener's Accept; past
// it, new streams are answered busy.
const acceptBacklog = 128

// localServices are the services of an exit that Listeners serve, by wire
// name. A closed Listener stays until Listen replaces it, so that its
// service answers "unreachable" rather than "unknown". Safe for concurrent
// use.
type localServices struct {
	mu     sync.Mutex
	byName map[serviceName]*Listener
}

func (s *localServices) get(name serviceName) *Listener {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byName[name]
}

// Listener is a net.Listener for the streams to one service of an exit,
// which its Accept returns as *Conns. Exit.Listen makes one.
type Listener struct {
	name    serviceName
	count   *ledger.Service
	queue   chan *pendingStream
	done    chan struct{} // closed by Close
	closing sync.Once
}

// pendingStream is a stream waiting for Accept. Accept and the stream's
// goroutine race for it once: Accept by moving state to streamTaken, the
// goroutine, giving up, to streamWithdrawn.
type pendingStream struct {
	st          *session.Stream
	fingerprint string
	origin      string
	state       atomic.Int32
	taken       chan struct{} // closed by Accept once it has answered; then conn or err is set
	conn        *Conn
	err         error // of answering the status
}

const (
	streamPending = iota
	streamTaken
	streamWithdrawn
)

// Listen returns a Listener for the exit's service (its name; "" or
// config.DefaultService for the default service). From then on the exit
// hands the streams to that service to the program, which accepts them
// with the Listener's Accept, instead of dialing a backend; the service
// needs no backend in ExitSettings.Services, and must have none. Listen
// may be called before or while Serve runs, once per service while its
// Listener is open.
//
// The access rules of the settings (Access) apply to the service as to
// any: a key they do not admit is refused with status 3 and never reaches
// Accept. The exit answers status 0 when Accept returns the stream. A
// stream waits for Accept for up to the dial timeout, in a backlog of 128
// streams; a stream that finds the backlog full, or is not accepted in
// time, is answered status 4 (busy). After Close, the service's streams
// are answered status 2 (unreachable) until Listen is called again.
// Serve's end does not close the Listener.
func (e *Exit) Listen(service string) (*Listener, error) {
	name, err := parseServiceName(service)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen: %w", err)
	}
	return e.fwd.listen(name)
}

// listen makes the Listener of service name (Exit.Listen).
func (f *forwarder) listen(name serviceName) (*Listener, error) {
	if r := f.routes.byName[name]; r != nil {
		return nil, fmt.Errorf("tunnel: listen %s: the settings forward this service to %s: serve a service with a backend or with a Listener, not both", name, r.addr)
	}
	f.local.mu.Lock()
	defer f.local.mu.Unlock()
	if l := f.local.byName[name]; l != nil && !closed(l.done) {
		return nil, fmt.Errorf("tunnel: listen %s: the service has a Listener already: close it first", name)
	}
	l := &Listener{
		name:  name,
		count: f.books.Service(name.String()),
		queue: make(chan *pendingStream, f.backlog),
		done:  make(chan struct{}),
	}
	if f.local.byName == nil {
		f.local.byName = make(map[serviceName]*Listener)
	}
	f.local.byName[name] = l
	return l, nil
}

// Accept waits for the next stream to the Listener's service, answers it
// status 0 and returns it, a *Conn. After Close it returns an error that
// wraps net.ErrClosed.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		if closed(l.done) {
			return nil, &net.OpError{Op: "accept", Net: "tunnel", Addr: l.Addr(), Err: net.ErrClosed}
		}
		select {
		case p := <-l.queue:
			if c := l.take(p); c != nil {
				return c, nil
			}
		case <-l.done:
		}
	}
}

// take answers p status 0 and returns its Conn, unless its goroutine gave
// it up first or the answer fails (the stream is gone): then nil.
func (l *Listener) take(p *pendingStream) *Conn {
	if !p.state.CompareAndSwap(streamPending, streamTaken) {
		return nil
	}
	defer close(p.taken)
	if _, p.err = p.st.Write(marshalStatus(StatusOK, "")); p.err != nil {
		return nil
	}
	p.conn = newConn(p.st, l.name, p.fingerprint, p.origin, l.count.Moved(), nil)
	return p.conn
}

// Close stops the Listener: Accept returns, and the streams waiting for it
// and those that come later are answered status 2. The connections it
// accepted stay open.
func (l *Listener) Close() error {
	first := false
	l.closing.Do(func() {
		close(l.done)
		first = true
	})
	if !first {
		return &net.OpError{Op: "close", Net: "tunnel", Addr: l.Addr(), Err: net.ErrClosed}
	}
	for { // the streams' goroutines answer them; drop the references
		select {
		case <-l.queue:
		default:
			return nil
		}
	}
}

// Addr returns the Listener's service: network "tunnel", and the service's
// name as settings write it.
func (l *Listener) Addr() net.Addr { return serviceAddr{l.name} }

// serviceAddr is the address of a Listener: its service.
type serviceAddr struct{ name serviceName }

func (a serviceAddr) Network() string { return "tunnel" }
func (a serviceAddr) String() string  { return a.name.String() }

// serveLocal hands st, a stream to the service of l from peer, to the
// program, and waits until the program is done with it; see serveStream.
func (f *forwarder) serveLocal(hard <-chan struct{}, log zerolog.Logger, st *session.Stream, peer streamPeer, origin string, l *Listener) (Status, string) {
	svc := l.count
	display := l.name.String()
	if !peer.access.allows(l.name, peer.fingerprint) {
		msg := policyRefusal(peer.fingerprint, display)
		f.books.Refused(svc, statusLabel(StatusRefused))
		logRefusal(log, StatusRefused, msg, nil)
		return StatusRefused, msg
	}
	f.books.Began(svc)
	// fail ends the stream, which began, with s.
	fail := func(s Status, msg string) (Status, string) {
		f.books.Ended(svc, statusLabel(s))
		logRefusal(log, s, msg, nil)
		return s, msg
	}
	start := time.Now()
	p := &pendingStream{st: st, fingerprint: peer.fingerprint, origin: origin, taken: make(chan struct{})}
	unreachable := fmt.Sprintf("service %q: the program serving it has closed its listener", display)
	if closed(l.done) {
		return fail(StatusUnreachable, unreachable)
	}
	select {
	case l.queue <- p:
	default:
		return fail(StatusBusy, fmt.Sprintf("service %q: %d streams are waiting for the program to accept them; retry later", display, cap(l.queue)))
	}

	timer := time.NewTimer(f.dialTimeout)
	defer timer.Stop()
	var status Status
	var msg string
	select {
	case <-p.taken:
	case <-timer.C:
		status, msg = StatusBusy, fmt.Sprintf("service %q: the program did not accept the stream within %v", display, f.dialTimeout)
	case <-l.done:
		status, msg = StatusUnreachable, unreachable
	case <-hard:
		status, msg = StatusUnreachable, "the exit is shutting down"
	case <-st.Session().Done():
		status, msg = StatusUnreachable, "the session is closing"
	}
	if status != StatusOK {
		if p.state.CompareAndSwap(streamPending, streamWithdrawn) {
			return fail(status, msg)
		}
		<-p.taken // Accept took it meanwhile
	}
	if p.err != nil {
		log.Warn().Err(p.err).Msg("stream lost before the status was sent")
		f.books.Ended(svc, ledger.EndAborted)
		return StatusOK, ""
	}
	c := p.conn
	select {
	case <-c.done:
	case <-st.Session().Done(): // the program may still hold c; its calls fail
	}
	aborted := c.aborted.Load() || !closed(c.done)
	ev := log.Info()
	if aborted {
		f.books.Ended(svc, ledger.EndAborted)
		ev = log.Warn().Bool("aborted", true)
	} else {
		f.books.Ended(svc, ledger.EndOK)
	}
	ev.Int64("bytes_to_backend", c.read.Load()).Int64("bytes_to_app", c.written.Load()).
		Str("duration", logfield.Duration(time.Since(start))).Msg("stream closed")
	return StatusOK, ""
}

// visible lists the services that peer may reach, as settings name them:
// those the exit forwards, then those Listeners serve.
func (f *forwarder) visible(peer streamPeer) []string {
	out := peer.access.visible(f.routes, peer.fingerprint)
	f.local.mu.Lock()
	defer f.local.mu.Unlock()
	var local []string
	for name := range f.local.byName {
		if peer.access.allows(name, peer.fingerprint) {
			local = append(local, name.String())
		}
	}
	slices.Sort(local)
	return append(out, local...)
}

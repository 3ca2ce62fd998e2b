// Package ledger is an agent's one accounting sink. Every begin and end of
// a connection the agent carries, every stream on the wire, every session
// up and down and every handshake's outcome is recorded here once, by one
// call; /status (Stats) and /metrics (NewRegistry) both read these numbers.
//
// A carried connection (an application's on the entry, a stream to a
// service on the exit) is counted under its service from Began to Ended;
// one refused before it began is counted by Refused alone. Streams on the
// wire (StreamOpened, StreamClosed) are the entry's attempts and the
// exit's accepted streams, whatever became of them.
//
// Files: ledger.go (the counts, and how a stream ended), service.go (one
// service's counters and the bytes its relays add), registry.go (the live
// sessions, by peer), stats.go (the counters as /status shows them),
// metrics.go (the Prometheus collector over them).
package ledger

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// Roles of an agent, as New takes them and /status and the build-info
// metric name them.
const (
	Entry = "entry"
	Exit  = "exit"
)

// Ledger is one agent's counts. Safe for concurrent use.
type Ledger struct {
	role     string
	sessions registry

	streams, streamsTotal atomic.Int64 // streams on the wire: open now, since start

	handshakes [numHSResults]atomic.Int64
	hsDuration prometheus.Histogram // completed handshakes
	hsFailures atomic.Int64         // handshakes begun that failed
	hsRefused  atomic.Int64         // exit: refused before or during the handshake for load (busy, rate, pending)

	// resumptions of sessions whose connection broke: done, and refused
	// (the entry then makes a new session; the exit did not know the one
	// asked for)
	resumed, resumeRefused atomic.Int64

	// entry only
	dialFailures, hsRejections, hsTimeouts atomic.Int64
	recycled                               atomic.Int64 // sessions replaced after their share of streams
	made                                   atomic.Int64 // sessions made after none was up

	// exit only
	dialErrors atomic.Int64         // backend dials that failed
	dialTime   prometheus.Histogram // backend dials, failed or not

	// services: connections and bytes by service, sorted by name
	// (service.go). A connection keeps its service's pointer.
	svcMu         sync.Mutex
	services      []*Service
	connIsBackend bool // exit: a relay's conn is the backend's (else the application's)
}

// New returns the ledger of an agent in role (Entry or Exit).
func New(role string) *Ledger {
	l := &Ledger{
		role: role,
		hsDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tunnel_handshake_duration_seconds",
			Help:    "Duration of completed handshakes, from the first byte to the session's keys.",
			Buckets: []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	if role == Exit {
		l.connIsBackend = true
		l.Service("") // streams naming none of the exit's services
		l.dialTime = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tunnel_backend_dial_duration_seconds",
			Help:    "Duration of the exit's dials to its backend, failed or not.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		})
	}
	return l
}

// End is how a stream ended, the status label of tunnel_streams_total:
// the exit's answer, or one of the ends that are not an answer.
type End int

// EndOK through EndBusy are the exit's stream statuses (PROTOCOL.md
// section 4) in their wire order, so a status up to busy is its End by
// value; a status past busy ends as EndOther.
const (
	EndOK End = iota
	EndUnknownService
	EndUnreachable
	EndRefused
	EndBusy
	EndAborted   // carried, then cut: a reset, or the session was lost
	EndNoSession // entry: no session to open it on
	EndOther     // a status this build does not know
	numEnds
)

var endNames = [numEnds]string{
	"ok", "unknown_service", "unreachable", "refused", "busy", "aborted", "no_session", "other",
}

// String is e's label value.
func (e End) String() string {
	if e < 0 || e >= numEnds {
		return endNames[EndOther]
	}
	return endNames[e]
}

// Began counts a connection of service svc that is carried from now on.
func (l *Ledger) Began(svc *Service) {
	svc.open.Add(1)
	svc.total.Add(1)
}

// Ended counts the end of a connection of svc that began.
func (l *Ledger) Ended(svc *Service, e End) {
	svc.open.Add(-1)
	svc.ended[e].Add(1)
}

// Refused counts a stream of svc that was refused, with e, before it
// began.
func (l *Ledger) Refused(svc *Service, e End) { svc.ended[e].Add(1) }

// StreamOpened and StreamClosed count the streams on the wire.
func (l *Ledger) StreamOpened() {
	l.streams.Add(1)
	l.streamsTotal.Add(1)
}

func (l *Ledger) StreamClosed() { l.streams.Add(-1) }

// SessionUp counts a completed handshake of duration d and registers its
// session, of the peer with fingerprint fp, until it ends. Every session a
// handshake made must be passed here.
func (l *Ledger) SessionUp(sess *session.Session, fp string, d time.Duration) {
	l.handshakes[hsOK].Add(1)
	l.hsDuration.Observe(d.Seconds())
	l.sessions.add(sess, fp)
}

// HandshakeFailed counts a handshake that began and failed with err, and
// returns how handshake names it. On the exit a busy responder is a
// refusal for load, not a failure.
func (l *Ledger) HandshakeFailed(err error, initiator bool) handshake.Failure {
	l.handshakes[classifyHandshake(err, initiator)].Add(1)
	f := handshake.Classify(err)
	if !initiator && f == handshake.FailBusy {
		l.hsRefused.Add(1)
		return f
	}
	l.hsFailures.Add(1)
	if initiator {
		switch {
		case f == handshake.FailTimeout:
			l.hsTimeouts.Add(1)
		case f.Refused():
			l.hsRejections.Add(1)
		}
	}
	return f
}

// HandshakeRefused counts a connection the exit refused before any
// handshake work: over the per-source rate or cap, or the pending gate.
func (l *Ledger) HandshakeRefused() {
	l.hsRefused.Add(1)
	l.handshakes[hsRateLimited].Add(1)
}

// DialFailed counts an entry's TCP dial to an exit that failed (no
// handshake began).
func (l *Ledger) DialFailed() { l.dialFailures.Add(1) }

// SessionMade counts a session the entry made while none was up: the
// first, and every one after a session was lost or its exit went away.
func (l *Ledger) SessionMade() { l.made.Add(1) }

// Reconnects is how many sessions the entry made again after it had none:
// the sessions SessionMade counted, less the first.
func (l *Ledger) Reconnects() int64 { return max(0, l.made.Load()-1) }

// SessionRecycled counts an entry's session replaced, as planned, after
// its share of streams.
func (l *Ledger) SessionRecycled() { l.recycled.Add(1) }

// Resumed counts a session continued on a new connection after its own
// broke.
func (l *Ledger) Resumed() { l.resumed.Add(1) }

// ResumeRefused counts a resumption refused: on the entry, the exit did
// not know the session; on the exit, a parked session closed past its
// bounds.
func (l *Ledger) ResumeRefused() { l.resumeRefused.Add(1) }

// BackendDial counts one dial to the backend that took d.
func (l *Ledger) BackendDial(d time.Duration, err error) {
	l.dialTime.Observe(d.Seconds())
	if err != nil {
		l.dialErrors.Add(1)
	}
}

// Service returns the counters of the service called name (as settings
// name it), made on first use. It is called as listeners and services are
// set up, never with a name read from the wire.
func (l *Ledger) Service(name string) *Service {
	l.svcMu.Lock()
	defer l.svcMu.Unlock()
	i := slices.IndexFunc(l.services, func(c *Service) bool { return c.name == name })
	if i >= 0 {
		return l.services[i]
	}
	c := &Service{name: name}
	c.moved = Tally{FromConn: &c.toBackend, ToConn: &c.toApp} // conn is the application's
	if l.connIsBackend {
		c.moved = Tally{FromConn: &c.toApp, ToConn: &c.toBackend}
	}
	l.services = append(l.services, c)
	sort.Slice(l.services, func(i, j int) bool { return l.services[i].name < l.services[j].name })
	return c
}

// serviceList returns the counters of every service, sorted by name.
func (l *Ledger) serviceList() []*Service {
	l.svcMu.Lock()
	defer l.svcMu.Unlock()
	return slices.Clone(l.services)
}

// SessionsExcept lists the live sessions of the peers not in keep (by
// fingerprint): for a reload that removed their keys.
func (l *Ledger) SessionsExcept(keep map[string]bool) []*session.Session {
	return l.sessions.except(keep)
}

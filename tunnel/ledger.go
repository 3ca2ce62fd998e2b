package tunnel

// The ledger: an agent's one accounting sink. Every begin and end of a
// connection it carries, every stream on the wire, every session up and
// down and every handshake's outcome is recorded here once, by one call;
// /status (Stats) and /metrics (metrics.go) both read these numbers.
//
// A carried connection (an application's on the entry, a stream to a
// service on the exit) is counted under its service from began to ended;
// one refused before it began is counted by refused alone. Streams on the
// wire (streamOpened, streamClosed) are the entry's attempts and the
// exit's accepted streams, whatever became of them.

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// ledger is safe for concurrent use.
type ledger struct {
	role     string
	sessions sessionRegistry

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
	// (services.go). A connection keeps its service's pointer.
	svcMu         sync.Mutex
	services      []*serviceCounters
	connIsBackend bool // exit: a relay's conn is the backend's (else the application's)
}

func newLedger(role string) *ledger {
	l := &ledger{
		role: role,
		hsDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tunnel_handshake_duration_seconds",
			Help:    "Duration of completed handshakes, from the first byte to the session's keys.",
			Buckets: []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	if role == "exit" {
		l.connIsBackend = true
		l.service("") // streams naming none of the exit's services
		l.dialTime = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tunnel_backend_dial_duration_seconds",
			Help:    "Duration of the exit's dials to its backend, failed or not.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		})
	}
	return l
}

// began counts a connection of service svc that is carried from now on.
func (l *ledger) began(svc *serviceCounters) {
	svc.open.Add(1)
	svc.total.Add(1)
}

// ended counts the end of a connection of svc that began, with label (a
// stream label: the exit's status, aborted, no_session).
func (l *ledger) ended(svc *serviceCounters, label int) {
	svc.open.Add(-1)
	svc.ended[label].Add(1)
}

// refused counts a stream of svc that was refused before it began.
func (l *ledger) refused(svc *serviceCounters, s Status) { svc.ended[statusLabel(s)].Add(1) }

// streamOpened and streamClosed count the streams on the wire.
func (l *ledger) streamOpened() {
	l.streams.Add(1)
	l.streamsTotal.Add(1)
}

func (l *ledger) streamClosed() { l.streams.Add(-1) }

// sessionUp counts a completed handshake of duration d and registers its
// session, of the peer with fingerprint fp, until it ends. Every session a
// handshake made must be passed here.
func (l *ledger) sessionUp(sess *session.Session, fp string, d time.Duration) {
	l.handshakes[hsOK].Add(1)
	l.hsDuration.Observe(d.Seconds())
	l.sessions.add(sess, fp)
}

// handshakeFailed counts a handshake that began and failed with err, and
// returns how handshake names it. On the exit a busy responder is a
// refusal for load, not a failure.
func (l *ledger) handshakeFailed(err error, initiator bool) handshake.Failure {
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

// handshakeRefused counts a connection the exit refused before any
// handshake work: over the per-source rate or cap, or the pending gate.
func (l *ledger) handshakeRefused() {
	l.hsRefused.Add(1)
	l.handshakes[hsRateLimited].Add(1)
}

// backendDial counts one dial to the backend that took d.
func (l *ledger) backendDial(d time.Duration, err error) {
	l.dialTime.Observe(d.Seconds())
	if err != nil {
		l.dialErrors.Add(1)
	}
}

// service returns the counters of the service called name (as settings
// name it), made on first use. It is called as listeners and services are
// set up, never with a name read from the wire.
func (l *ledger) service(name string) *serviceCounters {
	l.svcMu.Lock()
	defer l.svcMu.Unlock()
	i := slices.IndexFunc(l.services, func(c *serviceCounters) bool { return c.name == name })
	if i >= 0 {
		return l.services[i]
	}
	c := &serviceCounters{name: name}
	c.moved = tally{fromConn: &c.toBackend, toConn: &c.toApp} // conn is the application's
	if l.connIsBackend {
		c.moved = tally{fromConn: &c.toApp, toConn: &c.toBackend}
	}
	l.services = append(l.services, c)
	sort.Slice(l.services, func(i, j int) bool { return l.services[i].name < l.services[j].name })
	return c
}

// serviceList returns the counters of every service, sorted by name.
func (l *ledger) serviceList() []*serviceCounters {
	l.svcMu.Lock()
	defer l.svcMu.Unlock()
	return slices.Clone(l.services)
}

// stats returns the counters as /status shows them.
func (l *ledger) stats() Stats {
	st := processStats()
	st.Role = l.role
	st.Sessions = int64(l.sessions.count())
	st.Streams, st.StreamsTotal = l.streams.Load(), l.streamsTotal.Load()
	st.HandshakeFailures, st.HandshakesRefused = l.hsFailures.Load(), l.hsRefused.Load()
	st.DialFailures, st.HandshakeRejections = l.dialFailures.Load(), l.hsRejections.Load()
	st.HandshakeTimeouts, st.SessionsRecycled = l.hsTimeouts.Load(), l.recycled.Load()
	st.Resumptions, st.ResumptionsRefused = l.resumed.Load(), l.resumeRefused.Load()
	v := l.sessions.view()
	st.SessionsParked, st.BytesResent = int64(v.parked), v.resent
	st.Services = map[string]ServiceStats{}
	for _, c := range l.serviceList() {
		if c.name != "" {
			st.Services[c.name] = c.stats()
		}
	}
	return st
}

// Labels of a connection's end.

// statusLabel is the label of the exit's answer s; those past StatusBusy
// count as "other".
func statusLabel(s Status) int {
	if s <= StatusBusy {
		return int(s)
	}
	return streamOther
}

// resultLabel is the label of a carried connection that ended with res.
func resultLabel(res relay.Result) int {
	if res.Aborted() {
		return streamAborted
	}
	return int(StatusOK)
}

// endLabel is the label of an entry's connection whose stream the exit
// answered with s and that ended with res.
func endLabel(s Status, res relay.Result) int {
	if s != StatusOK {
		return statusLabel(s)
	}
	return resultLabel(res)
}

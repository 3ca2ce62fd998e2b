package tunnel

// Prometheus metrics. Each agent owns one prometheus.Registry, made in its
// constructor (never the default registry) and served by the status
// endpoint at /metrics.
//
// What changes often is counted in atomics (an agent's counters, the
// arrays below, the record layer's own counts) and read by metrics.Collect
// at scrape time; the two histograms are observed once per handshake and
// once per backend dial. The one count made per chunk is of application
// bytes: forward adds each chunk it copies to the agent's counter of its
// direction (one atomic add, see tally; nothing that locks or allocates),
// so a stream that lives for hours shows its traffic as it flows.
//
// Labels come from small, known sets: results, statuses, outcomes and
// directions named below; service, which is one of the agent's services
// as its settings name them (services.go), never a name read from the
// wire; and peer_fingerprint, which is only ever an authenticated peer's
// (an authorized key on the exit, the pinned key on the entry). No label
// carries an address.

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tunnel-dev/tunnel/frame"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// hsResult is a handshake's result, the label of tunnel_handshakes_total.
type hsResult int

const (
	hsOK hsResult = iota
	hsUnknownKey
	hsPinnedKeyMismatch
	hsBadSignature
	hsBusy
	hsRateLimited
	hsTimeout
	hsProtocolError
	hsOther
	numHSResults
)

var hsResultNames = [numHSResults]string{
	"ok", "unknown_key", "pinned_key_mismatch", "bad_signature", "busy",
	"rate_limited", "timeout", "protocol_error", "other",
}

// classifyHandshake names a failed handshake's result. On the initiator (the
// entry) an unknown key is the exit's ALERT about our key; the same error
// raised here means the exit's key is not the pinned one.
func classifyHandshake(err error, initiator bool) hsResult {
	switch handshake.Classify(err) {
	case handshake.FailBusy:
		return hsBusy
	case handshake.FailTimeout:
		return hsTimeout
	case handshake.FailUnknownKey:
		if initiator && !handshake.ByPeer(err) {
			return hsPinnedKeyMismatch
		}
		return hsUnknownKey
	case handshake.FailBadSignature:
		return hsBadSignature
	case handshake.FailProtocol, handshake.FailIncompatible, handshake.FailDecrypt,
		handshake.FailStale, handshake.FailDowngrade:
		return hsProtocolError
	}
	return hsOther
}

// Stream statuses as labels: the exit's answer (Status), and two ends that
// are not an answer. Status values past StatusBusy count as "other".
const (
	streamAborted   = int(StatusBusy) + 1 + iota // carried, then cut: a reset, or the session was lost
	streamNoSession                              // entry: no session to open it on
	streamOther                                  // a status this build does not know
	numStreamLabels
)

var streamLabelNames = [numStreamLabels]string{
	"ok", "unknown_service", "unreachable", "refused", "busy", "aborted", "no_session", "other",
}

// outcomeNames label session.Outcome values.
var outcomeNames = [session.NumOutcomes]string{"closed_locally", "closed_by_peer", "cut", "error"}

// liveSession is a session that metrics watches until it closes.
type liveSession struct {
	sess        *session.Session
	fingerprint string
}

// peerTotals are what the sessions of one peer that have ended add up to.
type peerTotals struct {
	outcomes [session.NumOutcomes]int64
	records  frame.Stats
}

// addStats adds the counts of b to a.
func addStats(a *frame.Stats, b frame.Stats) {
	a.RecordsSent += b.RecordsSent
	a.RecordsReceived += b.RecordsReceived
	a.KeyUpdatesSent += b.KeyUpdatesSent
	a.KeyUpdatesReceived += b.KeyUpdatesReceived
}

// metricSet is an agent's registry and what feeds it. It also knows the
// live sessions by peer, which a reload that removes a key needs. Safe for
// concurrent use.
type metricSet struct {
	reg   *prometheus.Registry
	count *counters // the agent's

	handshakes [numHSResults]atomic.Int64
	hsDuration prometheus.Histogram // completed handshakes

	// services: streams and bytes by service, sorted by name
	// (services.go). A stream keeps its service's pointer.
	svcMu         sync.Mutex
	services      []*serviceCounters
	connIsBackend bool                 // exit: forward's conn is the backend's (else the application's)
	dialErrors    atomic.Int64         // exit: backend dials that failed
	dialTime      prometheus.Histogram // exit: backend dials, failed or not
	connected     atomic.Int64         // entry: sessions made after none was up

	mu    sync.Mutex
	live  map[*session.Session]liveSession
	ended map[string]*peerTotals // by peer fingerprint: authorized keys only

	descs map[string]*prometheus.Desc
}

// newMetrics makes the registry of an agent in role ("entry" or "exit")
// whose counters are count, and registers the agent's metrics, the Go
// runtime's and the process's on it.
func newMetrics(role, version string, count *counters) *metricSet {
	m := &metricSet{
		reg:   prometheus.NewRegistry(),
		count: count,
		hsDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tunnel_handshake_duration_seconds",
			Help:    "Duration of completed handshakes, from the first byte to the session's keys.",
			Buckets: []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		live:  make(map[*session.Session]liveSession),
		ended: make(map[string]*peerTotals),
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	m.descs = map[string]*prometheus.Desc{
		"build":      prometheus.NewDesc("tunnel_build_info", "Always 1; the labels say which build runs in which role.", nil, prometheus.Labels{"version": version, "role": role}),
		"sessions":   desc("tunnel_sessions", "Sessions up now, by peer.", "peer_fingerprint"),
		"closed":     desc("tunnel_sessions_closed_total", "Sessions that have ended, by peer and by how: closed_locally (drain, replacement, keepalive timeout, limits), closed_by_peer (CLOSE received), cut (no CLOSE: data may be truncated), error (a record failed).", "peer_fingerprint", "outcome"),
		"handshakes": desc("tunnel_handshakes_total", "Handshakes by result (ok, unknown_key, pinned_key_mismatch, bad_signature, busy, rate_limited, timeout, protocol_error, other).", "result"),
		"streams":    desc("tunnel_streams", "Streams open now, by service.", "service"),
		"streamsEnd": desc("tunnel_streams_total", "Streams that have ended, by service and status: the exit's answer (ok, unknown_service, unreachable, refused, busy), aborted (cut after it was carried), no_session (entry: nothing to open it on), other. The exit counts a stream that names none of its services, or that it refused before reading its header, under service \"\".", "service", "status"),
		"bytes":      desc("tunnel_bytes_total", "Application bytes carried by streams, by service and direction (to_backend, to_app), counted as they move.", "service", "direction"),
		"records":    desc("tunnel_records_total", "Records sent and received on every session, control records included.", "direction"),
		"keyUpdates": desc("tunnel_key_updates_total", "KEY_UPDATE records sent and received on every session: each is a change of one direction's traffic key.", "direction"),
	}
	if role == "exit" {
		m.connIsBackend = true
		m.service("") // streams naming none of the exit's services
		m.dialTime = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tunnel_backend_dial_duration_seconds",
			Help:    "Duration of the exit's dials to its backend, failed or not.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		})
		m.descs["dialErrors"] = desc("tunnel_backend_dial_errors_total", "The exit's dials to its backend that failed.")
		m.reg.MustRegister(m.dialTime)
	} else {
		m.descs["reconnects"] = desc("tunnel_entry_reconnects_total", "Sessions the entry made again after it had none (lost, or the exit went away); planned replacements are not counted.")
	}
	m.reg.MustRegister(m, m.hsDuration,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Metrics returns the exit's registry, which the status endpoint serves.
func (e *Exit) Metrics() *prometheus.Registry { return e.met.reg }

// Metrics returns the entry's registry, which the status endpoint serves.
func (e *Entry) Metrics() *prometheus.Registry { return e.met.reg }

// Describe sends the descriptions of the metrics Collect makes.
func (m *metricSet) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.descs {
		ch <- d
	}
}

// Collect reads the counters and the live sessions.
func (m *metricSet) Collect(ch chan<- prometheus.Metric) {
	c := func(name string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(m.descs[name], prometheus.CounterValue, v, labels...)
	}
	g := func(name string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(m.descs[name], prometheus.GaugeValue, v, labels...)
	}
	g("build", 1)
	for i := range m.handshakes {
		c("handshakes", float64(m.handshakes[i].Load()), hsResultNames[i])
	}
	for _, s := range m.serviceList() {
		g("streams", float64(s.open.Load()), s.name)
		for i := range s.ended {
			c("streamsEnd", float64(s.ended[i].Load()), s.name, streamLabelNames[i])
		}
		c("bytes", float64(s.toBackend.Load()), s.name, "to_backend")
		c("bytes", float64(s.toApp.Load()), s.name, "to_app")
	}
	if m.dialTime != nil {
		c("dialErrors", float64(m.dialErrors.Load()))
	} else {
		c("reconnects", float64(max(0, m.connected.Load()-1)))
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	up := make(map[string]int)
	var rec frame.Stats
	for _, s := range m.live {
		up[s.fingerprint]++
		addStats(&rec, s.sess.Stats())
	}
	for fp, n := range up {
		g("sessions", float64(n), fp)
	}
	for fp, t := range m.ended {
		if up[fp] == 0 {
			g("sessions", 0, fp)
		}
		for o, n := range t.outcomes {
			c("closed", float64(n), fp, outcomeNames[o])
		}
		addStats(&rec, t.records)
	}
	c("records", float64(rec.RecordsSent), "sent")
	c("records", float64(rec.RecordsReceived), "received")
	c("keyUpdates", float64(rec.KeyUpdatesSent), "sent")
	c("keyUpdates", float64(rec.KeyUpdatesReceived), "received")
}

// handshakeRateLimited counts a handshake refused before it began: over
// the per-source rate or cap.
func (m *metricSet) handshakeRateLimited() { m.handshakes[hsRateLimited].Add(1) }

// handshakeFailed counts a failed handshake.
func (m *metricSet) handshakeFailed(err error, initiator bool) {
	m.handshakes[classifyHandshake(err, initiator)].Add(1)
}

// sessionUp counts a completed handshake and watches its session, of the
// peer with this fingerprint, until mux closes (a goroutine waits for that;
// it ends with the session). Every session a handshake made must be passed
// here, so that its records are counted.
func (m *metricSet) sessionUp(sess *session.Session, fingerprint string, handshake time.Duration) {
	m.handshakes[hsOK].Add(1)
	m.hsDuration.Observe(handshake.Seconds())
	m.mu.Lock()
	m.live[sess] = liveSession{sess: sess, fingerprint: fingerprint}
	m.mu.Unlock()
	go func() {
		<-sess.Done()
		m.sessionDown(sess)
	}()
}

// sessionsExcept lists the live sessions of the peers not in keep (by
// fingerprint): for a reload that removed their keys.
func (m *metricSet) sessionsExcept(keep map[string]bool) []*session.Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*session.Session
	for mux, s := range m.live {
		if !keep[s.fingerprint] {
			out = append(out, mux)
		}
	}
	return out
}

// sessionDown moves a closed session from the live set into its peer's
// totals.
func (m *metricSet) sessionDown(sess *session.Session) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.live[sess]
	delete(m.live, sess)
	t := m.ended[s.fingerprint]
	if t == nil {
		t = new(peerTotals)
		m.ended[s.fingerprint] = t
	}
	t.outcomes[s.sess.Outcome()]++
	addStats(&t.records, s.sess.Stats())
}

// streamEnded counts a stream of service svc that was carried and has
// ended with f. Its bytes were counted as forward copied them, so a scrape
// that sees the stream ended sees its bytes.
func (m *metricSet) streamEnded(svc *serviceCounters, res relay.Result) {
	label := int(StatusOK)
	if res.Aborted() {
		label = streamAborted
	}
	svc.ended[label].Add(1)
}

// streamNoSession counts an application connection for service svc that
// the entry could not open a stream for.
func (m *metricSet) streamNoSession(svc *serviceCounters) { svc.ended[streamNoSession].Add(1) }

// streamRefused counts a stream for service svc that the exit refused with
// s.
func (m *metricSet) streamRefused(svc *serviceCounters, s Status) {
	label := streamOther
	if s <= StatusBusy {
		label = int(s)
	}
	svc.ended[label].Add(1)
}

// streamDone counts an entry's stream for service svc that has ended with
// the exit's status s and f.
func (m *metricSet) streamDone(svc *serviceCounters, s Status, res relay.Result) {
	if s != StatusOK {
		m.streamRefused(svc, s)
		return
	}
	m.streamEnded(svc, res)
}

// backendDial counts one dial to the backend that took d.
func (m *metricSet) backendDial(d time.Duration, err error) {
	m.dialTime.Observe(d.Seconds())
	if err != nil {
		m.dialErrors.Add(1)
	}
}

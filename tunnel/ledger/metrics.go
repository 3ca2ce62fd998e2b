package ledger

// Prometheus metrics. Each agent owns one prometheus.Registry, made in its
// constructor (never the default registry) and served by the status
// endpoint at /metrics.
//
// Every number is the agent's Ledger's, counted in atomics and
// read by Collect at scrape time, as /status reads them; the two histograms
// are observed once per handshake and once per backend dial. The one count
// made per chunk is of application bytes: a relay adds each chunk it copies
// to its service's counter of its direction (one atomic add, see Tally), so a stream that lives for hours shows
// its traffic as it flows.
//
// Labels come from small, known sets: results, statuses, outcomes and
// directions named below; service, which is one of the agent's services
// as its settings name them (Service), never a name read from the
// wire; and peer_fingerprint, which is only ever an authenticated peer's
// (an authorized key on the exit, the pinned key on the entry). No label
// carries an address.

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/tunnel-dev/tunnel/handshake"
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

// HandshakeResult is the result label of tunnel_handshakes_total under
// which HandshakeFailed counts a handshake that failed with err.
func HandshakeResult(err error, initiator bool) string {
	return hsResultNames[classifyHandshake(err, initiator)]
}

// outcomeNames label session.Outcome values.
var outcomeNames = [session.NumOutcomes]string{"closed_locally", "closed_by_peer", "cut", "error"}

// collector reads a ledger at scrape time.
type collector struct {
	l     *Ledger
	descs map[string]*prometheus.Desc
}

// NewRegistry makes the Prometheus registry of an agent of this version
// whose numbers are l's, and registers the agent's metrics, the Go
// runtime's and the process's on it. The agent serves it at /metrics.
func NewRegistry(version string, l *Ledger) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	m := &collector{l: l}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	m.descs = map[string]*prometheus.Desc{
		"build":      prometheus.NewDesc("tunnel_build_info", "Always 1; the labels say which build runs in which role.", nil, prometheus.Labels{"version": version, "role": l.role}),
		"sessions":   desc("tunnel_sessions", "Sessions up now, by peer.", "peer_fingerprint"),
		"closed":     desc("tunnel_sessions_closed_total", "Sessions that have ended, by peer and by how: closed_locally (drain, replacement, keepalive timeout, limits), closed_by_peer (CLOSE received), cut (no CLOSE: data may be truncated), error (a record failed).", "peer_fingerprint", "outcome"),
		"handshakes": desc("tunnel_handshakes_total", "Handshakes by result (ok, unknown_key, pinned_key_mismatch, bad_signature, busy, rate_limited, timeout, protocol_error, other).", "result"),
		"streams":    desc("tunnel_streams", "Streams open now, by service.", "service"),
		"streamsEnd": desc("tunnel_streams_total", "Streams that have ended, by service and status: the exit's answer (ok, unknown_service, unreachable, refused, busy), aborted (cut after it was carried), no_session (entry: nothing to open it on), other. The exit counts a stream that names none of its services, or that it refused before reading its header, under service \"\".", "service", "status"),
		"bytes":      desc("tunnel_bytes_total", "Application bytes carried by streams, by service and direction (to_backend, to_app), counted as they move.", "service", "direction"),
		"records":    desc("tunnel_records_total", "Records sent and received on every session, control records included.", "direction"),
		"keyUpdates": desc("tunnel_key_updates_total", "KEY_UPDATE records sent and received on every session: each is a change of one direction's traffic key.", "direction"),
		"resumes":    desc("tunnel_session_resumptions_total", "Sessions continued on a new connection after theirs broke (resumed), and resumptions refused (entry: the exit no longer knew the session, so its connections were reset; exit: a parked session closed past the exit's bounds).", "result"),
		"parked":     desc("tunnel_sessions_parked", "Sessions whose connection broke, waiting for a new one within the resumption window."),
		"resent":     desc("tunnel_resent_bytes_total", "Bytes sent again on a resumed session's new connection: what the peer had not received when the old one broke."),
	}
	if l.dialTime != nil {
		m.descs["dialErrors"] = desc("tunnel_backend_dial_errors_total", "The exit's dials to its backend that failed.")
		reg.MustRegister(l.dialTime)
	} else {
		m.descs["reconnects"] = desc("tunnel_entry_reconnects_total", "Sessions the entry made again after it had none (lost, or the exit went away); planned replacements are not counted.")
	}
	reg.MustRegister(m, l.hsDuration,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Describe sends the descriptions of the metrics Collect makes.
func (m *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.descs {
		ch <- d
	}
}

// Collect reads the counters and the live sessions.
func (m *collector) Collect(ch chan<- prometheus.Metric) {
	c := func(name string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(m.descs[name], prometheus.CounterValue, v, labels...)
	}
	g := func(name string, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(m.descs[name], prometheus.GaugeValue, v, labels...)
	}
	g("build", 1)
	l := m.l
	for i := range l.handshakes {
		c("handshakes", float64(l.handshakes[i].Load()), hsResultNames[i])
	}
	for _, s := range l.serviceList() {
		g("streams", float64(s.open.Load()), s.name)
		for i := range s.ended {
			c("streamsEnd", float64(s.ended[i].Load()), s.name, endNames[i])
		}
		c("bytes", float64(s.toBackend.Load()), s.name, "to_backend")
		c("bytes", float64(s.toApp.Load()), s.name, "to_app")
	}
	if l.dialTime != nil {
		c("dialErrors", float64(l.dialErrors.Load()))
	} else {
		c("reconnects", float64(l.Reconnects()))
	}

	v := l.sessions.view()
	for fp, n := range v.up {
		g("sessions", float64(n), fp)
	}
	for fp, t := range v.ended {
		if v.up[fp] == 0 {
			g("sessions", 0, fp)
		}
		for o, n := range t.outcomes {
			c("closed", float64(n), fp, outcomeNames[o])
		}
	}
	c("records", float64(v.records.RecordsSent), "sent")
	c("records", float64(v.records.RecordsReceived), "received")
	c("keyUpdates", float64(v.records.KeyUpdatesSent), "sent")
	c("keyUpdates", float64(v.records.KeyUpdatesReceived), "received")
	c("resumes", float64(l.resumed.Load()), "resumed")
	c("resumes", float64(l.resumeRefused.Load()), "refused")
	g("parked", float64(v.parked))
	c("resent", float64(v.resent))
}

package ledger

import (
	"errors"
	"testing"
	"time"
)

// gather returns the value of every series of l's registry, by name and labels
// (name{label=value,...}, labels in the order the registry gives them).
func gather(t *testing.T, l *Ledger) map[string]float64 {
	t.Helper()
	mfs, err := NewRegistry("test", l).Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + "{"
			for i, lp := range m.GetLabel() {
				if i > 0 {
					key += ","
				}
				key += lp.GetName() + "=" + lp.GetValue()
			}
			key += "}"
			// a counter's or a gauge's value; a histogram's count
			out[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return out
}

// TestOneSink records a service's streams and an exit's dials once, and
// finds the same numbers in Stats and in the metrics.
func TestOneSink(t *testing.T) {
	l := New(Exit)
	svc := l.Service("web")
	if l.Service("web") != svc {
		t.Fatal("a second Service call for the same name made new counters")
	}
	for range 3 {
		l.Began(svc)
	}
	l.Ended(svc, EndOK)
	l.Ended(svc, EndAborted)
	l.Refused(svc, EndBusy)
	l.Refused(l.Service(""), EndUnknownService)
	svc.Moved().FromConn.Add(7) // the exit's conn is the backend's
	svc.Moved().ToConn.Add(11)
	l.StreamOpened()
	l.StreamOpened()
	l.StreamClosed()
	l.BackendDial(time.Millisecond, nil)
	l.BackendDial(time.Millisecond, errors.New("refused"))
	l.HandshakeRefused()

	st := l.Stats()
	want := ServiceStats{Streams: 1, StreamsTotal: 3, StreamsRefused: 1, BytesToBackend: 11, BytesToApp: 7}
	if got := st.Services["web"]; got != want {
		t.Errorf("web: %+v, want %+v", got, want)
	}
	if _, ok := st.Services[""]; ok || len(st.Services) != 1 {
		t.Errorf("services %v, want web alone (the empty name is /metrics' only)", st.Services)
	}
	if st.Role != Exit || st.Streams != 1 || st.StreamsTotal != 2 || st.HandshakesRefused != 1 {
		t.Errorf("stats %+v", st)
	}

	m := gather(t, l)
	for series, v := range map[string]float64{
		"tunnel_streams{service=web}":                           1,
		"tunnel_streams_total{service=web,status=ok}":           1,
		"tunnel_streams_total{service=web,status=aborted}":      1,
		"tunnel_streams_total{service=web,status=busy}":         1,
		"tunnel_streams_total{service=,status=unknown_service}": 1,
		"tunnel_bytes_total{direction=to_backend,service=web}":  11,
		"tunnel_bytes_total{direction=to_app,service=web}":      7,
		"tunnel_backend_dial_errors_total{}":                    1,
		"tunnel_backend_dial_duration_seconds{}":                2,
		"tunnel_handshakes_total{result=rate_limited}":          1,
		"tunnel_build_info{role=exit,version=test}":             1,
	} {
		if got, ok := m[series]; !ok || got != v {
			t.Errorf("%s = %v (present: %v), want %v", series, got, ok, v)
		}
	}
}

// TestEntryReconnects counts the sessions made after none was up, less
// the first.
func TestEntryReconnects(t *testing.T) {
	l := New(Entry)
	if got := gather(t, l)["tunnel_entry_reconnects_total{}"]; got != 0 {
		t.Errorf("reconnects before any session: %v", got)
	}
	for range 3 {
		l.SessionMade()
	}
	if got := gather(t, l)["tunnel_entry_reconnects_total{}"]; got != 2 || l.Reconnects() != 2 {
		t.Errorf("reconnects after three sessions: %v (Reconnects %d), want 2", got, l.Reconnects())
	}
}

package ledger

import (
	"os"
	"runtime"
)

// Stats are an agent's counters and its process's resource use, as the
// status endpoint shows them.
type Stats struct {
	Role              string `json:"role"`
	Sessions          int64  `json:"sessions"`      // sessions up now
	Streams           int64  `json:"streams"`       // streams open now
	StreamsTotal      int64  `json:"streams_total"` // streams opened since start
	HandshakeFailures int64  `json:"handshake_failures"`
	HandshakesRefused int64  `json:"handshakes_refused"` // busy or over the per-source rate
	Goroutines        int    `json:"goroutines"`
	HeapBytes         uint64 `json:"heap_bytes"`
	OpenFDs           int    `json:"open_fds"` // -1 where /proc/self/fd is not readable
	// Entry only: records of the current session.
	RecordsSent     uint64 `json:"records_sent,omitempty"`
	RecordsReceived uint64 `json:"records_received,omitempty"`

	// Entry only: failed TCP dials to the exit (HandshakeFailures counts
	// only handshakes begun); of the handshake failures, those refused by
	// either side (an ALERT from the exit, or its key or signature is
	// wrong) and those that ran out of time; and the sessions replaced
	// after their share of streams.
	DialFailures        int64 `json:"dial_failures"`
	HandshakeRejections int64 `json:"handshake_rejections"`
	HandshakeTimeouts   int64 `json:"handshake_timeouts"`
	SessionsRecycled    int64 `json:"sessions_recycled"`

	// Sessions resumed on a new connection after theirs broke, and
	// resumptions refused (entry: the exit did not know the session; exit:
	// a parked session closed past its bounds); the sessions waiting for a
	// new connection now, and the bytes sent again after resumptions.
	Resumptions        int64  `json:"resumptions"`
	ResumptionsRefused int64  `json:"resumptions_refused"`
	SessionsParked     int64  `json:"sessions_parked"`
	BytesResent        uint64 `json:"bytes_resent"`

	// Services are the counters of each service, by name (the default
	// service is "default").
	Services map[string]ServiceStats `json:"services"`
}

// processStats returns the process's part of Stats: goroutines, heap and
// open descriptors.
func processStats() Stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(ents)
	}
	return Stats{Goroutines: runtime.NumGoroutine(), HeapBytes: ms.HeapAlloc, OpenFDs: fds}
}

// Stats returns the counters as /status shows them, with the process's
// resource use.
func (l *Ledger) Stats() Stats {
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

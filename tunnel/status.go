package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
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
	// after maxSessionStreams streams.
	DialFailures        int64 `json:"dial_failures"`
	HandshakeRejections int64 `json:"handshake_rejections"`
	HandshakeTimeouts   int64 `json:"handshake_timeouts"`
	SessionsRecycled    int64 `json:"sessions_recycled"`

	// Services are the counters of each service, by name (the default
	// service is "default").
	Services map[string]ServiceStats `json:"services"`
}

// counters are updated by an agent's goroutines.
type counters struct {
	sessions, streams, streamsTotal, hsFailures, hsRefused atomic.Int64

	dialFailures, hsRejections, hsTimeouts, recycled atomic.Int64 // entry only
}

func (c *counters) stats(role string) Stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds := -1
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		fds = len(ents)
	}
	return Stats{
		Role:              role,
		Sessions:          c.sessions.Load(),
		Streams:           c.streams.Load(),
		StreamsTotal:      c.streamsTotal.Load(),
		HandshakeFailures: c.hsFailures.Load(),
		HandshakesRefused: c.hsRefused.Load(),
		Goroutines:        runtime.NumGoroutine(),
		HeapBytes:         ms.HeapAlloc,
		OpenFDs:           fds,

		DialFailures:        c.dialFailures.Load(),
		HandshakeRejections: c.hsRejections.Load(),
		HandshakeTimeouts:   c.hsTimeouts.Load(),
		SessionsRecycled:    c.recycled.Load(),
	}
}

// StatusConfig is what the status endpoint serves.
type StatusConfig struct {
	Stats func() Stats // /status
	// Ready is /readyz: nil while the agent should be sent traffic,
	// otherwise why not. It may block for a probe; it honours ctx.
	Ready func(ctx context.Context) error
	// Metrics is /metrics, in the Prometheus text format (the agent's
	// Metrics()); none when nil.
	Metrics prometheus.Gatherer
}

// StartStatus serves, on ln:
//
//	GET /status   cfg.Stats as JSON; with ?gc=1 after a garbage collection,
//	              so that heap_bytes counts live memory only
//	GET /healthz  liveness: 200 whenever the process answers
//	GET /readyz   readiness: 200 when cfg.Ready returns nil, else 503 and
//	              the reason
//	GET /metrics  cfg.Metrics for Prometheus
//
// The caller has bound ln, so that a command can bind every listener
// before it reports itself ready. The returned stop closes the server and
// ln, and waits until it has stopped.
func StartStatus(ln net.Listener, log zerolog.Logger, cfg StatusConfig) (stop func()) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("gc") == "1" {
			runtime.GC()
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(cfg.Stats())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := cfg.Ready(r.Context()); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{}))
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("status endpoint stopped")
		}
	}()
	return func() { srv.Close(); <-done }
}

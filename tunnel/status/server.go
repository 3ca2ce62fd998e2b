// Package status serves an agent's status endpoint: its counters as JSON,
// liveness and readiness probes, and Prometheus metrics, with bounds that
// keep it from taking what the agent's own connections need.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/tunnel/listen"
)

// Config is what the status endpoint serves.
type Config struct {
	Stats func() any // /status, marshalled as JSON
	// Ready is /readyz: nil while the agent should be sent traffic,
	// otherwise why not. It may block for a probe; it honours ctx.
	Ready func(ctx context.Context) error
	// Metrics is /metrics, in the Prometheus text format (the agent's
	// Metrics()); none when nil.
	Metrics prometheus.Gatherer
}

// Limits of the status endpoint. Its clients are a metrics scraper, probes
// and people: each request is small and answered at once, but for /readyz,
// which may wait for one backend probe (--dial-timeout).
const (
	// maxStatusConns bounds its connections, so that it cannot take the
	// descriptors the agent's connections need: 64 is many scrapers and
	// probes, and a small share of any open-file limit an agent runs with.
	maxStatusConns = 64
	// statusIdleTimeout closes a keep-alive connection left idle: long
	// enough for a scraper to reuse it between scrapes every 15 to 30 s.
	statusIdleTimeout = 60 * time.Second
	// statusReadTimeout bounds reading a request (GET, no body), headers
	// within statusHeaderTimeout of them.
	statusReadTimeout   = 10 * time.Second
	statusHeaderTimeout = 5 * time.Second
	// statusWriteTimeout bounds a request from its headers to the end of
	// its answer, a backend probe included.
	statusWriteTimeout = 30 * time.Second
	statusMaxHeader    = 16 << 10
	// gcEvery bounds how often /status?gc=1 collects garbage.
	gcEvery = time.Second
)

// Serve serves, on ln:
//
//	GET /status   cfg.Stats as JSON; with ?gc=1 after a garbage collection,
//	              so that heap_bytes counts live memory only
//	GET /healthz  liveness: 200 whenever the process answers
//	GET /readyz   readiness: 200 when cfg.Ready returns nil, else 503 and
//	              the reason
//	GET /metrics  cfg.Metrics for Prometheus
//
// Whatever ln's address, two things are for clients on this host only (a
// loopback peer, or a UNIX socket): the reason why /readyz is 503, which
// can name backends and their errors (others get 503 without it), and
// ?gc=1, which costs a full collection (others get 403); it collects at
// most once per gcEvery, and a request within that gets the counters
// without one.
//
// It holds at most maxStatusConns connections at once: past that it
// accepts no more until one closes, and closes those idle in keep-alive to
// make room. An accept that fails for want of descriptors is retried
// (listen.Retrying). The caller has bound ln, so that a command can bind
// every listener before it reports itself ready. The returned stop closes
// the server and ln, and waits until it has stopped.
func Serve(ln net.Listener, log zerolog.Logger, cfg Config) (stop func()) {
	h := &statusHandler{cfg: cfg, now: time.Now}
	idle := &idleConns{conns: make(map[net.Conn]struct{})}
	lim := newLimitListener(listen.NewRetrying(ln, log), maxStatusConns, idle.closeAll)
	srv := &http.Server{
		Handler:           h.mux(),
		ReadHeaderTimeout: statusHeaderTimeout,
		ReadTimeout:       statusReadTimeout,
		WriteTimeout:      statusWriteTimeout,
		IdleTimeout:       statusIdleTimeout,
		MaxHeaderBytes:    statusMaxHeader,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, localPeerKey{}, fromThisHost(c))
		},
		ConnState: func(c net.Conn, s http.ConnState) {
			idle.track(c, s == http.StateIdle)
			if s == http.StateIdle && lim.waiting() {
				c.Close() // a new connection waits for its place
			}
		},
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lim); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("status endpoint stopped")
		}
	}()
	return func() { srv.Close(); <-done }
}

// localPeerKey is the key of a request context's value: whether the
// request's connection comes from this host (fromThisHost).
type localPeerKey struct{}

// fromThisHost reports whether c's peer is on this host: a loopback TCP
// address (Linux drops packets from outside with a loopback source), or a
// UNIX socket.
func fromThisHost(c net.Conn) bool {
	switch a := c.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	return c.LocalAddr().Network() == "unix"
}

// statusHandler answers the status endpoint's requests.
type statusHandler struct {
	cfg    Config
	now    func() time.Time
	lastGC atomic.Int64 // UnixNano of the last collection ?gc=1 made; 0: none
}

func (h *statusHandler) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", h.status)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", h.readyz)
	if h.cfg.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(h.cfg.Metrics, promhttp.HandlerOpts{}))
	}
	return mux
}

// local reports whether r came from this host.
func local(r *http.Request) bool {
	ok, _ := r.Context().Value(localPeerKey{}).(bool)
	return ok
}

func (h *statusHandler) status(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Get("gc") == "1" {
		if !local(r) {
			http.Error(w, "gc=1 is served to this host only (a full garbage collection costs CPU): ask from 127.0.0.1, or ask /status without it", http.StatusForbidden)
			return
		}
		h.collect()
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(h.cfg.Stats())
}

// collect runs a garbage collection unless one ran within gcEvery.
func (h *statusHandler) collect() {
	now := h.now().UnixNano()
	last := h.lastGC.Load()
	if last != 0 && now-last < int64(gcEvery) || !h.lastGC.CompareAndSwap(last, now) {
		return
	}
	runtime.GC()
}

func (h *statusHandler) readyz(w http.ResponseWriter, r *http.Request) {
	err := h.cfg.Ready(r.Context())
	switch {
	case err == nil:
		w.Write([]byte("ready\n"))
	case local(r):
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
	default:
		http.Error(w, "not ready (the reason is given to this host only: ask from 127.0.0.1, e.g. tunnel healthcheck, or see the agent's log)", http.StatusServiceUnavailable)
	}
}

package tunnel

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync"
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

// StartStatus serves, on ln:
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
// (RetryingListener). The caller has bound ln, so that a command can bind
// every listener before it reports itself ready. The returned stop closes
// the server and ln, and waits until it has stopped.
func StartStatus(ln net.Listener, log zerolog.Logger, cfg StatusConfig) (stop func()) {
	h := &statusHandler{cfg: cfg, now: time.Now}
	idle := &idleConns{conns: make(map[net.Conn]struct{})}
	lim := newLimitListener(NewRetryingListener(ln, log), maxStatusConns, idle.closeAll)
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
	cfg    StatusConfig
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

// idleConns are the status endpoint's connections idle in keep-alive.
// Safe for concurrent use.
type idleConns struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// track records whether c is idle now.
func (ic *idleConns) track(c net.Conn, idle bool) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if idle {
		ic.conns[c] = struct{}{}
	} else {
		delete(ic.conns, c)
	}
}

// closeAll closes every idle connection.
func (ic *idleConns) closeAll() {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	for c := range ic.conns {
		c.Close()
		delete(ic.conns, c)
	}
}

// limitListener accepts at most n connections open at once: Accept waits
// while n are open, after calling full once per wait, so that its owner can
// close some. A connection it returns gives its place back when closed
// (once, however often it is closed). Close ends a wait. Safe for concurrent
// use.
type limitListener struct {
	net.Listener
	slots    chan struct{}
	full     func()
	blocked  atomic.Int32 // Accept calls waiting for a place
	stopOnce sync.Once
	stopped  chan struct{}
}

func newLimitListener(ln net.Listener, n int, full func()) *limitListener {
	return &limitListener{Listener: ln, slots: make(chan struct{}, n), full: full, stopped: make(chan struct{})}
}

// waiting reports whether an Accept waits for a place.
func (l *limitListener) waiting() bool { return l.blocked.Load() > 0 }

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.slots <- struct{}{}:
	default:
		l.blocked.Add(1)
		l.full()
		select {
		case l.slots <- struct{}{}:
			l.blocked.Add(-1)
		case <-l.stopped:
			l.blocked.Add(-1)
			return nil, &net.OpError{Op: "accept", Net: l.Addr().Network(), Addr: l.Addr(), Err: net.ErrClosed}
		}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

func (l *limitListener) Close() error {
	l.stopOnce.Do(func() { close(l.stopped) })
	return l.Listener.Close()
}

// limitConn is a connection of a limitListener.
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite is the wrapped connection's, which net/http uses to end an
// answer it closes the connection after.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

package status

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// statusRequest runs GET target on h as if from this host (local) or not.
func statusRequest(h *statusHandler, target string, local bool) (int, string) {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	r = r.WithContext(context.WithValue(r.Context(), localPeerKey{}, local))
	w := httptest.NewRecorder()
	h.mux().ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

// TestStatusLocalOnly: why /readyz is 503 (backend addresses, error texts),
// and ?gc=1, are for clients on this host only; ?gc=1 collects at most once
// per gcEvery.
func TestStatusLocalOnly(t *testing.T) {
	t0 := time.Unix(1000, 0)
	now := t0
	h := &statusHandler{now: func() time.Time { return now }, cfg: Config{
		Stats: func() any { return map[string]string{"role": "exit"} },
		Ready: func(context.Context) error { return errors.New("backend 10.1.2.3:5432 does not accept connections") },
	}}

	code, body := statusRequest(h, "/readyz", true)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "10.1.2.3:5432") {
		t.Errorf("/readyz from this host: %d %q, want 503 with the reason", code, body)
	}
	code, body = statusRequest(h, "/readyz", false)
	if code != http.StatusServiceUnavailable || strings.Contains(body, "10.1.2.3") || !strings.Contains(body, "ask from 127.0.0.1") {
		t.Errorf("/readyz from another host: %d %q, want 503 without the reason, saying where to ask", code, body)
	}

	code, body = statusRequest(h, "/status?gc=1", false)
	if code != http.StatusForbidden || !strings.Contains(body, "this host only") {
		t.Errorf("/status?gc=1 from another host: %d %q, want 403 saying why", code, body)
	}
	if h.lastGC.Load() != 0 {
		t.Error("/status?gc=1 from another host collected garbage")
	}
	if code, body := statusRequest(h, "/status", false); code != http.StatusOK || !strings.Contains(body, `"role":"exit"`) {
		t.Errorf("/status from another host: %d %q, want the counters", code, body)
	}

	for _, tc := range []struct {
		at      time.Duration
		collect bool
	}{{0, true}, {gcEvery / 2, false}, {gcEvery - 1, false}, {gcEvery, true}, {gcEvery + 1, false}} {
		now = t0.Add(tc.at)
		before := h.lastGC.Load()
		code, body := statusRequest(h, "/status?gc=1", true)
		if code != http.StatusOK || !strings.Contains(body, `"role":"exit"`) {
			t.Errorf("/status?gc=1 at %v: %d %q, want the counters", tc.at, code, body)
		}
		if collected := h.lastGC.Load() != before; collected != tc.collect {
			t.Errorf("/status?gc=1 at %v: collected %v, want %v", tc.at, collected, tc.collect)
		}
	}
}

// TestFromThisHost: loopback peers and UNIX sockets are this host's.
func TestFromThisHost(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}, true},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 1}, true},
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}, false},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 1}, false},
		{&net.UnixAddr{Name: "", Net: "unix"}, true},
	} {
		if got := fromThisHost(addrConn{remote: tc.addr}); got != tc.want {
			t.Errorf("peer %v: fromThisHost = %v, want %v", tc.addr, got, tc.want)
		}
	}
}

// addrConn is a connection with a peer address and nothing else.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }
func (c addrConn) LocalAddr() net.Addr  { return &net.TCPAddr{} }

// countingListener counts the connections it accepted that are open, and
// the most there were at once.
type countingListener struct {
	net.Listener
	mu        sync.Mutex
	open, max int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.open++
	l.max = max(l.max, l.open)
	l.mu.Unlock()
	return &countedConn{Conn: c, l: l}, nil
}

func (l *countingListener) most() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.max
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// TestStatusConnLimit: keep-alive clients that stay connected hold at most
// maxStatusConns connections; past that, the idle ones are closed to make
// room, so every client is answered, and a new one after them.
func TestStatusConnLimit(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &countingListener{Listener: inner}
	stop := Serve(ln, zerolog.Nop(), Config{
		Stats: func() any { return struct{}{} },
		Ready: func(context.Context) error { return nil },
	})
	defer stop()
	addr := inner.Addr().String()

	const clients = 3 * maxStatusConns
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A keep-alive request, answered; then the client stays.
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: status\r\n\r\n"); err != nil {
				errs <- err
				return
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
				errs <- fmt.Errorf("answer %q, %v", line, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a keep-alive client among %d: %v", clients, err)
	}
	if n := ln.most(); n > maxStatusConns {
		t.Errorf("%d connections open at once, want at most %d", n, maxStatusConns)
	}
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatalf("a new client after %d keep-alive ones: %v", clients, err)
	}
	resp.Body.Close()
}

package tunnel

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/tunnel/status"
)

// admitted reports whether l admits a handshake from addr at now; it keeps
// no handshake in progress.
func admitted(l *sourceLimiter, addr net.Addr, now time.Time) bool {
	done, err := l.admit(addr, now)
	if err != nil {
		return false
	}
	done()
	return true
}

func TestSourceLimiter(t *testing.T) {
	l := newSourceLimiter(2) // burst 4
	a := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 1}
	b := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 2), Port: 1}
	now := time.Now()
	for i := range 4 {
		if !admitted(l, a, now) {
			t.Fatalf("handshake %d within the burst refused", i)
		}
	}
	if admitted(l, a, now) {
		t.Fatal("fifth handshake in the same instant allowed")
	}
	if !admitted(l, b, now) {
		t.Fatal("another source is limited by the first one's bucket")
	}
	if !admitted(l, a, now.Add(600*time.Millisecond)) {
		t.Fatal("no token after 0.6s at 2/s")
	}
	if admitted(l, a, now.Add(600*time.Millisecond)) {
		t.Fatal("two tokens after 0.6s at 2/s")
	}
}

// TestSourceLimiterIPv6 keys IPv6 sources on their /64, and an IPv4 address
// the same whether it comes as IPv4 or as IPv4-mapped IPv6.
func TestSourceLimiterIPv6(t *testing.T) {
	l := newSourceLimiter(1) // burst 2
	now := time.Now()
	same := []string{"[2001:db8:1:2::1]:1", "[2001:db8:1:2:ffff:ffff:ffff:ffff]:2", "[2001:db8:1:2::3%eth0]:3"}
	if !admitted(l, addr(t, same[0]), now) || !admitted(l, addr(t, same[1]), now) {
		t.Fatal("two handshakes from one /64 within the burst refused")
	}
	if admitted(l, addr(t, same[2]), now) {
		t.Fatal("a third address of the same /64 got its own bucket: one /64 holds unlimited sources")
	}
	if !admitted(l, addr(t, "[2001:db8:1:3::1]:1"), now) {
		t.Fatal("the next /64 is limited by its neighbour's bucket")
	}
	if !admitted(l, addr(t, "192.0.2.1:1"), now) || !admitted(l, addr(t, "[::ffff:192.0.2.1]:1"), now) {
		t.Fatal("an IPv4 source's burst refused")
	}
	if admitted(l, addr(t, "192.0.2.1:2"), now) {
		t.Fatal("an IPv4 address written as IPv4-mapped IPv6 got a bucket of its own")
	}
}

func addr(t *testing.T, s string) net.Addr {
	t.Helper()
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestSourceLimiterFull: with the table full of busy sources, a new source
// is still limited (the least recently seen source is forgotten for it).
func TestSourceLimiterFull(t *testing.T) {
	l := newSourceLimiter(1) // burst 2, refilled in 2s
	now := time.Now()
	for i := range maxSources { // every source busy: its bucket is not full
		a := &net.TCPAddr{IP: net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)), Port: 1}
		if !admitted(l, a, now) {
			t.Fatalf("source %d refused", i)
		}
	}
	late := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}
	for i := range 2 {
		if !admitted(l, late, now) {
			t.Fatalf("a new source refused handshake %d of its burst while the table is full", i+1)
		}
	}
	if admitted(l, late, now) {
		t.Fatal("a new source passed unlimited while the table is full")
	}
	if n := len(l.buckets); n != maxSources || l.lru.Len() != maxSources {
		t.Fatalf("table holds %d sources (list %d), want at most %d", n, l.lru.Len(), maxSources)
	}
	if _, ok := l.buckets[netip.MustParsePrefix("10.0.0.0/32")]; ok {
		t.Fatal("the source seen least recently was kept, and another forgotten")
	}
}

// TestSourceHandshakesInProgress caps the handshakes in progress from one
// source, whatever the rate allows.
func TestSourceHandshakesInProgress(t *testing.T) {
	l := newSourceLimiter(1000)
	a := addr(t, "10.0.0.1:1")
	now := time.Now()
	var done []func()
	for i := range maxHandshakesPerSource {
		d, err := l.admit(a, now)
		if err != nil {
			t.Fatalf("handshake %d of a source refused: %v", i, err)
		}
		done = append(done, d)
	}
	if _, err := l.admit(a, now); !errors.Is(err, errTooMany) {
		t.Fatalf("handshake %d in progress from one source: err = %v, want errTooMany", maxHandshakesPerSource+1, err)
	}
	if !admitted(l, addr(t, "10.0.0.2:1"), now) {
		t.Fatal("another source refused")
	}
	done[0]()
	if !admitted(l, a, now) {
		t.Fatal("a place freed, and still refused")
	}
	for _, d := range done[1:] {
		d()
	}
	if false {
		t.Fatalf("%d sources still counted with nothing in progress", len(l.active))
	}
}

func TestStreamCap(t *testing.T) {
	a := startWith(t, echoBackend(t), func(x *ExitSettings, _ *EntrySettings) { x.MaxStreams = 2 })
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", a.entryAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("stream within the cap: %v", err)
		}
		held = append(held, c)
	}
	// The entry resets the third connection once the exit refuses its
	// stream, which may be before the dial returns.
	c, err := net.Dial("tcp", a.entryAddr)
	switch {
	case errors.Is(err, syscall.ECONNRESET):
	case err != nil:
		t.Fatal(err)
	default:
		defer c.Close()
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Fatalf("third stream got %d bytes, err %v; want it closed", n, err)
		}
	}
	if got := a.exit.Stats().Streams; got != 2 {
		t.Fatalf("exit reports %d streams open, want 2", got)
	}
	for _, h := range held {
		h.Close()
	}
}

func TestWriteStallAborts(t *testing.T) {
	// A backend that floods; the application never reads.
	flood := backend(t, func(c *net.TCPConn) {
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	a := startStall(t, flood, nil, 300*time.Millisecond)
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(4096)
	deadline := time.Now().Add(10 * time.Second)
	for a.entry.Stats().StreamsTotal == 0 || a.entry.Stats().Streams != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("stalled stream still open after 10s: %+v", a.entry.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStatusEndpoint(t *testing.T) {
	a := startWith(t, echoBackend(t), nil)
	ln := loopback(t)
	addr := ln.Addr().String()
	stop := status.Serve(ln, zerolog.Nop(), status.Config{Stats: func() any { return a.entry.Stats() }, Ready: a.entry.Ready})
	defer stop()
	roundTrip(t, a.entryAddr, []byte("hello"))
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz = %d with a session up", resp.StatusCode)
	}
	resp, err = http.Get("http://" + addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if st.Role != "entry" || st.Sessions != 1 || st.StreamsTotal != 1 || st.Goroutines == 0 || st.OpenFDs <= 0 {
		t.Fatalf("/status = %+v", st)
	}
	http.DefaultClient.CloseIdleConnections()
}

package sourcelimit

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// admitted reports whether l admits a handshake from addr at now; it keeps
// no handshake in progress.
func admitted(l *Limiter, addr net.Addr, now time.Time) bool {
	done, err := l.Admit(addr, now)
	if err != nil {
		return false
	}
	done()
	return true
}

func TestSourceLimiter(t *testing.T) {
	l := New(2) // burst 4
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
	l := New(1) // burst 2
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
	l := New(1) // burst 2, refilled in 2s
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
	l := New(1000)
	a := addr(t, "10.0.0.1:1")
	now := time.Now()
	var done []func()
	for i := range MaxPerSource {
		d, err := l.Admit(a, now)
		if err != nil {
			t.Fatalf("handshake %d of a source refused: %v", i, err)
		}
		done = append(done, d)
	}
	if _, err := l.Admit(a, now); !errors.Is(err, ErrTooMany) {
		t.Fatalf("handshake %d in progress from one source: err = %v, want ErrTooMany", MaxPerSource+1, err)
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

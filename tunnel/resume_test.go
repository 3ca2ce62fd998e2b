package tunnel

import (
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"
)

// echoAcross sends size random bytes through the entry at addr to an echo
// backend, calling cut after each of the given offsets have been sent, and
// reports whether the echo came back whole (SHA-256) on the same
// connection.
func echoAcross(t *testing.T, addr string, size int, cutAt []int, cut func()) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	got := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		io.Copy(h, c)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	}()
	sent := 0
	for _, at := range append(cutAt, size) {
		for sent < at {
			n, err := c.Write(data[sent:min(at, sent+64<<10)])
			if err != nil {
				t.Fatalf("write at %d of %d: %v", sent, size, err)
			}
			sent += n
		}
		if at < size {
			cut()
		}
	}
	c.(*net.TCPConn).CloseWrite()
	select {
	case sum := <-got:
		if sum != want {
			t.Fatal("the echo differs from what was sent (bytes lost, repeated or reordered)")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the echo did not end within 30s")
	}
}

// TestResumeAcrossCuts: an application connection carrying 8 MiB goes on
// across three resets of the link between entry and exit, which resume the
// session each time; no byte is lost, and the entry keeps one session.
func TestResumeAcrossCuts(t *testing.T) {
	a := start(t, echoBackend(t))
	relay := newLink(t, a.exitAddr)
	n, addr := runEntry(t, relay.ln.Addr().String(), nil, nil, nil)
	roundTrip(t, addr, []byte("first"))
	cuts := int64(0)
	echoAcross(t, addr, 8<<20, []int{1 << 20, 3 << 20, 6 << 20}, func() {
		relay.cut()
		cuts++
		waitFor(t, "the session resumed", func() bool { return n.Stats().Resumptions == cuts })
	})
	if got := n.Stats().Resumptions; got != 3 {
		t.Errorf("entry counted %d resumptions, want 3", got)
	}
	if got := a.exit.Stats().Resumptions; got != 3 {
		t.Errorf("exit counted %d resumptions, want 3", got)
	}
	if st := n.Stats(); st.Sessions != 1 {
		t.Errorf("entry has %d sessions, want the one resumed", st.Sessions)
	}
}

// TestResumeOff: with resumption off on either side, a reset of the link
// resets the application's connection, as before.
func TestResumeOff(t *testing.T) {
	for _, side := range []string{"entry", "exit"} {
		t.Run(side, func(t *testing.T) {
			a := startWith(t, echoBackend(t), func(xs *ExitSettings, _ *EntrySettings) {
				if side == "exit" {
					xs.ResumeWindow = -1
				}
			})
			relay := newLink(t, a.exitAddr)
			_, addr := runEntry(t, relay.ln.Addr().String(), nil, func(ns *EntrySettings) {
				if side == "entry" {
					ns.ResumeWindow = -1
				}
			}, nil)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
				t.Fatal(err)
			}
			relay.cut()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil {
				t.Fatal("the connection lived on across a cut with resumption off")
			}
		})
	}
}

// TestResumeRefusedByNewExit: an exit that restarted does not know the
// session; the entry gives up resuming at once, resets the connections
// the session carried, and makes a new session.
func TestResumeRefusedByNewExit(t *testing.T) {
	backend := echoBackend(t)
	a := start(t, backend)
	relay := newLink(t, a.exitAddr)
	n, addr := runEntry(t, relay.ln.Addr().String(), nil, nil, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("ping"))
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	// A new exit on another address behind the relay: the old one lives
	// on, its session parked, but the entry reaches only the new one.
	b := start(t, backend)
	relay.target.Store(b.exitAddr)
	relay.cut()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("the connection lived on although the exit reached did not know its session")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the connection was reset after %v, want at once (the refusal is final)", d)
	}
	if got := n.Stats().ResumptionsRefused; got != 1 {
		t.Errorf("entry counted %d refused resumptions, want 1", got)
	}
	roundTrip(t, addr, []byte("on a new session"))
}

// TestResumeFlappingBacksOff: a link cut 200ms after every connection is
// resumed each time, but after a growing wait, not at once; the
// application's connection lives through it all.
func TestResumeFlappingBacksOff(t *testing.T) {
	a := start(t, echoBackend(t))
	relay, accepted := cuttingRelay(t, a.exitAddr, 200*time.Millisecond)
	n, addr := runEntry(t, relay, nil, nil, nil)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(3500 * time.Millisecond)
	got := accepted.Load()
	t.Logf("3.5s of connections cut after 200ms: %d connections, %d resumptions", got, n.Stats().Resumptions)
	// Without backoff: 17 connections. With it: the waits grow 100ms,
	// 200ms, 400ms, 800ms, 1s.
	if got > 8 {
		t.Errorf("%d connections in 3.5s, want at most 8: a flapping link is resumed without backoff", got)
	}
	if n.Stats().Resumptions == 0 {
		t.Error("no resumption")
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
		t.Fatalf("the connection did not live through the flapping link: %v", err)
	}
}

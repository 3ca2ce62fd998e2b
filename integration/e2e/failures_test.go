package e2e

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// expectClosed writes msg to c and expects the connection to be closed
// (EOF or reset) without any reply, within timeout.
func expectClosed(t *testing.T, addr string, msg []byte, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if errors.Is(err, syscall.ECONNRESET) {
		// The entry accepted and reset the connection before connect
		// returned: it already knew it had no session.
		t.Logf("client connection reset while connecting")
		return
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c := nc.(*net.TCPConn)
	defer c.Close()
	c.SetDeadline(start.Add(timeout))
	c.Write(msg) // may fail if the entry has already closed the connection
	b, err := io.ReadAll(c)
	if len(b) > 0 {
		t.Errorf("client received %d bytes %q, want none", len(b), b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("client connection still open after %v, want it closed", timeout)
	}
	t.Logf("client connection closed after %v (err %v)", time.Since(start).Round(time.Millisecond), err)
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestBackendDown: when the exit cannot dial the backend, the client's
// connection is closed promptly and the exit logs status 2 at warn.
// "Promptly": the exit's --dial-timeout is 60 s, so a close within 15 s
// comes from the refused dial, not from a timeout.
func TestBackendDown(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	backend := closedAddr(t)
	tun := r.StartTunnel(t, backend, harness.Options{Args: []string{"--dial-timeout", "60s"}}, harness.Options{})
	expectClosed(t, tun.Entry.Addr, []byte("hello?"), 15*time.Second)
	l := tun.Exit.WaitLine(t, 1, 10*time.Second, `a warn line with "status":2`,
		harness.All(harness.Level("warn"), func(l harness.Line) bool { return l.Fields["status"] == 2.0 }))
	t.Logf("exit: %s", l.Raw)

	// The session survives a failed stream: with the backend up on the
	// same address, the next connection works.
	ln, err := net.Listen("tcp", backend)
	if err != nil {
		t.Logf("not checking recovery: cannot listen on %s again: %v", backend, err)
		return
	}
	harness.ServeBackend(t, ln, harness.HashEcho)
	if err := roundTrip(tun.Entry.Addr, 1); err != nil {
		t.Errorf("with the backend back up: %v", err)
	}
}

// TestUnauthorizedEntry: an exit that does not list the entry's key
// refuses it; both sides log why, and the backend sees nothing.
func TestUnauthorizedEntry(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	backend := harness.StartHashEcho(t)
	wrong := *r
	wrong.Entry = harness.NewIdentity(t, r.Bin, "other") // the key the exit authorizes
	exit := wrong.StartExit(t, backend.Addr(), harness.Options{})
	entry := r.StartEntry(t, exit.Addr, harness.Options{})

	expectClosed(t, entry.Addr, []byte("secret request"), 30*time.Second)

	exit.WaitLine(t, 1, 30*time.Second, "a line with \"not authorized\" and the entry's fingerprint",
		harness.Contains("not authorized", r.Entry.Fingerprint))
	entry.WaitLine(t, 1, 30*time.Second, `an error line with "rejected" and "not authorized"`,
		harness.All(harness.Level("error"), harness.Contains("rejected", "not authorized")))
	if n := entry.Count(harness.MessageIs("session established")); n != 0 {
		t.Errorf("entry logged \"session established\" %d times", n)
	}
	if n := backend.Accepted(); n != 0 {
		t.Errorf("backend accepted %d connections, want 0", n)
	}
}

// TestWrongPinnedKey: an entry pinning another key than the exit's refuses
// the exit before any application byte reaches the backend.
func TestWrongPinnedKey(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	backend := harness.StartHashEcho(t)
	exit := r.StartExit(t, backend.Addr(), harness.Options{})
	wrong := *r
	wrong.Exit = harness.NewIdentity(t, r.Bin, "other") // the key the entry pins
	entry := wrong.StartEntry(t, exit.Addr, harness.Options{})

	expectClosed(t, entry.Addr, []byte("secret request"), 30*time.Second)
	entry.WaitLine(t, 1, 30*time.Second, "an error line with \"pinned\" and both fingerprints",
		harness.All(harness.Level("error"), harness.Contains("pinned", wrong.Exit.Fingerprint, r.Exit.Fingerprint)))
	if n := entry.Count(harness.MessageIs("session established")); n != 0 {
		t.Errorf("entry logged \"session established\" %d times", n)
	}
	time.Sleep(500 * time.Millisecond) // let a wrongly forwarded stream reach the backend
	if n := backend.Accepted(); n != 0 {
		t.Errorf("backend accepted %d connections, want 0", n)
	}
}

// TestExitRestart: the exit stops (cleanly, exit code 0) and comes back on
// the same port while the entry runs; the entry reconnects by itself and
// new connections work again.
func TestExitRestart(t *testing.T) {
	t.Parallel()
	r := harness.NewRig(t)
	backend := harness.StartHashEcho(t)
	tun := r.StartTunnel(t, backend.Addr(), harness.Options{}, harness.Options{})

	if err := roundTrip(tun.Entry.Addr, 1); err != nil {
		t.Fatalf("before the restart: %v", err)
	}
	if code := tun.Exit.Stop(t, 60*time.Second); code != 0 {
		t.Errorf("exit agent exited with code %d after SIGTERM, want 0", code)
	}
	stopped := time.Now()

	// While the exit is down a client is turned away rather than left
	// hanging, or kept until the exit is back; either way the entry
	// keeps running.
	time.Sleep(3 * time.Second) // a few reconnection attempts with backoff
	if tun.Entry.Exited() {
		t.Fatalf("entry exited while the exit was down")
	}
	// The entry retries with growing delays, not in a tight loop: with an
	// initial delay around 100 ms that doubles, 3 s hold fewer than 10
	// attempts; a fixed short delay would make dozens.
	// (At warn while the exit has been away for less than a minute.)
	attempts := tun.Entry.Count(harness.All(harness.Level("warn"), harness.Contains("cannot establish a session")))
	var delays []any
	for _, l := range tun.Entry.Logs() {
		if d, ok := l.Fields["retry_in"]; ok {
			delays = append(delays, d)
		}
	}
	t.Logf("entry: %d failed attempts while the exit was down; retry_in: %v", attempts, delays)
	if attempts == 0 || attempts > 12 {
		t.Errorf("entry made %d reconnection attempts in 3 s, want between 1 and 12 (exponential backoff)", attempts)
	}

	exit2 := r.StartExit(t, backend.Addr(), harness.Options{Listen: tun.Exit.Addr})
	if exit2.Addr != tun.Exit.Addr {
		t.Fatalf("restarted exit listens on %s, want %s", exit2.Addr, tun.Exit.Addr)
	}
	restarted := time.Now()
	tun.Entry.WaitMessage(t, 2, 60*time.Second, "session established")
	t.Logf("exit down for %v; entry re-established its session %v after the exit came back",
		restarted.Sub(stopped).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))

	var err error
	for i := 0; i < 5; i++ {
		if err = roundTrip(tun.Entry.Addr, uint64(10+i)); err == nil {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		t.Fatalf("after the exit restarted: %v", err)
	}
	if code := tun.Entry.Stop(t, 60*time.Second); code != 0 {
		t.Errorf("entry agent exited with code %d after SIGTERM, want 0", code)
	}
}

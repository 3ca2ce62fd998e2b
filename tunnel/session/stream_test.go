package session

import (
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// openAccepted opens a stream on client, writes msg into it, and returns it
// with the server's side, which has read msg.
func openAccepted(t *testing.T, client, server *Session, msg string) (opened, accepted *Stream) {
	t.Helper()
	opened, err := client.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { opened.Close() })
	if _, err := opened.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	accepted, err = server.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	accepted.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(accepted, buf); err != nil || string(buf) != msg {
		t.Fatalf("the server read %q, %v; want %q", buf, err, msg)
	}
	accepted.SetReadDeadline(time.Time{})
	return opened, accepted
}

// entered reports whether st is in its session's table, attached.
func entered(st *Stream) bool {
	tb := &st.sess.table
	tb.mu.Lock()
	defer tb.mu.Unlock()
	e := tb.byID[st.id]
	return e != nil && e.stream == st
}

// TestStreamCloseLeavesTable: an opened and an accepted Stream are in their
// session's table until Close, which takes them out; an OnLost set before
// Close is not called when the session ends after it, while a held
// stream's is.
func TestStreamCloseLeavesTable(t *testing.T) {
	client, server, _ := sessionPair(t)
	opened, accepted := openAccepted(t, client, server, "hello")
	held, _ := openAccepted(t, client, server, "held")
	for name, st := range map[string]*Stream{"opened": opened, "accepted": accepted, "held": held} {
		if !entered(st) {
			t.Fatalf("the %s stream is not in its session's table", name)
		}
	}
	var closedLost, heldLost atomic.Int32
	opened.OnLost(func() { closedLost.Add(1) })
	held.OnLost(func() { heldLost.Add(1) })
	opened.Close()
	accepted.Close()
	opened.Close() // idempotent
	if entered(opened) || entered(accepted) {
		t.Fatalf("after Close: in the table: opened %v, accepted %v; want neither", entered(opened), entered(accepted))
	}
	if !entered(held) {
		t.Fatal("closing other streams took the held one out of the table")
	}
	client.Close()
	waitFor(t, "the held stream's OnLost after the session ended", func() bool { return heldLost.Load() == 1 })
	if n := closedLost.Load(); n != 0 {
		t.Fatalf("OnLost of a closed stream called %d times after the session ended; want 0", n)
	}
	if !held.Lost() {
		t.Fatal("held stream: Lost() false after the session ended without its FIN")
	}
}

// TestStreamLostWhenPeerCut: a session cut under a stream (the peer's
// connection closed, no CLOSE, no FIN) calls its OnLost once, and Lost
// reports it; Read ends with io.EOF.
func TestStreamLostWhenPeerCut(t *testing.T) {
	client, server, serverConn := sessionPair(t)
	opened, _ := openAccepted(t, client, server, "hello")
	var lost atomic.Int32
	opened.OnLost(func() { lost.Add(1) })
	if opened.Lost() {
		t.Fatal("Lost before the session ended")
	}
	serverConn.Close()
	waitFor(t, "OnLost after the peer's connection was closed", func() bool { return lost.Load() > 0 })
	if !opened.Lost() || opened.PeerFinished() {
		t.Fatalf("Lost %v, PeerFinished %v; want true, false", opened.Lost(), opened.PeerFinished())
	}
	opened.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := opened.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("Read of a lost stream: %v; want io.EOF", err)
	}
	opened.Close()
	if n := lost.Load(); n != 1 {
		t.Fatalf("OnLost called %d times; want 1", n)
	}
}

// TestStreamOnLostAfterEnd: OnLost set once the session has ended, on a
// stream not closed yet, calls fn at once, as documented; so does OnLost
// on a closed stream. (It failed before sessionEnded marked the stream
// done: OnLost stored fn, and nothing ever called it.)
func TestStreamOnLostAfterEnd(t *testing.T) {
	client, server, serverConn := sessionPair(t)
	opened, _ := openAccepted(t, client, server, "hello")
	closed, _ := openAccepted(t, client, server, "closed")
	closed.Close()
	serverConn.Close()
	waitFor(t, "the client session's table closed", func() bool {
		tb := &client.table
		tb.mu.Lock()
		defer tb.mu.Unlock()
		return tb.closed
	})
	var openedLost, closedLost atomic.Int32
	closed.OnLost(func() { closedLost.Add(1) })
	if closedLost.Load() != 1 {
		t.Fatal("OnLost on a closed stream of an ended session: fn not called at once")
	}
	opened.OnLost(func() { openedLost.Add(1) })
	waitFor(t, "OnLost set after the session ended to call fn", func() bool { return openedLost.Load() == 1 })
}

// TestStreamPeerFinished: after the peer's CloseWrite, Read ends with
// io.EOF and PeerFinished reports it; a session ending afterwards neither
// makes the stream Lost nor calls its OnLost.
func TestStreamPeerFinished(t *testing.T) {
	client, server, serverConn := sessionPair(t)
	opened, accepted := openAccepted(t, client, server, "hello")
	witness, _ := openAccepted(t, client, server, "witness")
	if opened.PeerFinished() {
		t.Fatal("PeerFinished before the peer's FIN")
	}
	if _, err := accepted.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	if err := accepted.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	opened.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(opened)
	if string(got) != "bye" || err != nil {
		t.Fatalf("read %q, %v; want \"bye\" and EOF", got, err)
	}
	if !opened.PeerFinished() {
		t.Fatal("PeerFinished false after the peer's FIN")
	}
	if _, err := opened.Write([]byte("still open")); err != nil {
		t.Fatalf("writing after the peer's FIN: %v", err)
	}
	var lost, witnessLost atomic.Int32
	opened.OnLost(func() { lost.Add(1) })
	witness.OnLost(func() { witnessLost.Add(1) })
	serverConn.Close()
	waitFor(t, "the session to end", func() bool { return witnessLost.Load() == 1 })
	if opened.Lost() || lost.Load() != 0 {
		t.Fatalf("after the peer's FIN and then the session's end: Lost %v, OnLost calls %d; want false, 0", opened.Lost(), lost.Load())
	}
}

// TestStreamReset: Reset of an accepted stream makes the peer's Read fail
// with ErrReset, and so does Reset of an opened stream once the peer has
// acknowledged it; this side's Read fails with ErrReset too.
func TestStreamReset(t *testing.T) {
	t.Run("accepted", func(t *testing.T) {
		client, server, _ := sessionPair(t)
		opened, accepted := openAccepted(t, client, server, "hello")
		accepted.Reset()
		opened.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := opened.Read(make([]byte, 10)); !errors.Is(err, ErrReset) {
			t.Fatalf("the opener's Read after the acceptor's Reset: %v; want ErrReset", err)
		}
		// This side's yamux learns of the reset between two of the
		// peer's frames: have the peer send one.
		nudge, err := client.Open()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nudge.Close() })
		accepted.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := accepted.Read(make([]byte, 10)); !errors.Is(err, ErrReset) {
			t.Fatalf("the acceptor's own Read after its Reset: %v; want ErrReset", err)
		}
	})

	t.Run("opened", func(t *testing.T) {
		client, server, _ := sessionPair(t)
		opened, accepted := openAccepted(t, client, server, "hello")
		waitFor(t, "the peer's ACK", func() bool { return !opened.Pending() })
		opened.Reset()
		accepted.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := accepted.Read(make([]byte, 10)); !errors.Is(err, ErrReset) {
			t.Fatalf("the acceptor's Read after the opener's Reset: %v; want ErrReset", err)
		}
	})
}

// TestStreamPendingUntilAccepted: an opened stream is Pending until the
// peer accepts it (its ACK), an accepted one never.
func TestStreamPendingUntilAccepted(t *testing.T) {
	client, server, _ := sessionPair(t)
	opened, err := client.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { opened.Close() })
	if !opened.Pending() {
		t.Fatal("an opened stream is not Pending before the peer accepted it")
	}
	accepted, err := server.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { accepted.Close() })
	if accepted.Pending() {
		t.Fatal("an accepted stream is Pending")
	}
	waitFor(t, "the opened stream to leave Pending after Accept", func() bool { return !opened.Pending() })
}

package relay

import (
	"bytes"
	"testing"

	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// pendingStream opens a stream on s.client that the server has not
// accepted: Pending until it does.
func pendingStream(t *testing.T, s *sessions) *session.Stream {
	t.Helper()
	st, err := s.client.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if !st.Pending() {
		t.Fatal("a stream just opened is not Pending")
	}
	return st
}

// TestUnackedKeepsUntilAccepted: what an entry sends into a stream is kept
// until the exit's ACK or status shows it accepted the stream, and then
// dropped; a stream that is not pending (the peer's) keeps nothing.
func TestUnackedKeepsUntilAccepted(t *testing.T) {
	s := sessionPair(t, false)
	st := pendingStream(t, s)
	var u Unacked
	u.keep(st, []byte("abc"))
	u.keep(st, []byte("def"))
	if string(u.Bytes()) != "abcdef" || u.Overflowed() {
		t.Fatalf("before the ACK: kept %q, overflowed %v; want abcdef, false", u.Bytes(), u.Overflowed())
	}
	acc, err := s.server.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { acc.Close() })
	waitFor(t, "the ACK", func() bool { return !st.Pending() })
	u.keep(st, []byte("ghi"))
	if u.Bytes() != nil || !u.Overflowed() {
		t.Fatalf("after the ACK: kept %q, done %v; want nothing, done", u.Bytes(), u.Overflowed())
	}

	var v Unacked
	st2 := pendingStream(t, s)
	v.keep(st2, []byte("abc"))
	v.release() // the status came
	v.keep(st2, []byte("def"))
	if v.Bytes() != nil || !v.Overflowed() {
		t.Fatalf("after release: kept %q, done %v; want nothing, done", v.Bytes(), v.Overflowed())
	}

	var w Unacked
	w.keep(acc, []byte("abc")) // the server's stream: the peer's, never pending
	if w.Bytes() != nil || !w.Overflowed() {
		t.Fatalf("a stream that is not pending: kept %q, done %v; want nothing, done", w.Bytes(), w.Overflowed())
	}

	var none *Unacked // an exit keeps nothing
	none.keep(st2, []byte("abc"))
	none.release()
}

// TestUnackedOverflow: past maxUnacked, Unacked drops what it kept and
// keeps nothing more.
func TestUnackedOverflow(t *testing.T) {
	s := sessionPair(t, false)
	st := pendingStream(t, s)
	var u Unacked
	chunk := bytes.Repeat([]byte{7}, maxUnacked/4)
	for range 4 {
		u.keep(st, chunk)
	}
	if len(u.Bytes()) != maxUnacked || u.Overflowed() {
		t.Fatalf("at the limit: kept %d, overflowed %v; want %d, false", len(u.Bytes()), u.Overflowed(), maxUnacked)
	}
	u.keep(st, []byte{1})
	if u.Bytes() != nil || !u.Overflowed() {
		t.Fatalf("past the limit: kept %d, overflowed %v; want nothing, true", len(u.Bytes()), u.Overflowed())
	}
	u.keep(st, []byte{1})
	if u.Bytes() != nil {
		t.Fatal("kept again after the overflow")
	}
}

// TestUnackedKeepRelease: the conn -> stream goroutine keeps chunks while
// the other direction releases on the exit's status; under -race, the two
// must not touch what is kept unlocked.
func TestUnackedKeepRelease(t *testing.T) {
	s := sessionPair(t, false)
	st := pendingStream(t, s)
	for range 3000 {
		var u Unacked
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 50 {
				u.keep(st, []byte("chunk"))
			}
		}()
		u.release()
		<-done
		if u.Bytes() != nil {
			t.Fatalf("kept %d bytes after release", len(u.Bytes()))
		}
	}
}

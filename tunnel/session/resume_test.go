package session

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/tunnel-dev/tunnel/frame"
)

// linkPair returns the two ends of a new link: record connections over
// loopback TCP with ACKs on, under fresh keys, and the client's TCP
// connection (closing it breaks the link).
func linkPair(t testing.TB) (client, server *frame.Conn, cut *net.TCPConn) {
	t.Helper()
	a, b := tcpPair(t)
	var k frame.Keys
	rand.Read(k.Send[:])
	rand.Read(k.Recv[:])
	cfg := &frame.Config{Acks: true}
	return frame.New(a, k, cfg), frame.New(b, frame.Keys{Send: k.Recv, Recv: k.Send, Transcript: k.Transcript}, cfg), a
}

// resumablePair returns a client and a server Session that resume within
// window, over a first link, and that link's client TCP connection.
func resumablePair(t testing.TB, window time.Duration) (client, server *Session, cut *net.TCPConn) {
	t.Helper()
	c, s, cut := linkPair(t)
	st := testSettings
	st.Resume = window
	client = resumableClient(t, c, st)
	server, err := Server(s, st, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server, cut
}

// resumableClient starts a client Session over c with settings st, closed
// by t.Cleanup.
func resumableClient(t testing.TB, c *frame.Conn, st Settings) *Session {
	t.Helper()
	client, err := Client(c, st, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

// resumeBoth gives both sessions a new link once both have seen the old
// one break, and returns the new link's client TCP connection.
func resumeBoth(t *testing.T, client, server *Session) *net.TCPConn {
	t.Helper()
	c, s, cut := linkPair(t)
	waitFor(t, "both sides to see the link down", func() bool { return client.Link().Down && server.Link().Down })
	if err := server.Resume(s); err != nil {
		t.Fatal(err)
	}
	if err := client.Resume(c); err != nil {
		t.Fatal(err)
	}
	return cut
}

// TestResumeBulkEcho: 24 MiB echoed through a stream while the link is cut
// five times arrive whole and in order (SHA-256 both ways), and the
// session's memory of unacknowledged bytes stays within maxKept.
func TestResumeBulkEcho(t *testing.T) {
	client, server, cut := resumablePair(t, 10*time.Second)
	go func() {
		st, err := server.Accept()
		if err != nil {
			return
		}
		io.Copy(st, st)
		st.CloseWrite()
	}()
	st, err := client.Open()
	if err != nil {
		t.Fatal(err)
	}
	const size = 24 << 20
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)

	got := make(chan [32]byte, 1)
	go func() {
		h := sha256.New()
		io.Copy(h, st)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	}()
	written := make(chan error, 1)
	go func() {
		for rest := data; len(rest) > 0; {
			n, err := st.Write(rest[:min(len(rest), 100_000)])
			if err != nil {
				written <- err
				return
			}
			rest = rest[n:]
		}
		written <- st.CloseWrite()
	}()
	mostKept := 0
	for i := range 5 {
		time.Sleep(time.Duration(20+i*15) * time.Millisecond)
		cut.Close()
		cut = resumeBoth(t, client, server)
		mostKept = max(mostKept, client.Link().Kept, server.Link().Kept)
	}
	if err := <-written; err != nil {
		t.Fatalf("write across the cuts: %v", err)
	}
	select {
	case sum := <-got:
		if sum != want {
			t.Fatal("the echo differs from what was sent")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the echo did not end")
	}
	l := client.Link()
	if l.Resumes != 5 || l.Down {
		t.Errorf("client link %+v, want 5 resumptions and up", l)
	}
	// Write waits once the bound is reached, so what is kept may pass it
	// by what one Write and one packed chunk add.
	if bound := maxKept + maxQueued + keptChunk; mostKept > bound {
		t.Errorf("kept %d bytes, over the bound %d", mostKept, bound)
	}
	t.Logf("client resent %d bytes, server %d; most kept %d", l.Resent, server.Link().Resent, mostKept)
}

// TestResumeWindowEnds: a link that does not come back within the window
// ends the session, and the stream fails.
func TestResumeWindowEnds(t *testing.T) {
	client, server, cut := resumablePair(t, 300*time.Millisecond)
	go func() {
		if st, err := server.Accept(); err == nil {
			io.Copy(io.Discard, st)
		}
	}()
	st, err := client.Open()
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("before"))
	cut.Close()
	select {
	case <-client.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session outlived its resumption window by 5s")
	}
	reason, clean := client.End()
	if clean || reason == nil || !bytes.Contains([]byte(reason.Error()), []byte("resumption window")) {
		t.Errorf("End = %v, %v; want the window named, not clean", reason, clean)
	}
	if _, err := st.Write([]byte("after")); err == nil {
		t.Error("a write on the ended session succeeded")
	}
	late, _, _ := linkPair(t)
	if err := client.Resume(late); err == nil {
		t.Error("Resume after the window succeeded")
	}
}

// TestResumeKeepAlive: a link that carries nothing back (a blackhole) is
// found broken by the keepalive probe, and the session parks.
func TestResumeKeepAlive(t *testing.T) {
	c, s, _ := linkPair(t)
	st := Settings{KeepAlive: 200 * time.Millisecond, Window: 256 << 10, Resume: time.Minute}
	client := resumableClient(t, c, st)
	// The server side is a record connection that reads nothing: no ACK
	// ever comes back.
	defer s.Close()
	start := time.Now()
	waitFor(t, "the keepalive to find the link broken", func() bool { return client.Link().Down })
	if d := time.Since(start); d < 2*st.KeepAlive {
		t.Errorf("link found broken after %v, before the probe timeout %v", d, 2*st.KeepAlive)
	}
}

// TestResumeBadAck: an ACK for more than was sent ends the session.
func TestResumeBadAck(t *testing.T) {
	c, s, _ := linkPair(t)
	st := testSettings
	st.Resume = time.Minute
	client := resumableClient(t, c, st)
	defer s.Close()
	if err := s.WriteAck(1<<40, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-client.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the session lived on after an ACK beyond what was sent")
	}
	if reason, _ := client.End(); reason == nil || !bytes.Contains([]byte(reason.Error()), []byte("acknowledged")) {
		t.Errorf("End = %v, want the bad ACK named", reason)
	}
}

// TestNotResumable: without Resume a cut ends the session as before.
func TestNotResumable(t *testing.T) {
	client, _, serverConn := sessionPair(t)
	serverConn.Close()
	select {
	case <-client.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a cut did not end a session that cannot resume")
	}
	fresh, _, _ := linkPair(t)
	if err := client.Resume(fresh); err == nil {
		t.Error("Resume of a session that cannot resume succeeded")
	}
}

// TestResumeNotAfterBadRecord: a record that fails authentication ends a
// resumable session, as it ends any: only the transport's failures park
// it, so that nothing injected on the path passes for a broken link.
func TestResumeNotAfterBadRecord(t *testing.T) {
	c, s, _ := linkPair(t)
	st := testSettings
	st.Resume = time.Minute
	client := resumableClient(t, c, st)
	defer s.Close()
	forged := make([]byte, 4+16+1+32)
	forged[3] = byte(len(forged) - 4)
	rand.Read(forged[4:])
	if _, err := s.NetConn().Write(forged); err != nil {
		t.Fatal(err)
	}
	select {
	case <-client.Done():
	case <-client.LinkDown():
		t.Fatal("a forged record parked the session for resumption")
	case <-time.After(5 * time.Second):
		t.Fatal("the session lived on after a forged record")
	}
	if reason, _ := client.End(); !errors.Is(reason, frame.ErrAuth) {
		t.Errorf("End = %v, want the record's authentication failure", reason)
	}
}

// TestResumeCloseIsNotABreak: closing a resumable session, on either side,
// ends it on both, with no side parking it for a resumption (a parked
// session would be kept, with all it holds, for its window).
func TestResumeCloseIsNotABreak(t *testing.T) {
	for _, closer := range []string{"client", "server"} {
		t.Run(closer, func(t *testing.T) {
			client, server, _ := resumablePair(t, time.Minute)
			a, b := client, server
			if closer == "server" {
				a, b = server, client
			}
			a.Close()
			for _, s := range []*Session{a, b} {
				select {
				case <-s.Done():
				case <-s.LinkDown():
					t.Fatal("a closed session parked for resumption")
				case <-time.After(5 * time.Second):
					t.Fatal("a closed session lived on")
				}
				select {
				case <-s.LinkDown():
					t.Fatal("a closed session parked for resumption")
				default:
				}
			}
		})
	}
}

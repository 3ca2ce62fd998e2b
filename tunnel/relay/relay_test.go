package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// TestIdleConnectionsHoldNoBuffers: connections that have moved data both
// ways and now wait hold no copy buffer on either side, and a burst
// borrows them only while it moves.
func TestIdleConnectionsHoldNoBuffers(t *testing.T) {
	s := sessionPair(t, false)
	entryPool, exitPool := NewPool(), NewPool()
	var echoes sync.WaitGroup
	t.Cleanup(echoes.Wait)
	var apps []*net.TCPConn
	for range 20 {
		e := startEntry(t, s, options(entryPool), nil, true)
		x := startExit(t, s, options(exitPool), nil)
		echoes.Add(1)
		go func() {
			defer echoes.Done()
			io.Copy(x.backend, x.backend)
			x.backend.CloseWrite()
		}()
		apps = append(apps, e.app)
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB each
	var writers sync.WaitGroup
	for _, c := range apps {
		writers.Add(1)
		go func() {
			defer writers.Done()
			c.Write(msg)
		}()
	}
	got := make([]byte, len(msg))
	for _, c := range apps {
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo: %v", err)
		}
	}
	writers.Wait()
	waitFor(t, "copy buffers given back by idle connections", func() bool {
		return entryPool.Lent() == 0 && exitPool.Lent() == 0
	})
	// Still usable after waiting without buffers.
	for _, c := range apps {
		c.Write([]byte("again"))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "again" {
			t.Fatalf("after idling: %q, %v", buf, err)
		}
	}
}

// TestResetTravelsToBackend: an application that aborts its connection
// (SO_LINGER 0) makes the backend's connection abort too, not end cleanly.
func TestResetTravelsToBackend(t *testing.T) {
	s := sessionPair(t, false)
	e := startEntry(t, s, options(NewPool()), nil, true)
	x := startExit(t, s, options(NewPool()), nil)
	e.app.Write([]byte("hello"))
	buf := make([]byte, 5)
	x.backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(x.backend, buf); err != nil {
		t.Fatalf("backend: %v", err)
	}
	waitFor(t, "the exit's ACK", func() bool { return !e.st.Pending() })
	e.app.SetLinger(0)
	e.app.Close()
	if _, err := x.backend.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("backend read after the application's reset: %v; want ECONNRESET", err)
	}
	if r := waitResult(t, "entry", e.result); r.End != Failed || !errors.Is(r.Err, syscall.ECONNRESET) {
		t.Errorf("entry: %v, %v; want Failed, ECONNRESET", r.End, r.Err)
	}
	if r := waitResult(t, "exit", x.result); r.End != PeerReset || !r.Aborted() {
		t.Errorf("exit: %v; want PeerReset", r.End)
	}
}

// TestResetTravelsToApplication: a backend that aborts its connection makes
// the application's connection abort too, after what it sent before.
func TestResetTravelsToApplication(t *testing.T) {
	s := sessionPair(t, false)
	e := startEntry(t, s, options(NewPool()), nil, true)
	x := startExit(t, s, options(NewPool()), nil)
	e.app.Write([]byte("hello"))
	buf := make([]byte, 5)
	x.backend.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(x.backend, buf); err != nil {
		t.Fatalf("backend: %v", err)
	}
	x.backend.Write([]byte("bye"))
	e.app.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(e.app, buf[:3]); err != nil || string(buf[:3]) != "bye" {
		t.Fatalf("application read %q, %v; want \"bye\"", buf[:3], err)
	}
	x.backend.SetLinger(0)
	x.backend.Close()
	if n, err := e.app.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("application read %q, %v after the backend's reset; want ECONNRESET", buf[:n], err)
	}
	if r := waitResult(t, "exit", x.result); r.End != Failed || !errors.Is(r.Err, syscall.ECONNRESET) {
		t.Errorf("exit: %v, %v; want Failed, ECONNRESET", r.End, r.Err)
	}
	if r := waitResult(t, "entry", e.result); r.End != PeerReset || !errors.Is(r.Err, session.ErrReset) {
		t.Errorf("entry: %v, %v; want PeerReset, ErrReset", r.End, r.Err)
	}
}

func randomBytes(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestPlainConnRelayed: a connection that is not a socket (no
// SyscallConn, no CloseWrite) is relayed through its own Read and Write,
// at the entry, at the exit or both, bytes intact both ways, and the pair
// ends Clean with the right counts.
func TestPlainConnRelayed(t *testing.T) {
	plain := func(c net.Conn) net.Conn { return plainConn{c} }
	for _, c := range []struct {
		name        string
		entry, exit func(net.Conn) net.Conn
	}{
		{"entry", plain, nil},
		{"exit", nil, plain},
		{"both", plain, plain},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := sessionPair(t, false)
			entryPool, exitPool := NewPool(), NewPool()
			e := startEntry(t, s, options(entryPool), c.entry, true)
			x := startExit(t, s, options(exitPool), c.exit)
			req, resp := randomBytes(1<<20+3, 1), randomBytes(700<<10+1, 2)

			backend := make(chan error, 1)
			go func() {
				x.backend.SetDeadline(time.Now().Add(20 * time.Second))
				got := make([]byte, len(req))
				if _, err := io.ReadFull(x.backend, got); err != nil || !bytes.Equal(got, req) {
					backend <- fmt.Errorf("backend read the request: %v, intact %v", err, bytes.Equal(got, req))
					return
				}
				if _, err := x.backend.Write(resp); err != nil {
					backend <- err
					return
				}
				x.backend.CloseWrite()
				rest, err := io.ReadAll(x.backend) // EOF once the pair ends
				if err != nil || len(rest) != 0 {
					backend <- fmt.Errorf("backend after the request: %d more bytes, %v; want EOF", len(rest), err)
					return
				}
				backend <- nil
			}()
			go func() {
				e.app.Write(req)
				e.app.CloseWrite()
			}()
			e.app.SetReadDeadline(time.Now().Add(20 * time.Second))
			got, err := io.ReadAll(e.app)
			if err != nil || !bytes.Equal(got, resp) {
				t.Fatalf("application read %d bytes, %v; want the %d-byte response intact and EOF", len(got), err, len(resp))
			}
			if err := <-backend; err != nil {
				t.Fatal(err)
			}
			er, xr := waitResult(t, "entry", e.result), waitResult(t, "exit", x.result)
			if er.End != Clean || er.ToStream != int64(len(req)) || er.FromStream != int64(len(resp)) || er.Err != nil {
				t.Errorf("entry: %+v; want Clean, %d to the stream, %d from it", er, len(req), len(resp))
			}
			if xr.End != Clean || xr.ToStream != int64(len(resp)) || xr.FromStream != int64(len(req)) || xr.Err != nil {
				t.Errorf("exit: %+v; want Clean, %d to the stream, %d from it", xr, len(resp), len(req))
			}
			if entryPool.Lent() != 0 || exitPool.Lent() != 0 {
				t.Errorf("buffers still lent after the pair ended: entry %d, exit %d", entryPool.Lent(), exitPool.Lent())
			}
		})
	}
}

// readStream reads st until EOF or error, up to 10 s.
func readStream(st *session.Stream) ([]byte, error) {
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	return io.ReadAll(st)
}

// TestEnds: how an entry's pair ends, with the test playing the exit on
// the server's stream: each End of the table in relay.go.
func TestEnds(t *testing.T) {
	// accept takes the entry's stream on the server and reads "hello" from it.
	accept := func(t *testing.T, s *sessions) *session.Stream {
		t.Helper()
		st, err := s.server.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		buf := make([]byte, 5)
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(st, buf); err != nil || string(buf) != "hello" {
			t.Fatalf("the exit read %q, %v; want hello", buf, err)
		}
		return st
	}
	// appReset checks that the application's connection was reset.
	appReset := func(t *testing.T, e *opened) {
		t.Helper()
		e.app.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(e.app); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("application: %v; want ECONNRESET", err)
		}
	}

	t.Run("Clean", func(t *testing.T) {
		s := sessionPair(t, false)
		pool := NewPool()
		e := startEntry(t, s, options(pool), nil, true)
		e.app.Write([]byte("hello"))
		e.app.CloseWrite()
		st := accept(t, s)
		if rest, err := readStream(st); err != nil || len(rest) != 0 {
			t.Fatalf("the exit read %q, %v after hello; want EOF", rest, err)
		}
		st.Write([]byte("world!"))
		st.CloseWrite()
		e.app.SetReadDeadline(time.Now().Add(10 * time.Second))
		if got, err := io.ReadAll(e.app); string(got) != "world!" || err != nil {
			t.Fatalf("application read %q, %v; want world! and EOF", got, err)
		}
		r := waitResult(t, "entry", e.result)
		if r.End != Clean || r.Err != nil || r.ToStream != 5 || r.FromStream != 6 || r.Aborted() {
			t.Fatalf("entry: %+v; want Clean, 5 to the stream, 6 from it", r)
		}
		if pool.Lent() != 0 {
			t.Fatalf("%d buffers lent after the pair ended", pool.Lent())
		}
	})

	t.Run("PeerReset", func(t *testing.T) {
		s := sessionPair(t, false)
		e := startEntry(t, s, options(NewPool()), nil, true)
		e.app.Write([]byte("hello"))
		accept(t, s).Reset()
		appReset(t, e)
		r := waitResult(t, "entry", e.result)
		if r.End != PeerReset || !r.Aborted() || !errors.Is(r.Err, session.ErrReset) {
			t.Fatalf("entry: %+v; want PeerReset with ErrReset", r)
		}
	})

	t.Run("Lost", func(t *testing.T) {
		s := sessionPair(t, false)
		e := startEntry(t, s, options(NewPool()), nil, true)
		e.app.Write([]byte("hello"))
		accept(t, s)
		s.serverConn.Close() // the session is cut: no CLOSE, no FIN
		appReset(t, e)
		r := waitResult(t, "entry", e.result)
		if r.End != Lost || !r.Aborted() || !errors.Is(r.Err, ErrSessionLost) {
			t.Fatalf("entry: %+v; want Lost with ErrSessionLost", r)
		}
	})

	t.Run("Failed", func(t *testing.T) {
		s := sessionPair(t, false)
		e := startEntry(t, s, options(NewPool()), nil, true)
		e.app.Write([]byte("hello"))
		st := accept(t, s)
		waitFor(t, "the exit's ACK", func() bool { return !e.st.Pending() })
		e.app.SetLinger(0)
		e.app.Close()
		if _, err := readStream(st); !errors.Is(err, session.ErrReset) {
			t.Errorf("the exit's stream after the application's reset: %v; want ErrReset", err)
		}
		r := waitResult(t, "entry", e.result)
		if r.End != Failed || r.Aborted() || !errors.Is(r.Err, syscall.ECONNRESET) {
			t.Fatalf("entry: %+v; want Failed with ECONNRESET", r)
		}
	})

	t.Run("FailedByCaller", func(t *testing.T) {
		s := sessionPair(t, false)
		e := startEntry(t, s, options(NewPool()), nil, false)
		e.app.Write([]byte("hello"))
		st := accept(t, s)
		waitFor(t, "the exit's ACK", func() bool { return !e.st.Pending() })
		errStatus := errors.New("the exit's status did not come")
		r := e.r.Fail(errStatus)
		if r.End != Failed || r.Err != errStatus {
			t.Fatalf("Fail: %+v; want Failed with the caller's error", r)
		}
		appReset(t, e)
		// Fail does not tell the peer: the stream ends with the FIN of Close.
		if _, err := readStream(st); err != nil {
			t.Errorf("the exit's stream after Fail: %v; want EOF", err)
		}
	})

	// The exit refuses a stream whose open crossed its GoAway with a RST
	// and no ACK. The client reads nothing of the server's until the
	// server has sent GoAway and refused the stream, so that it can open
	// a stream after the exit's GoAway.
	for _, keep := range []bool{true, false} {
		name := "NotAccepted"
		if !keep {
			name = "RefusedWithoutUnacked"
		}
		t.Run(name, func(t *testing.T) {
			s := sessionPair(t, true)
			if err := s.server.GoAway(); err != nil {
				t.Fatal(err)
			}
			pool := NewPool()
			o := options(pool)
			var u *Unacked
			if keep {
				u = new(Unacked)
				o.Unacked = u
			}
			e := startEntry(t, s, o, nil, false)
			e.app.Write([]byte("hello"))
			if keep {
				waitFor(t, "hello kept before the exit's ACK", func() bool { return string(u.Bytes()) == "hello" })
			}
			s.release()
			// The entry waits for the exit's status on the stream.
			e.st.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := e.st.Read(make([]byte, 1))
			if !errors.Is(err, session.ErrReset) || !e.st.Pending() {
				t.Fatalf("the status read: %v, Pending %v; want ErrReset, true", err, e.st.Pending())
			}
			r := e.r.Fail(err)
			if !keep {
				// Fail aborts; the conn -> stream direction may see the
				// reset first and make it PeerReset: both cut the app.
				if r.End != Failed && r.End != PeerReset {
					t.Fatalf("without Unacked: %+v; want Failed or PeerReset", r)
				}
				appReset(t, e)
				return
			}
			if r.End != NotAccepted {
				t.Fatalf("Fail: %+v; want NotAccepted", r)
			}
			if string(u.Bytes()) != "hello" || u.Overflowed() {
				t.Fatalf("Unacked kept %q, overflowed %v; want hello, false", u.Bytes(), u.Overflowed())
			}
			// The connection is handed back open and unread: what the
			// application sends next is there to read.
			agent := e.r.conn
			e.app.Write([]byte("more"))
			buf := make([]byte, 4)
			agent.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(agent, buf); err != nil || string(buf) != "more" {
				t.Fatalf("the handed-back connection read %q, %v; want more", buf, err)
			}
			agent.Write([]byte("ok"))
			e.app.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(e.app, buf[:2]); err != nil || string(buf[:2]) != "ok" {
				t.Fatalf("the application read %q, %v; want ok: its connection was not left open", buf[:2], err)
			}
			if pool.Lent() != 0 {
				t.Fatalf("%d buffers lent after NotAccepted", pool.Lent())
			}
		})
	}
}

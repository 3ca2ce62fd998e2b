package mitm

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// Agent settings of every test: short timeouts, so that a case that fails
// by timing out does so quickly. The entry gives up its handshakes before
// the exit does, so each side's own bound shows in the logs. Resumption is
// off: the catalogue's cuts and blackholes are of sessions that end with
// their connection (a record that fails its checks ends a session either
// way); what a resumable session does across them is tested in
// integration/e2e (resume_test.go), and the resumption's own messages in
// handshake (resume_test.go, every field tampered with).
var (
	entryFlags = []string{"--dial-timeout", "2s", "--handshake-timeout", "3s", "--resume-window", "0"}
	exitFlags  = []string{"--handshake-timeout", "4s", "--dial-timeout", "2s", "--resume-window", "0"}
)

// rig is a full tunnel with the attacker in the middle:
// client -> entry -> proxy -> exit -> backend.
type rig struct {
	rec     *recorder
	backend *harness.Backend
	exit    *harness.Agent
	proxy   *proxy
	entry   *harness.Agent
}

// rigOptions vary a rig.
type rigOptions struct {
	sinks      int      // the backend's first sinks connections only receive; the others echo
	entryFlags []string // instead of entryFlags
	exitExtra  []string // after exitFlags
}

// newRig starts a recording backend, an exit, a pass-through proxy and an
// entry, and waits until the entry's session is up.
func newRig(t *testing.T, e *harness.Rig, o rigOptions) *rig {
	t.Helper()
	r := &rig{rec: newRecorder(o.sinks)}
	r.backend = harness.StartBackend(t, r.rec.handle)
	r.exit = e.StartExit(t, r.backend.Addr(), harness.Options{Args: append(slices.Clone(exitFlags), o.exitExtra...)})
	r.proxy = startProxy(t, r.exit.Addr, passThrough, false)
	if o.entryFlags == nil {
		o.entryFlags = entryFlags
	}
	r.entry = e.StartEntry(t, r.proxy.addr(), harness.Options{Args: o.entryFlags})
	r.entry.WaitMessage(t, 1, logWait, "session established")
	return r
}

// checkStreamAborted checks that both agents logged the end of the first
// stream (the attacked one) as an abort, not as a normal close.
func (r *rig) checkStreamAborted(t testing.TB) {
	t.Helper()
	for _, c := range []struct {
		who string
		p   *harness.Agent
		msg string
	}{{"entry", r.entry, "connection closed"}, {"exit", r.exit, "stream closed"}} {
		l := c.p.WaitMessage(t, 1, logWait, c.msg)
		if l.Fields["aborted"] != true {
			t.Errorf("%s logged the end of a stream that the attack cut as a normal close (no aborted:true): %s", c.who, l.Raw)
		} else {
			t.Logf("%s: %s", c.who, l.Raw)
		}
	}
}

// Log messages of the agents.
const (
	msgEntryLost   = "session with the exit lost; reconnecting"
	msgExitClosed  = "session closed"
	msgEntryNoSess = "cannot establish a session with the exit"
	msgExitHSFail  = "handshake failed"
)

// peerEnded is what the agent that did not detect an attack must log about
// its session's end: its peer closed (no CLOSE: truncated) or reset the
// connection. "closed locally" or "use of closed network connection" would
// not tell a reader what happened.
const peerEnded = "truncated|connection reset by peer|broken pipe"

// logWait bounds the wait for an agent's log line.
const logWait = 20 * time.Second

// requireLine fails the test unless line contains every one of specs; a
// spec "a|b" is satisfied by either a or b.
func requireLine(t testing.TB, who string, l harness.Line, specs ...string) {
	t.Helper()
	for _, spec := range specs {
		ok := false
		for _, s := range strings.Split(spec, "|") {
			ok = ok || harness.Contains(s)(l)
		}
		if !ok {
			t.Errorf("%s logged %s\nwant it to contain %q", who, l.Raw, spec)
		}
	}
}

// payload is the deterministic byte stream a client sends, named by its
// seed, so that any prefix can be checked later.
type payload uint64

func (p payload) gen() *rand.ChaCha8 {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], uint64(p))
	return rand.NewChaCha8(s)
}

// prefixSum is the SHA-256 of the first n bytes of the stream.
func (p payload) prefixSum(n int64) [32]byte {
	h := sha256.New()
	io.CopyN(h, p.gen(), n)
	return [32]byte(h.Sum(nil))
}

// echoMask is what the backend XORs into the bytes it echoes, like
// harness.HashEcho, so that an echo cannot be a reflected request.
const echoMask = harness.EchoMask

// recorder is a backend handler that records, per connection, how many
// bytes it received, their SHA-256 and how the connection ended. Past its
// first sinks connections, which only receive, it behaves like
// harness.HashEcho: it echoes every byte XORed with echoMask, and at EOF
// sends the SHA-256 of what it received.
type recorder struct {
	sinks int

	mu      sync.Mutex
	conns   []*recording
	changed chan struct{} // closed and replaced when a connection is added
}

// recording is what the backend saw of one connection. Its fields are
// final once done is closed.
type recording struct {
	n    int64
	sum  [32]byte
	end  error // io.EOF: a clean end; otherwise the first read or write error
	done chan struct{}
}

func newRecorder(sinks int) *recorder {
	return &recorder{sinks: sinks, changed: make(chan struct{})}
}

func (r *recorder) handle(c net.Conn) {
	rc := &recording{done: make(chan struct{})}
	r.mu.Lock()
	echo := len(r.conns) >= r.sinks
	r.conns = append(r.conns, rc)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()

	h := sha256.New()
	defer func() {
		rc.sum = [32]byte(h.Sum(nil))
		close(rc.done)
	}()
	buf := make([]byte, 64<<10)
	for {
		c.SetDeadline(time.Now().Add(time.Minute))
		n, err := c.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			rc.n += int64(n)
			if echo {
				for i := range buf[:n] {
					buf[i] ^= echoMask
				}
				if _, werr := c.Write(buf[:n]); werr != nil {
					rc.end = werr
					return
				}
			}
		}
		if err != nil {
			rc.end = err
			if err == io.EOF && echo {
				c.Write(h.Sum(nil))
			}
			return
		}
	}
}

// wait waits for the backend's i-th connection to end and returns it.
func (r *recorder) wait(t testing.TB, i int, timeout time.Duration) *recording {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		var rc *recording
		if i < len(r.conns) {
			rc = r.conns[i]
		}
		changed := r.changed
		r.mu.Unlock()
		if rc != nil {
			select {
			case <-rc.done:
				return rc
			case <-deadline:
				t.Fatalf("backend connection %d still open after %v: the tunnel did not tear it down", i, timeout)
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("backend connection %d never came within %v", i, timeout)
		}
	}
}

// isAbort reports an error that means the peer reset the connection.
func isAbort(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// checkBackendAborted checks the backend's view of connection i: it got an
// exact prefix of what the client sent (no more than sent bytes), and the
// connection ended in a reset, never a clean EOF.
func checkBackendAborted(t testing.TB, rec *recorder, i int, pay payload, sent int64) *recording {
	t.Helper()
	rc := rec.wait(t, i, 30*time.Second)
	if rc.n > sent {
		t.Errorf("backend received %d bytes, but the client sent only %d", rc.n, sent)
	} else if rc.sum != pay.prefixSum(rc.n) {
		t.Errorf("backend received %d bytes that are NOT the first %d bytes the client sent: altered data was released", rc.n, rc.n)
	}
	switch {
	case rc.end == io.EOF:
		t.Errorf("backend saw a clean EOF after %d of %d bytes: it could commit a truncated request; want a reset", rc.n, sent)
	case !isAbort(rc.end):
		t.Errorf("backend connection ended with %v after %d bytes; want connection reset by peer", rc.end, rc.n)
	}
	t.Logf("backend: received %d of %d bytes, then %v", rc.n, sent, rc.end)
	return rc
}

// client is an application connection through the tunnel that sends the
// payload stream and checks, byte by byte, that what comes back is the
// backend's echo of it.
type client struct {
	c    *net.TCPConn
	pay  payload
	wgen *rand.ChaCha8

	sent     int64 // written by the test goroutine only
	writeErr error

	mu      sync.Mutex
	got     int64 // echoed bytes received and verified
	changed chan struct{}
	res     chan readResult // the reader's end, sent once
}

type readResult struct {
	n   int64 // bytes received
	bad int64 // offset of the first byte that is not the echo of what was sent, or -1
	err error // what ended reading
}

func dialClient(t testing.TB, addr string, seed uint64) *client {
	t.Helper()
	cl := &client{c: harness.Dial(t, addr, 40*time.Second), pay: payload(seed), wgen: payload(seed).gen(),
		changed: make(chan struct{}), res: make(chan readResult, 1)}
	go cl.read()
	return cl
}

func (cl *client) read() {
	exp := cl.pay.gen()
	buf := make([]byte, 64<<10)
	want := make([]byte, 64<<10)
	var n int64
	for {
		k, err := cl.c.Read(buf)
		if k > 0 {
			exp.Read(want[:k])
			for i := range want[:k] {
				want[i] ^= echoMask
			}
			if !bytes.Equal(buf[:k], want[:k]) {
				i := 0
				for buf[i] == want[i] {
					i++
				}
				cl.res <- readResult{n: n + int64(k), bad: n + int64(i), err: err}
				return
			}
			n += int64(k)
			cl.mu.Lock()
			cl.got = n
			close(cl.changed)
			cl.changed = make(chan struct{})
			cl.mu.Unlock()
		}
		if err != nil {
			cl.res <- readResult{n: n, bad: -1, err: err}
			return
		}
	}
}

// write sends the next n bytes of the payload; it records a failure.
func (cl *client) write(n int) error {
	b := make([]byte, n)
	cl.wgen.Read(b)
	k, err := cl.c.Write(b)
	cl.sent += int64(k)
	if err != nil && cl.writeErr == nil {
		cl.writeErr = err
	}
	return err
}

// exchange sends n bytes and waits until their echo has come back intact.
func (cl *client) exchange(t testing.TB, n int) {
	t.Helper()
	if err := cl.write(n); err != nil {
		t.Fatalf("client write: %v", err)
	}
	deadline := time.After(20 * time.Second)
	for {
		cl.mu.Lock()
		got, changed := cl.got, cl.changed
		cl.mu.Unlock()
		if got >= cl.sent {
			return
		}
		select {
		case <-changed:
		case r := <-cl.res:
			t.Fatalf("client: echo ended early after %d of %d bytes (bad byte at %d): %v", r.n, cl.sent, r.bad, r.err)
		case <-deadline:
			t.Fatalf("client: echo of %d bytes incomplete after 20s (%d back)", cl.sent, got)
		}
	}
}

// checkAborted waits for the client's connection to end and checks that
// every byte received was the echo of a byte sent, and that the end was a
// reset (seen by the reader, or by a writer that took the error first), not
// a clean EOF and not a hang.
func (cl *client) checkAborted(t testing.TB) readResult {
	t.Helper()
	var r readResult
	select {
	case r = <-cl.res:
	case <-time.After(45 * time.Second):
		t.Fatalf("client connection not torn down")
	}
	if r.bad >= 0 {
		t.Errorf("client received a byte at offset %d that the backend did not send: altered data was released", r.bad)
	}
	if r.n > cl.sent {
		t.Errorf("client received %d bytes of echo, but sent only %d", r.n, cl.sent)
	}
	var ne net.Error
	switch {
	case errors.As(r.err, &ne) && ne.Timeout():
		t.Errorf("client connection still open at its deadline: the tunnel did not tear it down")
	case r.err == io.EOF && !isAbort(cl.writeErr):
		t.Errorf("client saw a clean EOF after %d bytes; want a reset", r.n)
	case r.err != io.EOF && !isAbort(r.err):
		t.Errorf("client connection ended with %v; want connection reset by peer", r.err)
	}
	t.Logf("client: received %d bytes of echo for %d sent, then %v (write error %v)", r.n, cl.sent, r.err, cl.writeErr)
	return r
}

// checkRecovers runs a fresh exchange through the entry: after the
// attacker's connection died, the agents reconnect and work.
func checkRecovers(t testing.TB, addr string) {
	t.Helper()
	var err error
	for attempt := range 5 {
		if attempt > 0 {
			time.Sleep(200 * time.Millisecond)
		}
		if err = harness.Exchange(addr, 100<<10, 99, 20*time.Second); err == nil {
			return
		}
	}
	t.Errorf("no working tunnel after the attack: %v", err)
}

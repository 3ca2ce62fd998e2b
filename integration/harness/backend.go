package harness

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Backend is a TCP server on 127.0.0.1 that runs a handler per accepted
// connection. Its methods are safe for concurrent use.
type Backend struct {
	ln       net.Listener
	handle   func(net.Conn)
	accepted atomic.Int64
	wg       sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// StartBackend listens on 127.0.0.1:0 and serves every connection with
// handle in its own goroutine; the connection is closed when handle
// returns. t.Cleanup closes the listener and every open connection and
// waits for the handlers to return.
func StartBackend(t testing.TB, handle func(net.Conn)) *Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	return ServeBackend(t, ln, handle)
}

// ServeBackend is StartBackend on a listener the caller made, e.g. on a
// chosen address; the Backend owns ln from then on.
func ServeBackend(t testing.TB, ln net.Listener, handle func(net.Conn)) *Backend {
	t.Helper()
	b := &Backend{ln: ln, handle: handle, conns: make(map[net.Conn]struct{})}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.Close)
	return b
}

func (b *Backend) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			c.Close()
			return
		}
		b.conns[c] = struct{}{}
		b.accepted.Add(1)
		b.wg.Add(1)
		b.mu.Unlock()
		go func() {
			defer b.wg.Done()
			defer func() {
				b.mu.Lock()
				delete(b.conns, c)
				b.mu.Unlock()
				c.Close()
			}()
			b.handle(c)
		}()
	}
}

// Addr returns the backend's address, "127.0.0.1:port".
func (b *Backend) Addr() string { return b.ln.Addr().String() }

// Accepted returns how many connections the backend has accepted.
func (b *Backend) Accepted() int64 { return b.accepted.Load() }

// Close stops the backend: it closes the listener and open connections and
// waits for the handlers. It is idempotent.
func (b *Backend) Close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		b.ln.Close()
		for c := range b.conns {
			c.Close()
		}
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// EchoMask is XORed into every byte HashEcho sends back, so that a reply
// cannot be mistaken for the request reflected unchanged.
const EchoMask = 0xA5

// HashEcho is a Backend handler. It sends back every byte it receives,
// XORed with EchoMask, as it arrives; when the client closes its write side
// (EOF), it writes the 32-byte SHA-256 of everything it received and closes
// the connection. A connection idle for a minute is dropped.
func HashEcho(c net.Conn) {
	h := sha256.New()
	buf := make([]byte, 32<<10)
	for {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		n, err := c.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			for i := range buf[:n] {
				buf[i] ^= EchoMask
			}
			c.SetWriteDeadline(time.Now().Add(time.Minute))
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			c.Write(h.Sum(nil))
			return
		}
		if err != nil {
			return
		}
	}
}

// StartHashEcho starts a Backend serving HashEcho.
func StartHashEcho(t testing.TB) *Backend {
	t.Helper()
	return StartBackend(t, HashEcho)
}

// HalfCloser is a connection whose write side can be closed alone, such as
// *net.TCPConn.
type HalfCloser interface {
	net.Conn
	CloseWrite() error
}

// HashEchoExchange runs one exchange with a HashEcho server over c: it
// writes size pseudo-random bytes derived from seed in chunks of varying
// size, then closes its write side, while concurrently reading the reply.
// It returns nil only if the reply is exactly the payload XORed with
// EchoMask followed by the SHA-256 of the payload, and then EOF. The
// payload is generated and checked as a stream, so size may be large. The
// caller sets deadlines on c and closes it; on a failed check
// HashEchoExchange closes c itself so that its writer stops.
func HashEchoExchange(c HalfCloser, size int64, seed uint64) error {
	var sent, want [32]byte // SHA-256 of the payload and of the expected echo
	werr := make(chan error, 1)
	go func() {
		var s [32]byte
		binary.LittleEndian.PutUint64(s[:], seed)
		src := rand.NewChaCha8(s)
		chunks := rand.New(rand.NewPCG(seed, 1))
		hs, hw := sha256.New(), sha256.New()
		buf := make([]byte, 64<<10)
		masked := make([]byte, 64<<10)
		for left := size; left > 0; {
			n := int64(1 + chunks.IntN(len(buf)))
			n = min(n, left)
			p := buf[:n]
			src.Read(p)
			hs.Write(p)
			for i, x := range p {
				masked[i] = x ^ EchoMask
			}
			hw.Write(masked[:n])
			if _, err := c.Write(p); err != nil {
				werr <- fmt.Errorf("writing payload at %d of %d bytes: %w", size-left, size, err)
				return
			}
			left -= n
		}
		hs.Sum(sent[:0])
		hw.Sum(want[:0])
		if err := c.CloseWrite(); err != nil {
			werr <- fmt.Errorf("close write: %w", err)
			return
		}
		werr <- nil
	}()

	// fail closes c so that the writer, if blocked, returns too.
	fail := func(format string, args ...any) error {
		c.Close()
		<-werr
		return fmt.Errorf(format, args...)
	}
	hr := sha256.New()
	if got, err := io.CopyN(hr, c, size); err != nil {
		return fail("reading echo: got %d of %d bytes: %w", got, size, err)
	}
	var trailer [32]byte
	if _, err := io.ReadFull(c, trailer[:]); err != nil {
		return fail("reading digest after %d echoed bytes: %w", size, err)
	}
	var extra [1]byte
	if n, err := c.Read(extra[:]); n != 0 {
		return fail("after the digest: read %d more bytes; want EOF", n)
	} else if err != io.EOF {
		// A reset here is an abort after complete data (the tunnel died
		// before the stream's FIN): wrapped so that callers can tell.
		return fail("after the digest: %w; want EOF", err)
	}
	if err := <-werr; err != nil {
		return err
	}
	if !equal32(hr.Sum(nil), want) {
		return errors.New("echoed bytes differ from the payload sent (SHA-256 mismatch)")
	}
	if trailer != sent {
		return errors.New("backend's SHA-256 of what it received differs from the payload sent")
	}
	return nil
}

func equal32(a []byte, b [32]byte) bool { return [32]byte(a) == b }

// EchoBack writes p to c, a connection to a HashEcho server, then reads
// the echo of p and checks every byte of it. It neither closes c nor reads
// the digest HashEcho sends after the client's EOF, so the caller may close
// c both ways at once. p must fit the socket buffers, since all of it is
// written before anything is read.
func EchoBack(c net.Conn, p []byte) error {
	if _, err := c.Write(p); err != nil {
		return fmt.Errorf("writing %d bytes: %w", len(p), err)
	}
	got := make([]byte, len(p))
	if n, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the echo: got %d of %d bytes: %w", n, len(p), err)
	}
	for i, b := range got {
		if b != p[i]^EchoMask {
			return fmt.Errorf("byte %d of the %d-byte echo differs from the payload sent", i, len(p))
		}
	}
	return nil
}

// Dial connects to addr (giving up after 10 s), sets a deadline of timeout
// from now on the connection, and closes it in t.Cleanup.
func Dial(t testing.TB, addr string, timeout time.Duration) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(timeout))
	return c.(*net.TCPConn)
}

// Exchange connects to addr and runs one HashEchoExchange of size bytes
// from seed over the connection, within timeout after the dial.
func Exchange(addr string, size int64, seed uint64, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	return HashEchoExchange(c.(*net.TCPConn), size, seed)
}

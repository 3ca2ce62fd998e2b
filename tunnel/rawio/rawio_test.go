package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// rawPair returns a rawConn over one end of a loopback TCP connection, and
// the other end.
func rawPair(t *testing.T) (*Conn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewConn(c.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); peer.Close() })
	return r, peer.(*net.TCPConn)
}

// TestRawConnWriteAll: a Write larger than the socket buffers returns only
// once all of it is written, the peer reading late; Read gets it all back.
func TestRawConnWriteAll(t *testing.T) {
	r, peer := rawPair(t)
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // the writer meets a full buffer first
		b, _ := io.ReadAll(io.LimitReader(peer, int64(len(data))))
		got <- b
		peer.Write(b) // and back
	}()
	if n, err := r.Write(data); n != len(data) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(data))
	}
	back := make([]byte, len(data))
	if _, err := io.ReadFull(r, back); err != nil || !bytes.Equal(back, data) {
		t.Fatalf("reading it back: %v", err)
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatal("the peer received other bytes than were written")
	}
}

// TestRawConnEnds: the peer's FIN reads as io.EOF, a reset as ECONNRESET,
// and a Read after Close as net.ErrClosed.
func TestRawConnEnds(t *testing.T) {
	r, peer := rawPair(t)
	peer.CloseWrite()
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("after the peer's FIN: %d, %v; want 0, io.EOF", n, err)
	}

	r, peer = rawPair(t)
	peer.SetLinger(0)
	peer.Close()
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("after the peer's reset: %v; want ECONNRESET", err)
	}

	r, _ = rawPair(t)
	r.Close()
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("after Close: %v; want net.ErrClosed", err)
	}
}

// TestRawConnDeadline: a read deadline ends a waiting Read with a timeout,
// and the connection reads on afterwards.
func TestRawConnDeadline(t *testing.T) {
	r, peer := rawPair(t)
	r.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	var ne net.Error
	if _, err := r.Read(make([]byte, 10)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v; want a timeout", err)
	}
	r.SetReadDeadline(time.Time{})
	peer.Write([]byte("later"))
	b := make([]byte, 5)
	if _, err := io.ReadFull(r, b); err != nil || string(b) != "later" {
		t.Fatalf("after the timeout: %q, %v", b, err)
	}
}

// TestRawConnShortRead: bytes that arrive after a short read, while no
// Read waits, are read by the next Read at once. (A Read must try before
// it waits: RawConn.Read forgets readiness that came while nobody waited,
// so skipping the read that finds nothing after a short one would hang
// here, as an attempt to save that system call did.)
func TestRawConnShortRead(t *testing.T) {
	r, peer := rawPair(t)
	r.SetReadDeadline(time.Now().Add(5 * time.Second)) // a missed wake-up fails, not hangs
	buf := make([]byte, 10)
	read := func(want string) {
		t.Helper()
		start := time.Now()
		n, err := r.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("Read = %q, %v; want %q", buf[:n], err, want)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("Read of %q took %v", want, d)
		}
	}
	go func() {
		time.Sleep(50 * time.Millisecond) // the first Read waits, and is woken
		peer.Write([]byte("abc"))
	}()
	read("abc") // short
	peer.Write([]byte("def"))
	time.Sleep(50 * time.Millisecond) // the readiness comes while nobody waits
	read("def")
	go func() {
		time.Sleep(50 * time.Millisecond)
		peer.Write([]byte("ghi"))
	}()
	read("ghi")
	peer.Write([]byte("0123456789")) // fills buf
	read("0123456789")
	peer.Write([]byte("jkl"))
	read("jkl")
	peer.CloseWrite()
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after the peer's FIN: %d, %v; want 0, io.EOF", n, err)
	}
}

// TestRawConnAllocs: a Read and a Write allocate nothing.
func TestRawConnAllocs(t *testing.T) {
	r, peer := rawPair(t)
	go io.Copy(peer, peer)
	msg, buf := make([]byte, 64), make([]byte, 64)
	if n := testing.AllocsPerRun(100, func() {
		r.Write(msg)
		io.ReadFull(r, buf)
	}); n != 0 {
		t.Errorf("%v allocations per write and read, want 0", n)
	}
}

// blockingConn is a carried connection whose descriptor is in blocking
// mode: one end of a socket pair, opened as a file (os.NewFile leaves a
// blocking descriptor blocking).
type blockingConn struct {
	net.Conn
	f *os.File
}

func (c blockingConn) CloseWrite() error                     { return nil }
func (c blockingConn) SyscallConn() (syscall.RawConn, error) { return c.f.SyscallConn() }

// TestRawIOBlocking: a connection on a blocking descriptor is not given raw
// reads and writes, which would block the thread unseen by the scheduler;
// it is used as it is, and works.
func TestRawIOBlocking(t *testing.T) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f, peer := os.NewFile(uintptr(fds[0]), "blocking"), os.NewFile(uintptr(fds[1]), "peer")
	defer f.Close()
	defer peer.Close()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := blockingConn{Conn: a, f: f}
	if _, err := NewConn(c); !errors.Is(err, ErrBlocking) {
		t.Errorf("newRawConn on a blocking descriptor: %v, want ErrBlocking", err)
	}
	if got := Wrap(c); got != net.Conn(c) {
		t.Errorf("withRawIO on a blocking descriptor gave %T, want the connection itself", got)
	}
	// A socket of package net is non-blocking, and gets raw I/O.
	r, _ := rawPair(t)
	if got := Wrap(r.Socket); got == net.Conn(r.Socket) {
		t.Error("withRawIO on a TCP connection of package net gave the connection itself, want a rawConn")
	}
}

// TestRawConnTryWrite: TryWrite takes what the socket takes now and
// returns short, without an error, once it is full; after the peer reads,
// it takes more.
func TestRawConnTryWrite(t *testing.T) {
	r, peer := rawPair(t)
	big := make([]byte, 64<<20)
	n, err := r.TryWrite(big)
	if err != nil || n == 0 || n >= len(big) {
		t.Fatalf("TryWrite of %d bytes to a peer that does not read: %d, %v; want a short write", len(big), n, err)
	}
	go io.CopyN(io.Discard, peer, int64(n))
	deadline := time.Now().Add(10 * time.Second)
	for {
		m, err := r.TryWrite(big[n:])
		if err != nil {
			t.Fatal(err)
		}
		if m > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("TryWrite took nothing more after the peer read")
		}
		time.Sleep(time.Millisecond)
	}
}

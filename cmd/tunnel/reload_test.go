package main

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/handshake"
)

// lines returns the JSON log lines of c whose message is msg, decoded.
func (c *child) lines(msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(c.log.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// waitLine waits until c has logged msg n times and returns the n-th such line.
func (c *child) waitLine(t *testing.T, msg string, n int) map[string]any {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ls := c.lines(msg); len(ls) >= n {
			return ls[n-1]
		}
		select {
		case <-c.done:
			t.Fatalf("%v ended while waiting for %q #%d: %v; log:\n%s", c.cmd.Args[1:], msg, n, c.err, c.log.String())
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v: no %q #%d within 20s; log:\n%s", c.cmd.Args[1:], msg, n, c.log.String())
		}
	}
}

// Reload outcomes as logged.
const (
	reloaded     = "keys reloaded"
	reloadFailed = "reload failed; the previous keys stay in force"
)

// reload sends SIGHUP to c, waits for the line of that reload and returns it; it must be
// want (reloaded or reloadFailed).
func (c *child) reload(t *testing.T, want string) map[string]any {
	t.Helper()
	ok, failed := len(c.lines(reloaded)), len(c.lines(reloadFailed))
	c.cmd.Process.Signal(syscall.SIGHUP)
	for deadline := time.Now().Add(20 * time.Second); ; {
		okLines, failedLines := c.lines(reloaded), c.lines(reloadFailed)
		switch {
		case len(okLines) > ok && want == reloaded:
			return okLines[ok]
		case len(failedLines) > failed && want == reloadFailed:
			return failedLines[failed]
		case len(okLines) > ok || len(failedLines) > failed:
			t.Fatalf("%v: reload did not log %q; log:\n%s", c.cmd.Args[1:], want, c.log.String())
		case time.Now().After(deadline):
			t.Fatalf("%v: no reload line within 20s; log:\n%s", c.cmd.Args[1:], c.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// strs is a log field holding a list of strings.
func strs(v any) []string {
	var out []string
	l, _ := v.([]any)
	for _, s := range l {
		out = append(out, fmt.Sprint(s))
	}
	return out
}

// traffic keeps connections going through the entry at addr until stop: one after another,
// each sends 32 KiB of random bytes and checks that the backend's echo returns every one.
type traffic struct {
	addr string
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	conns int
	errs  []error
}

func startTraffic(addr string) *traffic {
	tr := &traffic{addr: addr, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		for {
			select {
			case <-tr.stop:
				return
			default:
			}
			err := echoOnce(addr, 32<<10)
			tr.mu.Lock()
			tr.conns++
			if err != nil {
				tr.errs = append(tr.errs, err)
			}
			tr.mu.Unlock()
		}
	}()
	return tr
}

// count returns how many connections have ended so far.
func (tr *traffic) count() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.conns
}

// waitMore waits until n more connections have ended.
func (tr *traffic) waitMore(t *testing.T, n int) {
	t.Helper()
	want := tr.count() + n
	for deadline := time.Now().Add(20 * time.Second); tr.count() < want; {
		if time.Now().After(deadline) {
			t.Fatalf("traffic: %d connections, want %d within 20s; errors: %v", tr.count(), want, tr.errs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (tr *traffic) end(t *testing.T) {
	t.Helper()
	close(tr.stop)
	<-tr.done
	if len(tr.errs) > 0 {
		t.Errorf("%d of %d connections lost data or failed: %v", len(tr.errs), tr.conns, tr.errs)
	}
}

// echoOnce sends n random bytes through a new connection to addr and checks the echo.
func echoOnce(addr string, n int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	out := make([]byte, n)
	rand.Read(out)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(out)
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	in, err := io.ReadAll(c)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("write: %w", werr)
	}
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", len(in), err)
	}
	if !bytes.Equal(in, out) {
		return fmt.Errorf("echo: %d bytes back, want the %d sent", len(in), n)
	}
	return nil
}

// longStream is one connection that keeps sending and checking its echo until closed.
type longStream struct {
	c     net.Conn
	stop  chan struct{}
	done  chan error   // its first error, or nil once stopped
	moved atomic.Int64 // bytes echoed so far
}

func startLongStream(t *testing.T, addr string) *longStream {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &longStream{c: c, stop: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		buf, echo := make([]byte, 4<<10), make([]byte, 4<<10)
		var total int64 // s.moved, as this goroutine last left it
		for {
			rand.Read(buf)
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := c.Write(buf); err != nil {
				s.done <- fmt.Errorf("long stream after %d bytes: write: %w", total, err)
				return
			}
			if _, err := io.ReadFull(c, echo); err != nil {
				s.done <- fmt.Errorf("long stream after %d bytes: read: %w", total, err)
				return
			}
			if !bytes.Equal(buf, echo) {
				s.done <- fmt.Errorf("long stream after %d bytes: echo differs", total)
				return
			}
			total = s.moved.Add(int64(len(buf)))
			select {
			case <-s.stop:
				s.done <- nil
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return s
}

// waitMoved waits until the stream has echoed n more bytes.
func (s *longStream) waitMoved(t *testing.T, n int64) {
	t.Helper()
	want := s.moved.Load() + n
	for deadline := time.Now().Add(20 * time.Second); s.moved.Load() < want; {
		select {
		case err := <-s.done:
			t.Fatalf("long stream ended after %d bytes, want %d: %v", s.moved.Load(), want, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("long stream: %d bytes, want %d within 20s", s.moved.Load(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// close stops the stream; it fails the test if the stream failed.
func (s *longStream) close(t *testing.T) {
	t.Helper()
	close(s.stop)
	if err := <-s.done; err != nil {
		t.Error(err)
	}
	s.c.Close()
}

// TestKeyRotation rotates the exit's key and then the entry's with the real binaries, by the
// steps README gives, while connections run through the tunnel all along: no connection may
// fail or lose a byte, and a stream open across the SIGHUPs is not disturbed. A file that
// does not parse, or a weak key, is refused and changes nothing.
func TestKeyRotation(t *testing.T) {
	dir := t.TempDir()
	keys, pinned, authorized, staging := filepath.Join(dir, "keys"), filepath.Join(dir, "pinned"), filepath.Join(dir, "authorized"), filepath.Join(dir, "staging")
	for _, d := range []string{keys, pinned, authorized, staging} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	move := func(from, to string) {
		t.Helper()
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	exitOld, entryOld := keyPair(t, staging, "exit-old"), keyPair(t, staging, "entry-old")
	move(filepath.Join(staging, "exit-old.key"), filepath.Join(keys, "exit.key"))
	move(filepath.Join(staging, "entry-old.key"), filepath.Join(keys, "entry.key"))
	move(filepath.Join(staging, "exit-old.pub"), filepath.Join(pinned, "exit-old.pub"))
	move(filepath.Join(staging, "entry-old.pub"), filepath.Join(authorized, "entry-old.pub"))
	back, _ := backend(t, false)

	x := startChild(t, "--log-format", "json", "exit", "--listen", "127.0.0.1:0", "--forward", back,
		"--key", filepath.Join(keys, "exit.key"), "--authorized-keys", authorized, "--drain-timeout", "10s")
	exitAddr := x.waitLine(t, "listening", 1)["addr"].(string)
	n := startChild(t, "--log-format", "json", "entry", "--listen", "127.0.0.1:0", "--peer", exitAddr,
		"--key", filepath.Join(keys, "entry.key"), "--peer-key", pinned)
	entryAddr := n.waitLine(t, "listening", 1)["addr"].(string)
	if est := n.waitLine(t, "session established", 1); est["peer_fingerprint"] != exitOld {
		t.Fatalf("first session with %v, want the old exit key %s", est["peer_fingerprint"], exitOld)
	}

	tr := startTraffic(entryAddr)
	long := startLongStream(t, entryAddr)
	tr.waitMore(t, 5)

	// The exit's key. 1: the entries pin the new key besides the old one.
	exitNew := keyPair(t, staging, "exit-new")
	move(filepath.Join(staging, "exit-new.pub"), filepath.Join(pinned, "exit-new.pub"))
	if l := n.reload(t, reloaded); !slices.Equal(strs(l["pinned_added"]), []string{exitNew}) || len(strs(l["pinned_removed"])) != 0 {
		t.Errorf("entry reload line %v: want pinned_added [%s] and nothing removed", l, exitNew)
	}
	tr.waitMore(t, 5)
	// 2: the exit takes the new key; its sessions up keep running.
	move(filepath.Join(staging, "exit-new.key"), filepath.Join(keys, "exit.key"))
	if l := x.reload(t, reloaded); l["fingerprint"] != exitNew || l["previous_fingerprint"] != exitOld {
		t.Errorf("exit reload line %v: want fingerprint %s, previous %s", l, exitNew, exitOld)
	}
	tr.waitMore(t, 5)
	// 3: the entries stop pinning the old key. A garbage file first: refused, nothing changes.
	if err := os.WriteFile(filepath.Join(pinned, "junk.pub"), []byte("not a key\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if l := n.reload(t, reloadFailed); !strings.Contains(fmt.Sprint(l["error"]), "junk.pub") {
		t.Errorf("entry refused the garbage file with %v; want a line naming it", l)
	}
	os.Remove(filepath.Join(pinned, "junk.pub"))
	os.Remove(filepath.Join(pinned, "exit-old.pub"))
	if l := n.reload(t, reloaded); !slices.Equal(strs(l["pinned_removed"]), []string{exitOld}) {
		t.Errorf("entry reload line %v: want pinned_removed [%s]", l, exitOld)
	}
	// The session made with the old exit key is retired: new connections go to a new session,
	// with the exit's new key; the long stream stays on the old one.
	if est := n.waitLine(t, "session established", 2); est["peer_fingerprint"] != exitNew {
		t.Errorf("session after the old exit key was unpinned is with %v, want the new exit key %s", est["peer_fingerprint"], exitNew)
	}
	tr.waitMore(t, 5)

	// The entry's key. 1: the exit authorizes the new key besides the old one.
	entryNew := keyPair(t, staging, "entry-new")
	move(filepath.Join(staging, "entry-new.pub"), filepath.Join(authorized, "entry-new.pub"))
	if l := x.reload(t, reloaded); !slices.Equal(strs(l["authorized_added"]), []string{entryNew}) {
		t.Errorf("exit reload line %v: want authorized_added [%s]", l, entryNew)
	}
	tr.waitMore(t, 5)
	// 2: the entry takes the new key, for its next session.
	move(filepath.Join(staging, "entry-new.key"), filepath.Join(keys, "entry.key"))
	if l := n.reload(t, reloaded); l["fingerprint"] != entryNew || l["previous_fingerprint"] != entryOld {
		t.Errorf("entry reload line %v: want fingerprint %s, previous %s", l, entryNew, entryOld)
	}
	tr.waitMore(t, 5)

	// A weak key among the authorized ones, in a reload that would also drop the new entry key:
	// refused as a whole, with a line naming the file and the key's size; the previous set stays
	// in force, so the stream keeps flowing and an entry with the new key still connects.
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	weakPub, err := handshake.MarshalPublicKeyPEM(&weak.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(authorized, "weak.pub"), weakPub, 0o644); err != nil {
		t.Fatal(err)
	}
	move(filepath.Join(authorized, "entry-new.pub"), filepath.Join(staging, "entry-new.pub"))
	if l := x.reload(t, reloadFailed); !strings.Contains(fmt.Sprint(l["error"]), "weak.pub") || !strings.Contains(fmt.Sprint(l["error"]), "1024 bits") {
		t.Errorf("exit refused the weak key with %v; want a line naming weak.pub and its 1024 bits", l)
	}
	long.waitMoved(t, 64<<10)
	tr.waitMore(t, 5)
	n2 := startChild(t, "--log-format", "json", "entry", "--listen", "127.0.0.1:0", "--peer", exitAddr,
		"--key", filepath.Join(keys, "entry.key"), "--peer-key", pinned)
	if est := n2.waitLine(t, "session established", 1); est["peer_fingerprint"] != exitNew {
		t.Errorf("second entry's session is with %v, want the exit's new key %s", est["peer_fingerprint"], exitNew)
	}
	if est := x.waitLine(t, "session established", 3); est["peer_fingerprint"] != entryNew {
		t.Errorf("the exit's session with the second entry is with %v, want the new entry key %s", est["peer_fingerprint"], entryNew)
	}
	n2.cmd.Process.Signal(syscall.SIGTERM)
	if code := n2.exitCode(t, 20*time.Second); code != 0 {
		t.Errorf("second entry after SIGTERM: exit code %d; log:\n%s", code, n2.log.String())
	}
	os.Remove(filepath.Join(authorized, "weak.pub"))
	move(filepath.Join(staging, "entry-new.pub"), filepath.Join(authorized, "entry-new.pub"))
	tr.end(t)
	t.Logf("%d connections through seven reloads", tr.count())

	// 3: the exit stops accepting the old key: the sessions made with it (the one retired when
	// the old exit key was unpinned, which carries the long stream, and the current one) get
	// GoAway, and the entry makes a new one with its new key, to the exit's new key. The stream
	// open on the old session may finish within the exit's drain timeout. (New connections pause
	// here: one that the entry opens while the exit's GoAway is on its way is reset by yamux.)
	os.Remove(filepath.Join(authorized, "entry-old.pub"))
	if l := x.reload(t, reloaded); !slices.Equal(strs(l["authorized_removed"]), []string{entryOld}) || l["sessions_closing"] != 2.0 {
		t.Errorf("exit reload line %v: want authorized_removed [%s] and two sessions closing", l, entryOld)
	}
	if est := n.waitLine(t, "session established", 3); est["peer_fingerprint"] != exitNew {
		t.Errorf("new session with %v, want the new exit key %s", est["peer_fingerprint"], exitNew)
	}
	if est := x.waitLine(t, "session established", 4); est["peer_fingerprint"] != entryNew {
		t.Errorf("the exit's new session is with %v, want the new entry key %s", est["peer_fingerprint"], entryNew)
	}
	tr = startTraffic(entryAddr)
	tr.waitMore(t, 20)
	tr.end(t)
	long.close(t) // on the old session, across eight reloads and the GoAway

	for _, c := range []*child{n, x} {
		c.cmd.Process.Signal(syscall.SIGTERM)
		if code := c.exitCode(t, 20*time.Second); code != 0 {
			t.Errorf("%v after SIGTERM: exit code %d; log:\n%s", c.cmd.Args[1:], code, c.log.String())
		}
	}
}

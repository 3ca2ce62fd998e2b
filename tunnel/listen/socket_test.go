package listen

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestListenAcceptedKeepAlive checks that a connection accepted from Listen
// has keepalive on with the agents' timing, inherited from the listener.
func TestListenAcceptedKeepAlive(t *testing.T) {
	ln, err := TCP(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name       string
		level, opt int
		value      int
	}{
		{"SO_KEEPALIVE", syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(keepAliveIdle / time.Second)},
		{"TCP_KEEPINTVL", syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, int(keepAliveInterval / time.Second)},
		{"TCP_KEEPCNT", syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
		{"TCP_NODELAY", syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1},
	}
	rc.Control(func(fd uintptr) {
		for _, w := range want {
			got, err := syscall.GetsockoptInt(int(fd), w.level, w.opt)
			if err != nil || got != w.value {
				t.Errorf("accepted connection: %s = %d (%v), want %d", w.name, got, err, w.value)
			}
		}
	})
}

// unixListener binds path without removing it on Close, as an agent that
// was killed leaves it.
func unixListener(t *testing.T, path string) *net.UnixListener {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	return ln
}

// TestListenUnixStale: a socket file nobody listens on is replaced; one a
// process listens on is left to it, and so is any file that is not a
// socket; the socket file goes when the listener closes.
func TestListenUnixStale(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()

	t.Run("stale socket replaced", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		unixListener(t, path).Close() // the file stays, nobody listens
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("the stale socket file should exist: %v", err)
		}
		ln, err := Unix(ctx, path, 0)
		if err != nil {
			t.Fatalf("ListenUnix over a stale socket: %v", err)
		}
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("connecting to the new listener: %v", err)
		}
		c.Close()
		ln.Close()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("after Close the socket file is still there: %v", err)
		}
	})

	t.Run("live listener refused", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		live := unixListener(t, path)
		defer live.Close()
		ln, err := Unix(ctx, path, 0)
		if err == nil {
			ln.Close()
			t.Fatal("ListenUnix took over the socket of a live listener")
		}
		if !strings.Contains(err.Error(), "another process is listening on "+path) {
			t.Errorf("error %q, want one saying another process is listening on %s", err, path)
		}
		// The live listener still has its socket.
		go func() {
			if c, err := live.Accept(); err == nil {
				c.Close()
			}
		}()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("the live listener lost its socket: %v", err)
		}
		c.Close()
	})

	for _, tc := range []struct {
		name, kind string
		make       func(path string) error
	}{
		{"regular file refused", "a regular file", func(p string) error { return os.WriteFile(p, []byte("precious"), 0o644) }},
		{"directory refused", "a directory", func(p string) error { return os.Mkdir(p, 0o755) }},
		{"symbolic link refused", "a symbolic link", func(p string) error { return os.Symlink(filepath.Join(dir, "elsewhere"), p) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := tc.make(path); err != nil {
				t.Fatal(err)
			}
			before, _ := os.Lstat(path)
			ln, err := Unix(ctx, path, 0)
			if err == nil {
				ln.Close()
				t.Fatalf("ListenUnix replaced %s", tc.kind)
			}
			if want := "exists and is not a socket (" + tc.kind + ")"; !strings.Contains(err.Error(), want) {
				t.Errorf("error %q, want one saying %q", err, want)
			}
			after, err := os.Lstat(path)
			if err != nil || !os.SameFile(before, after) {
				t.Fatalf("%s at the path was touched: %v", tc.kind, err)
			}
			if tc.kind == "a regular file" {
				if b, _ := os.ReadFile(path); string(b) != "precious" {
					t.Errorf("the regular file now holds %q", b)
				}
			}
		})
	}
}

// TestListenUnixMode: the socket file gets the mode asked for, whatever
// the umask left.
func TestListenUnixMode(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []fs.FileMode{0o600, 0o660, 0o666} {
		path := filepath.Join(dir, fmt.Sprintf("m%o.sock", mode))
		ln, err := Unix(context.Background(), path, mode)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != mode {
			t.Errorf("Unix(mode %04o): the file's mode is %v, want a socket with %v", mode, fi.Mode(), mode)
		}
	}
}

// dirEvents watches dir with inotify for files created in it and changes to
// their attributes (mode, owner), and returns a function that lists what
// came since, as "create NAME" and "attrib NAME", in order.
func dirEvents(t *testing.T, dir string) func() []string {
	t.Helper()
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if _, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_CREATE|syscall.IN_ATTRIB); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		var out []string
		buf := make([]byte, 64<<10)
		for {
			n, err := syscall.Read(fd, buf)
			if err != nil || n <= 0 {
				return out
			}
			for b := buf[:n]; len(b) >= syscall.SizeofInotifyEvent; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&b[0]))
				name := strings.TrimRight(string(b[syscall.SizeofInotifyEvent:syscall.SizeofInotifyEvent+ev.Len]), "\x00")
				switch {
				case ev.Mask&syscall.IN_CREATE != 0:
					out = append(out, "create "+name)
				case ev.Mask&syscall.IN_ATTRIB != 0:
					out = append(out, "attrib "+name)
				}
				b = b[syscall.SizeofInotifyEvent+ev.Len:]
			}
		}
	}
}

// TestListenUnixModeBeforeVisible: the socket appears at its path with its
// final mode: no change of mode (or anything else) is made to it there
// after it was created, so that no process ever finds it there with the
// mode the umask gave, and no symbolic link put in its place can redirect
// the change.
func TestListenUnixModeBeforeVisible(t *testing.T) {
	dir := t.TempDir()
	events := dirEvents(t, dir)
	path := filepath.Join(dir, "app.sock")
	ln, err := Unix(context.Background(), path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := events()
	if !slices.Contains(got, "create app.sock") {
		t.Fatalf("inotify saw %q, want the creation of app.sock", got)
	}
	for _, e := range got {
		if e == "attrib app.sock" {
			t.Errorf("inotify saw %q: the socket's mode was changed after it appeared at its path", got)
		}
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket file: %v, %v; want a socket with mode 0600", fi.Mode(), err)
	}
	if ln.Addr().String() != path {
		t.Errorf("listener's address %s, want %s", ln.Addr(), path)
	}
	// The private directory is gone; only the socket is left.
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("the directory holds %d files after ListenUnix, want the socket only", len(ents))
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connecting: %v", err)
	}
	c.Close()
}

// TestListenUnixPublishRefuses: a file (a symbolic link above all) that
// appears at the path between the check and the bind is neither replaced
// nor followed: the socket's mode never reaches the link's target.
func TestListenUnixPublishRefuses(t *testing.T) {
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "app.sock")
	ln, private, err := bindPrivate(context.Background(), path, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if fi, err := os.Stat(filepath.Dir(private)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the directory the socket is bound in: %v, %v; want mode 0700", fi.Mode(), err)
	}
	if fi, err := os.Lstat(private); err != nil || fi.Mode().Perm() != 0o666 {
		t.Errorf("the socket before it is published: %v, %v; want mode 0666 already", fi.Mode(), err)
	}
	if err := os.Symlink(victim, path); err != nil { // the race, won
		t.Fatal(err)
	}
	if _, err := publish(private, path); err == nil || !strings.Contains(err.Error(), "appeared while the socket was being bound: refusing to replace it") {
		t.Errorf("publish over a symbolic link: %v, want a refusal", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSymlink {
		t.Errorf("the symbolic link at the path: %v, %v; want it left alone", fi.Mode(), err)
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the link's target: %v, %v; want its mode 0600 untouched", fi.Mode(), err)
	}
}

// TestListenUnixClose: Close removes the socket file only while it is the
// one bound.
func TestListenUnixClose(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock")
	ln, err := Unix(context.Background(), path, 0)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	if err := os.WriteFile(path, []byte("another's"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if b, err := os.ReadFile(path); err != nil || string(b) != "another's" {
		t.Errorf("Close removed or changed a file that replaced the socket: %q, %v", b, err)
	}
}

package listen

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// Keepalive of accepted connections: Go's defaults, so that a peer that
// vanished without a FIN is found after about 2.5 minutes of silence.
const (
	keepAliveIdle     = 15 * time.Second
	keepAliveInterval = 15 * time.Second
	keepAliveCount    = 9
)

// TCP announces on the TCP address addr as net.Listen does, with TCP
// keepalive on every accepted connection as net.Listen gives it. The
// keepalive options are set once, on the listening socket, and Linux copies
// them to each socket it accepts, where net.Listen sets them on every
// accepted connection: four system calls fewer per connection.
func TCP(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1, Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		ctrl := c.Control(func(fd uintptr) { err = setKeepAlive(int(fd)) })
		if ctrl != nil {
			return ctrl
		}
		return err
	}}
	return lc.Listen(ctx, "tcp", addr)
}

// setKeepAlive turns keepalive on for the socket fd with the agents' timing.
func setKeepAlive(fd int) error {
	for _, o := range []struct{ level, name, value int }{
		{syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPIDLE, int(keepAliveIdle / time.Second)},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPINTVL, int(keepAliveInterval / time.Second)},
		{syscall.IPPROTO_TCP, syscall.TCP_KEEPCNT, keepAliveCount},
	} {
		if err := syscall.SetsockoptInt(fd, o.level, o.name, o.value); err != nil {
			return &net.OpError{Op: "setsockopt", Net: "tcp", Err: err}
		}
	}
	return nil
}

// Unix announces on the UNIX socket path. A socket file left at path
// by an agent that did not stop cleanly is replaced, and only that: if a
// process accepts connections on it, or path is not a socket, ListenUnix
// refuses and removes nothing. mode, if not 0, is the socket file's mode
// (connecting takes write permission on it); 0 leaves what the process's
// umask gives. Closing the listener removes the socket file, if it is still
// the one bound.
//
// The socket never appears at path with any other mode: it is bound in a
// private directory (mode 0700) made next to path, its mode set there, and
// then hard-linked to path. Nobody else can reach it, or swap it for a
// symbolic link, in that directory, so the mode change applies to the
// socket itself; and link(2) fails if anything (a symbolic link included)
// has appeared at path since it was checked, where rename(2) would replace
// it. Accepted connections' local address names the path the socket was
// bound at (as getsockname reports it), the listener's Addr is path.
func Unix(ctx context.Context, path string, mode os.FileMode) (net.Listener, error) {
	if err := removeStaleSocket(ctx, path); err != nil {
		return nil, err
	}
	ln, private, err := bindPrivate(ctx, path, mode)
	if err != nil {
		return nil, err
	}
	defer os.Remove(filepath.Dir(private))
	defer os.Remove(private)
	bound, err := publish(private, path)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &unixSocketListener{UnixListener: ln, path: path, bound: bound}, nil
}

// privateDirPattern names the directory ListenUnix binds in, next to the
// socket's path; short, because a socket's path may have 107 bytes at most.
const privateDirPattern = ".tunnel-"

// bindPrivate binds a UNIX socket in a new directory of mode 0700 next to
// path, and gives it mode (if not 0). It returns the listener, which does
// not remove the socket file when closed, and the socket file's path. The
// caller removes the file and its directory.
func bindPrivate(ctx context.Context, path string, mode os.FileMode) (*net.UnixListener, string, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), privateDirPattern)
	if err != nil {
		return nil, "", fmt.Errorf("listening on %s: making a private directory next to it to bind the socket in: %w", path, err)
	}
	private := filepath.Join(dir, "s")
	if n := len(private); n > maxUnixPath {
		os.Remove(dir)
		return nil, "", fmt.Errorf("listening on %s: the socket is bound first at %s, whose path has %d bytes, and a UNIX socket's may have at most %d: choose a path %d bytes shorter",
			path, private, n, maxUnixPath, n-maxUnixPath)
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", private)
	if err != nil {
		os.Remove(dir)
		return nil, "", err
	}
	ln := l.(*net.UnixListener)
	ln.SetUnlinkOnClose(false)
	if mode != 0 {
		// In dir, which only this process's user may enter, the name
		// private is the socket bound just now.
		if err := os.Chmod(private, mode); err != nil {
			ln.Close()
			os.Remove(private)
			os.Remove(dir)
			return nil, "", fmt.Errorf("setting the mode of %s to %04o: %w", path, mode, err)
		}
	}
	return ln, private, nil
}

// maxUnixPath is the longest socket path Linux takes (sun_path holds 108
// bytes, with the terminating NUL).
const maxUnixPath = 107

// publish links the socket file private to path, which must not exist, and
// returns the file's identity, for Close.
func publish(private, path string) (os.FileInfo, error) {
	fi, err := os.Lstat(private)
	if err != nil {
		return nil, err
	}
	if err := os.Link(private, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%s appeared while the socket was being bound: refusing to replace it; start again, or listen on another path", path)
		}
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	return fi, nil
}

// unixSocketListener is a UNIX socket listener bound by ListenUnix.
type unixSocketListener struct {
	*net.UnixListener
	path  string
	bound os.FileInfo // the socket file at path
	once  sync.Once
}

// Addr is the socket file's path.
func (l *unixSocketListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

// Close closes the listener and removes the socket file at path, unless
// another file has taken its place.
func (l *unixSocketListener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if now, lerr := os.Lstat(l.path); lerr == nil && os.SameFile(now, l.bound) {
			os.Remove(l.path)
		}
	})
	return err
}

// removeStaleSocket removes the socket file at path if no process accepts
// connections on it: a connection attempt refused means that the process
// that bound it is gone. It leaves path alone, and says why, if it is
// anything but a socket, or if a process answers there.
func removeStaleSocket(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s): refusing to replace it; remove it yourself or listen on another path", path, fileKind(fi.Mode()))
	}
	d := net.Dialer{Timeout: staleProbeTimeout}
	c, err := d.DialContext(ctx, "unix", path)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("another process is listening on %s: stop it, or listen on another path", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		// Nobody listens: a socket left by a process that is gone. Remove
		// it only if it is still the file that was checked.
		if now, err := os.Lstat(path); err != nil || !os.SameFile(fi, now) {
			return fmt.Errorf("%s changed while it was checked for a listener: refusing to replace it; start again, or listen on another path", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
		return nil
	default:
		return fmt.Errorf("%s exists and cannot be checked for a listener (%v): refusing to replace it; remove it yourself if no process uses it", path, err)
	}
}

// staleProbeTimeout bounds the connection attempt that tells a live socket
// from a stale one.
const staleProbeTimeout = 2 * time.Second

// fileKind names the type of a file of mode m for a message.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "type " + m.Type().String()
	}
}

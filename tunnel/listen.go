package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
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

// Listen announces on the TCP address addr as net.Listen does, with TCP
// keepalive on every accepted connection as net.Listen gives it. The
// keepalive options are set once, on the listening socket, and Linux copies
// them to each socket it accepts, where net.Listen sets them on every
// accepted connection: four system calls fewer per connection.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
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

// ListenUnix announces on the UNIX socket path. A socket file left at path
// by an agent that did not stop cleanly is replaced, and only that: if a
// process accepts connections on it, or path is not a socket, ListenUnix
// refuses and removes nothing. mode, if not 0, is set on the socket file
// after it is bound (connecting takes write permission on it); until then
// it has the mode the process's umask leaves, as PostgreSQL's does. Closing
// the listener removes the socket file.
func ListenUnix(ctx context.Context, path string, mode os.FileMode) (net.Listener, error) {
	if err := removeStaleSocket(ctx, path); err != nil {
		return nil, err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	if mode != 0 {
		if err := os.Chmod(path, mode); err != nil {
			ln.Close()
			return nil, fmt.Errorf("setting the mode of %s to %04o: %w", path, mode, err)
		}
	}
	return ln, nil
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

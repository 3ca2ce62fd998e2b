package tunnel

import (
	"context"
	"net"
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

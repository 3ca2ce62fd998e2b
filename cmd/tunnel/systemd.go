package main

// systemd integration, for an agent run as a service unit: the notify protocol (Type=notify or
// Type=notify-reload: READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1, STATUS=) and socket
// activation (a .socket unit binds the addresses and passes them in). Both come from the
// process environment that systemd sets (NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS,
// LISTEN_PID, LISTEN_FDNAMES); without it, nothing here does anything. The protocol itself is
// github.com/coreos/go-systemd/v22's.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"
)

// Socket names (FileDescriptorName= in the .socket unit) and the listener each one replaces.
const (
	socketListen = "listen" // --listen
	socketStatus = "status" // --status-addr
)

// activated are the sockets systemd passed to the agent; nil where it passed none.
type activated struct {
	listen, status net.Listener
}

// close closes what a failed start leaves open.
func (a activated) close() {
	for _, ln := range []net.Listener{a.listen, a.status} {
		if ln != nil {
			ln.Close()
		}
	}
}

// activatedSockets takes the sockets that systemd passed to this process, by name. Every socket
// passed must be used, so each must be a listening stream socket named listen or status, at
// most one of each; the listen socket must be TCP unless unixListen (the entry, which accepts
// applications on a UNIX socket too; the exit accepts entry agents over TCP only). It unsets
// the LISTEN_* variables.
func activatedSockets(unixListen bool) (activated, error) {
	var a activated
	for i, f := range activation.Files(true) {
		fd := i + 3 // SD_LISTEN_FDS_START
		name := f.Name()
		var ln net.Listener
		err := listening(f)
		if err == nil {
			ln, err = net.FileListener(f) // a duplicate of the descriptor
		}
		f.Close()
		if err != nil {
			err = fmt.Errorf("not a listening stream socket (%w): the .socket unit must bind it with ListenStream=, and Accept=no", err)
		}
		if err == nil && name == socketListen {
			if _, ok := ln.(*net.TCPListener); !ok && !unixListen {
				err = fmt.Errorf("it is a %s socket (%s), and the exit accepts entry agents over TCP only: give ListenStream= an address and port, such as 0.0.0.0:7000", ln.Addr().Network(), ln.Addr())
			}
		}
		var slot *net.Listener
		switch name {
		case socketListen:
			slot = &a.listen
		case socketStatus:
			slot = &a.status
		default:
			err = errors.New("the agent takes sockets named listen (for --listen) and status (for --status-addr): set FileDescriptorName=listen or FileDescriptorName=status on each ListenStream= of the .socket unit")
		}
		if err == nil && *slot != nil {
			err = fmt.Errorf("a second socket named %s: the agent serves one; give the .socket unit one ListenStream= per name", name)
		}
		if err != nil {
			if ln != nil {
				ln.Close()
			}
			a.close()
			if name == socketListen || name == socketStatus {
				return activated{}, usagef("socket activation: socket %s (fd %d): %v", name, fd, err)
			}
			return activated{}, usagef("socket activation: fd %d is named %q: %v", fd, name, err)
		}
		*slot = ln
	}
	return a, nil
}

// listening returns nil if f is a stream socket (SO_TYPE SOCK_STREAM: not datagrams, nor a
// UNIX SOCK_SEQPACKET socket, whose message boundaries a byte stream would lose) that listens
// (SO_ACCEPTCONN: not a connection that systemd accepted, Accept=yes).
func listening(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var typ, on int
	var terr, aerr error
	if cerr := rc.Control(func(fd uintptr) {
		typ, terr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_TYPE)
		on, aerr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN)
	}); cerr != nil {
		return cerr
	}
	if terr != nil {
		return terr
	}
	if typ != syscall.SOCK_STREAM {
		return fmt.Errorf("it is a %s socket, not SOCK_STREAM", socketTypeName(typ))
	}
	if aerr != nil {
		return aerr
	}
	if on == 0 {
		return errors.New("it does not listen")
	}
	return nil
}

// socketTypeName names a socket type (SO_TYPE) for a message.
func socketTypeName(typ int) string {
	switch typ {
	case syscall.SOCK_DGRAM:
		return "datagram (SOCK_DGRAM; ListenDatagram=)"
	case syscall.SOCK_SEQPACKET:
		return "SOCK_SEQPACKET (ListenSequentialPacket=)"
	case syscall.SOCK_RAW:
		return "raw (SOCK_RAW)"
	}
	return fmt.Sprintf("type %d", typ)
}

// notifier tells the service manager how the agent is doing, if it asked (NOTIFY_SOCKET).
// READY=1 is sent once; RELOADING=1 only after it; after STOPPING=1 nothing but WATCHDOG=1.
// Safe for concurrent use.
type notifier struct {
	log zerolog.Logger

	mu             sync.Mutex
	ready, stopped bool
}

// send sends the lines of a state change; a failure is logged.
func (n *notifier) send(lines ...string) {
	state := strings.Join(lines, "\n")
	if _, err := daemon.SdNotify(false, state); err != nil {
		n.log.Warn().Err(err).Str("state", state).Msg("cannot notify systemd (NOTIFY_SOCKET)")
	}
}

// statusLine is a STATUS= line: what systemctl status shows, on one line.
func statusLine(s string) string {
	return "STATUS=" + strings.ReplaceAll(s, "\n", " ")
}

// readyNow says the agent is up, with a status line, unless it is stopping already.
func (n *notifier) readyNow(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped || n.ready {
		return
	}
	n.ready = true
	n.send(daemon.SdNotifyReady, statusLine(s))
}

// reloading brackets a reload (SIGHUP) with RELOADING=1 and READY=1, as Type=notify-reload
// expects; before the agent is ready, or once it is stopping, it only runs reload.
func (n *notifier) reloading(reload func()) {
	n.mu.Lock()
	tell := n.ready && !n.stopped
	if tell {
		n.send(daemon.SdNotifyReloading, strings.TrimSuffix(daemon.SdNotifyMonotonicUsec(), "\n"), statusLine("reloading the keys"))
	}
	n.mu.Unlock()
	reload()
	n.mu.Lock()
	defer n.mu.Unlock()
	if tell && !n.stopped {
		n.send(daemon.SdNotifyReady, statusLine("keys reloaded"))
	}
}

// stopping says the drain has begun.
func (n *notifier) stopping(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return
	}
	n.stopped = true
	n.send(daemon.SdNotifyStopping, statusLine(s))
}

// watchdog sends WATCHDOG=1 at half the interval systemd asked for (WatchdogSec=) until stop is
// closed, draining included, while live(interval) returns nil; it returns at once if none was
// asked for. While live returns an error, it sends none, so that systemd restarts the agent.
func (n *notifier) watchdog(stop <-chan struct{}, live func(interval time.Duration) error) {
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn().Err(err).Msg("systemd watchdog: not pinging it; check WatchdogSec= in the unit")
		return
	}
	if every <= 0 {
		return
	}
	tick := time.NewTicker(every / 2)
	defer tick.Stop()
	withheld := false
	for {
		select {
		case <-tick.C:
			withheld = n.ping(live(every), withheld)
		case <-stop:
			return
		}
	}
}

// ping sends WATCHDOG=1 if unhealthy is nil. Otherwise it sends none, and at the first of a run
// of such ticks (withheld false) logs why and puts it in STATUS=. It returns whether it withheld
// the ping.
func (n *notifier) ping(unhealthy error, withheld bool) bool {
	if unhealthy == nil {
		if withheld {
			n.log.Info().Msg("systemd watchdog: the agent is healthy again; pinging it again")
		}
		n.send(daemon.SdNotifyWatchdog)
		return false
	}
	if !withheld {
		n.log.Error().Err(unhealthy).Msg("systemd watchdog: not pinging it while this lasts, so that systemd restarts the agent (WatchdogSec=)")
		n.send(statusLine("unhealthy: " + unhealthy.Error()))
	}
	return true
}

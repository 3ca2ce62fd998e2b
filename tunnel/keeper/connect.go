package keeper

// One connection to one exit: the TCP dial, the handshake (version 2, or
// version 1 for an exit that speaks only that), and the session over it.

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/tunnel-dev/tunnel/handshake"
	"github.com/tunnel-dev/tunnel/tunnel/exits"
	"github.com/tunnel-dev/tunnel/tunnel/logfield"
	"github.com/tunnel-dev/tunnel/tunnel/rawio"
	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// v1Recheck is how long the entry speaks version 1 to an exit that refused
// version 2 before it tries version 2 again, so that an upgraded exit gets
// it.
const v1Recheck = 10 * time.Minute

// v1Exits are the addresses of exits that answered version 2 with ALERT
// unsupported_version, and until when to speak version 1 to them. Safe for
// concurrent use.
type v1Exits struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func (v *v1Exits) has(addr string, now time.Time) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return now.Before(v.until[addr])
}

func (v *v1Exits) add(addr string, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.until == nil {
		v.until = make(map[string]time.Time)
	}
	for a, t := range v.until { // bounded by the exits' addresses
		if !now.Before(t) {
			delete(v.until, a)
		}
	}
	v.until[addr] = now.Add(v1Recheck)
}

func (v *v1Exits) remove(addr string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.until, addr)
}

// connect dials the exit at x, runs the handshake and starts the
// multiplexer; it logs the new session to log.
func (k *Keeper) connect(ctx context.Context, log zerolog.Logger, x exits.Addr) (*Session, error) {
	c, err := k.Dial(ctx, x.Addr)
	if err != nil {
		return nil, &exits.DialError{Err: err}
	}
	return k.start(ctx, log, x, c)
}

// dialTCP is keeper.dial: a TCP dial to an exit, within the dial timeout.
func (k *Keeper) dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: k.cfg.DialTimeout, KeepAlive: k.cfg.KeepAlive}
	return d.DialContext(ctx, "tcp", addr)
}

// start runs the handshake on c, connected to the exit at x, and starts
// the multiplexer; it logs the new session to log.
func (k *Keeper) start(ctx context.Context, log zerolog.Logger, x exits.Addr, c net.Conn) (*Session, error) {
	cfg := *k.keys.Load().ForExit(x.Peer)
	cfg.ResumeWindow = max(k.cfg.ResumeWindow, 0)
	v1 := k.v1.has(x.Addr, time.Now())
	cfg.Version, cfg.Fallback = handshake.Version2, false
	if v1 {
		cfg.Version, cfg.Fallback = handshake.Version1, true
	}
	res, err := handshake.Initiate(ctx, rawio.Wrap(c), &cfg)
	if err != nil && !v1 && errors.Is(err, handshake.ErrUnsupportedVersion) && handshake.ByPeer(err) {
		// A version 1 exit: handshake again, on a new connection, in its
		// version, signalling that this is a fallback (a version 2 exit
		// refuses that: someone forged the refusal).
		k.v1.add(x.Addr, time.Now())
		log.Warn().Str("peer", x.Peer).Str("addr", x.Addr).
			Msg("the exit speaks protocol version 1 only: falling back to it (no signed hello, so the exit cannot shed forged handshakes before its RSA work); upgrade the exit")
		c, err = k.Dial(ctx, x.Addr)
		if err != nil {
			return nil, &exits.DialError{Err: err}
		}
		cfg.Version, cfg.Fallback = handshake.Version1, true
		res, err = handshake.Initiate(ctx, rawio.Wrap(c), &cfg)
	}
	if errors.Is(err, handshake.ErrInappropriateFallback) {
		k.v1.remove(x.Addr) // it speaks version 2 after all: the refusal was forged
	}
	if err != nil {
		return nil, err
	}
	settings := k.muxSettings()
	if res.Ticket != nil {
		settings.Resume = min(k.cfg.ResumeWindow, res.Ticket.Window)
	}
	sess, err := session.Client(res.Conn, settings, k.log)
	if err != nil {
		res.Conn.Close()
		return nil, err
	}
	k.books.SessionUp(sess, res.PeerFingerprint, res.Duration)
	ev := log.Info().Str("peer", x.Peer).Str("addr", x.Addr).Str("peer_fingerprint", res.PeerFingerprint).
		Str("handshake", logfield.Duration(res.Duration))
	if settings.Resume > 0 {
		ev = ev.Str("resume_window", logfield.Duration(settings.Resume))
	}
	ev.Msg("session established")
	return &Session{Exit: x, Fingerprint: res.PeerFingerprint, Sess: sess, ticket: res.Ticket, full: make(chan struct{})}, nil
}

// muxSettings are the session settings of the entry's configuration.
func (k *Keeper) muxSettings() session.Settings {
	return session.Settings{KeepAlive: k.cfg.KeepAlive, Window: k.cfg.Window}
}

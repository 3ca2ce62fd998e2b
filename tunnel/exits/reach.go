package exits

import (
	"context"
	"net"
	"time"
)

// dialStagger is how long the entry waits for a TCP dial to an exit to
// connect before it dials the next one as well.
const dialStagger = 250 * time.Millisecond

// dialed is the outcome of a dial to an exit.
type dialed struct {
	exit Addr
	conn net.Conn
	err  error
}

// Reach dials exits in order with dial, and runs establish (a handshake) on
// each connection made, until establish succeeds; it returns what
// establish returned, with the failures before it (an *Error each). The
// dials overlap:
// the next exit is dialed when the dial before has failed or has not
// connected within dialStagger, so an exit that does not answer at all
// delays the others by dialStagger, not by the dial timeout. No dial
// starts while a handshake runs; a handshake that fails lets the next
// exit be dialed at once. The dials that remain are abandoned, and the
// connections they make closed, once a session is up.
func Reach[S any](ctx context.Context, exits []Addr, dial func(ctx context.Context, addr string) (net.Conn, error), establish func(Addr, net.Conn) (S, error)) (s S, errs []error) {
	if len(exits) == 0 {
		return s, nil
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan dialed, len(exits))
	next, pending := 0, 0
	var stagger *time.Timer
	var staggered <-chan time.Time
	start := func() {
		x := exits[next]
		next, pending = next+1, pending+1
		go func() {
			c, err := dial(dctx, x.Addr)
			results <- dialed{x, c, err}
		}()
		if stagger != nil {
			stagger.Stop()
		}
		staggered = nil
		if next < len(exits) {
			stagger = time.NewTimer(dialStagger)
			staggered = stagger.C
		}
	}
	defer func() {
		if stagger != nil {
			stagger.Stop()
		}
		cancel()
		go func(pending int) { // close what the abandoned dials connect
			for ; pending > 0; pending-- {
				if r := <-results; r.conn != nil {
					r.conn.Close()
				}
			}
		}(pending)
	}()
	start()
	for pending > 0 {
		select {
		case <-staggered:
			start()
			continue
		case <-ctx.Done():
			return s, errs
		case r := <-results:
			pending--
			if r.err == nil {
				if stagger != nil {
					stagger.Stop()
				}
				staggered = nil
				sess, err := establish(r.exit, r.conn)
				if err == nil {
					return sess, errs
				}
				r.err = err
			} else {
				r.err = &DialError{r.err}
			}
			if ctx.Err() != nil {
				return s, errs
			}
			errs = append(errs, &Error{r.exit, r.err})
			if next < len(exits) {
				start()
			}
		}
	}
	return s, errs
}

// Sleep waits for d, or until wake fires or ctx ends; it reports whether
// ctx is still alive.
func Sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-wake:
		case <-ctx.Done():
		}
	}
	return ctx.Err() == nil
}

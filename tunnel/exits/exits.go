// Package exits finds and reaches an entry's exits: the addresses its
// configured peers stand for, looked up again for every attempt, and the
// overlapping dials and handshakes of one attempt to reach one of them.
// The entry's policy (which exit to prefer, when to try again, what to
// log) is the caller's.
package exits

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Addr is one address of an exit, for one attempt.
type Addr struct {
	Peer string // as configured (HOST:PORT): names the exit in logs, and its pinned keys
	Addr string // IP:PORT
}

// Resolve returns the addresses of the exits at peers (HOST:PORT each), in
// their order, a name looked up with lookup within timeout, and a failure
// to resolve one (an *Error wrapping a *DialError).
func Resolve(ctx context.Context, peers []string, timeout time.Duration, lookup func(ctx context.Context, host string) ([]string, error)) ([]Addr, []error) {
	var exits []Addr
	var errs []error
	seen := map[string]bool{}
	add := func(x Addr) {
		if !seen[x.Addr] {
			seen[x.Addr] = true
			exits = append(exits, x)
		}
	}
	for _, peer := range peers {
		host, port, err := net.SplitHostPort(peer)
		if err != nil { // Validate has seen it
			errs = append(errs, &Error{Addr{peer, peer}, &DialError{err}})
			continue
		}
		if _, err := netip.ParseAddr(host); err == nil {
			add(Addr{peer, peer})
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, timeout)
		ips, err := lookup(lctx, host)
		cancel()
		if err == nil && len(ips) == 0 {
			err = fmt.Errorf("%s has no address", host)
		}
		if err != nil {
			errs = append(errs, &Error{Addr{peer, peer}, &DialError{err}})
			continue
		}
		for _, ip := range ips {
			add(Addr{peer, net.JoinHostPort(ip, port)})
		}
	}
	return exits, errs
}

// RotateAfter returns exits starting after the one at addr, which comes
// last; exits as they are if none is at addr.
func RotateAfter(exits []Addr, addr string) []Addr {
	for i, x := range exits {
		if x.Addr == addr {
			return append(exits[i+1:], exits[:i+1]...)
		}
	}
	return exits
}

package exits

// Why an attempt to reach an exit failed: the errors of one attempt, and
// which of them retrying soon will not cure.

import (
	"errors"
	"strings"

	"github.com/tunnel-dev/tunnel/handshake"
)

// Error is a failed attempt to reach one exit.
type Error struct {
	Exit Addr
	Err  error
}

func (e *Error) Error() string { return e.Exit.Addr + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Attempts is what failed in one attempt on every exit: an *Error each.
type Attempts []error

func (a Attempts) Error() string {
	msgs := make([]string, len(a))
	for i, err := range a {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (a Attempts) Unwrap() []error { return a }

// OrNil returns a, or nil when it holds nothing.
func (a Attempts) OrNil() error {
	if len(a) == 0 {
		return nil
	}
	return a
}

// DialError is a failed TCP dial to an exit (or a failure to resolve its
// name): cheap to retry, unlike a failed handshake.
type DialError struct{ Err error }

func (e *DialError) Error() string { return e.Err.Error() }
func (e *DialError) Unwrap() error { return e.Err }

// Lasting reports errors that retrying soon will not cure (see
// handshake.Failure.Lasting); of Attempts, that is so when it is of every
// one.
func Lasting(err error) bool {
	if a := (Attempts)(nil); errors.As(err, &a) {
		for _, err := range a {
			if !Lasting(err) {
				return false
			}
		}
		return len(a) > 0
	}
	return err != nil && handshake.Classify(err).Lasting()
}

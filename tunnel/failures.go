package tunnel

// Why an attempt to reach an exit failed: the errors of one attempt, how
// they are counted, and which of them retrying soon will not cure.

import (
	"errors"
	"strings"

	"github.com/tunnel-dev/tunnel/handshake"
)

// exitError is a failed attempt to reach one exit.
type exitError struct {
	exit exitAddr
	err  error
}

func (e *exitError) Error() string { return e.exit.addr + ": " + e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// attemptsError is what failed in one attempt on every exit: *exitErrors.
type attemptsError []error

func (a attemptsError) Error() string {
	msgs := make([]string, len(a))
	for i, err := range a {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

func (a attemptsError) Unwrap() []error { return a }

// orNil returns a, or nil when it holds nothing.
func (a attemptsError) orNil() error {
	if len(a) == 0 {
		return nil
	}
	return a
}

// failure is why an attempt to reach the exit failed.
type failure int

const (
	failedDial     failure = iota + 1 // the TCP dial
	failedTimeout                     // the handshake ran out of time
	failedRejected                    // either side refused the handshake
	failedOther                       // the handshake failed otherwise (e.g. cut)
)

// countFailure counts a failed attempt to reach the exit by its cause,
// which it returns.
func (e *Entry) countFailure(err error) failure {
	if de := (*dialError)(nil); errors.As(err, &de) {
		e.books.dialFailures.Add(1)
		return failedDial
	}
	switch f := e.books.handshakeFailed(err, true); {
	case f == handshake.FailTimeout:
		return failedTimeout
	case f.Refused():
		return failedRejected
	}
	return failedOther
}

// dialError is a failed TCP dial to the exit.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// lasting reports errors that retrying soon will not cure (see
// handshake.Failure.Lasting); for several exits, that is so of every one.
func lasting(err error) bool {
	if a := (attemptsError)(nil); errors.As(err, &a) {
		for _, err := range a {
			if !lasting(err) {
				return false
			}
		}
		return len(a) > 0
	}
	return err != nil && handshake.Classify(err).Lasting()
}

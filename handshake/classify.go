package handshake

import (
	"context"
	"errors"
	"net"
	"os"
)

// Failure names why a handshake failed: the one classification of this
// package's errors that callers count, log and retry by.
type Failure int

const (
	FailOther          Failure = iota // none of these: an I/O error, a cut connection
	FailTimeout                       // the handshake ran out of time
	FailBusy                          // the responder had too many handshakes in progress (ALERT 8)
	FailUnknownKey                    // a key was not authorized, or not the pinned one (ALERT 4)
	FailBadSignature                  // a signature did not verify (ALERT 5)
	FailDecrypt                       // the key transport did not decrypt (ALERT 6)
	FailIncompatible                  // not a tunnel peer, another protocol version, or no common suite
	FailProtocol                      // a malformed message (ALERT 1)
	FailInternal                      // the peer failed (ALERT 7)
	FailAlert                         // an ALERT with a code this build does not know
	FailStale                         // a version 2 hello outside the clock window, or replayed (ALERT 9)
	FailDowngrade                     // a fallback to version 1 that the responder refused (ALERT 10)
	FailUnknownSession                // a resumption of a session the responder cannot resume (ALERT 11): make a full handshake
)

// Classify names err, an error of Initiate or a Responder's Handshake.
func Classify(err error) Failure {
	var ne net.Error
	var ae *AlertError
	switch {
	case err == nil:
		return FailOther
	case errors.Is(err, ErrBusy):
		return FailBusy
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return FailTimeout
	case errors.Is(err, ErrUnknownKey):
		return FailUnknownKey
	case errors.Is(err, ErrBadSignature):
		return FailBadSignature
	case errors.Is(err, ErrDecrypt):
		return FailDecrypt
	case errors.Is(err, ErrNotTunnel), errors.Is(err, ErrUnsupportedVersion), errors.Is(err, ErrNoCommonSuite):
		return FailIncompatible
	case errors.Is(err, ErrProtocol):
		return FailProtocol
	case errors.Is(err, ErrInternal):
		return FailInternal
	case errors.Is(err, ErrStaleHello), errors.Is(err, ErrReplayedHello):
		return FailStale
	case errors.Is(err, ErrInappropriateFallback):
		return FailDowngrade
	case errors.Is(err, ErrUnknownSession):
		return FailUnknownSession
	case errors.As(err, &ae):
		return FailAlert
	}
	return FailOther
}

// Refused reports a handshake that one side refused by the protocol's
// rules (an ALERT, or a check of the peer's messages that failed), rather
// than one that ran out of time or whose connection failed.
func (f Failure) Refused() bool { return f >= FailBusy }

// Lasting reports failures that retrying soon will not cure: a key not
// authorized or not pinned, a signature or key transport that fails, a
// peer that is not a compatible tunnel agent.
func (f Failure) Lasting() bool {
	switch f {
	case FailUnknownKey, FailBadSignature, FailDecrypt, FailIncompatible:
		return true
	}
	return false
}

// ByPeer reports whether err is the peer's ALERT, as opposed to a check
// that failed on this side: on the initiator, FailUnknownKey by the peer
// means our key is not authorized; raised here, that the peer's key is not
// the pinned one.
func ByPeer(err error) bool {
	var ae *AlertError
	return errors.As(err, &ae)
}

package handshake

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"testing"
)

// TestClassify: every sentinel, wrapped as callers see it, is named once,
// and only the lasting ones say so.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err      error
		want     Failure
		refused  bool
		lasting  bool
		fromPeer bool
	}{
		{io.ErrUnexpectedEOF, FailOther, false, false, false},
		{fmt.Errorf("reading HELLO_R: %w", os.ErrDeadlineExceeded), FailTimeout, false, false, false},
		{context.DeadlineExceeded, FailTimeout, false, false, false},
		{&AlertError{Code: AlertBusy}, FailBusy, true, false, true},
		{&AlertError{Code: AlertUnknownKey}, FailUnknownKey, true, true, true},
		{fmt.Errorf("x: %w", ErrUnknownKey), FailUnknownKey, true, true, false},
		{fmt.Errorf("x: %w", ErrBadSignature), FailBadSignature, true, true, false},
		{fmt.Errorf("x: %w", ErrDecrypt), FailDecrypt, true, true, false},
		{fmt.Errorf("x: %w", ErrNotTunnel), FailIncompatible, true, true, false},
		{&AlertError{Code: AlertUnsupportedVersion}, FailIncompatible, true, true, true},
		{fmt.Errorf("x: %w", ErrNoCommonSuite), FailIncompatible, true, true, false},
		{fmt.Errorf("x: %w", ErrProtocol), FailProtocol, true, false, false},
		{&AlertError{Code: AlertInternalError}, FailInternal, true, false, true},
		{&AlertError{Code: 200}, FailAlert, true, false, true},
		{&AlertError{Code: AlertStaleHello}, FailStale, true, false, true},
		{fmt.Errorf("x: %w", ErrReplayedHello), FailStale, true, false, false},
		{&AlertError{Code: AlertInappropriateFallback}, FailDowngrade, true, false, true},
		{&AlertError{Code: AlertUnknownSession}, FailUnknownSession, true, false, true},
		{fmt.Errorf("x: %w", ErrUnknownSession), FailUnknownSession, true, false, false},
	} {
		f := Classify(c.err)
		if f != c.want || f.Refused() != c.refused || f.Lasting() != c.lasting || ByPeer(c.err) != c.fromPeer {
			t.Errorf("%v: %d refused=%v lasting=%v by peer=%v; want %d %v %v %v",
				c.err, f, f.Refused(), f.Lasting(), ByPeer(c.err), c.want, c.refused, c.lasting, c.fromPeer)
		}
	}
	if errors.Is(nil, ErrBusy) || Classify(nil) != FailOther {
		t.Error("nil is no failure of any kind")
	}
}

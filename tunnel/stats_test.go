package tunnel

import (
	"testing"

	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
)

// TestEndLabels checks the ledger's end of each status the exit can send,
// and of a stream it accepted.
func TestEndLabels(t *testing.T) {
	for s, want := range map[Status]ledger.End{
		StatusOK:             ledger.EndOK,
		StatusUnknownService: ledger.EndUnknownService,
		StatusUnreachable:    ledger.EndUnreachable,
		StatusRefused:        ledger.EndRefused,
		StatusBusy:           ledger.EndBusy,
		StatusBusy + 1:       ledger.EndOther,
		255:                  ledger.EndOther,
	} {
		if got := statusLabel(s); got != want {
			t.Errorf("statusLabel(%v) = %v, want %v", s, got, want)
		}
	}
	if got := endLabel(StatusOK, relay.Result{End: relay.Clean}); got != ledger.EndOK {
		t.Errorf("a clean relay ends as %v, want ok", got)
	}
	if got := endLabel(StatusOK, relay.Result{End: relay.PeerReset}); got != ledger.EndAborted {
		t.Errorf("a reset relay ends as %v, want aborted", got)
	}
}

package tunnel

// The API's names for the ledger's counters (package ledger), and the
// labels of how a stream ended, from the exit's Status and the relay's
// result.

import (
	"github.com/tunnel-dev/tunnel/tunnel/ledger"
	"github.com/tunnel-dev/tunnel/tunnel/relay"
)

// Stats are an agent's counters and its process's resource use, as the
// status endpoint shows them.
type Stats = ledger.Stats

// ServiceStats are one service's counters, as /status shows them.
type ServiceStats = ledger.ServiceStats

// statusLabel is the end of a stream the exit answered with s: statuses
// are ledger ends by value, and those past StatusBusy count as "other".
func statusLabel(s Status) ledger.End {
	if s <= StatusBusy {
		return ledger.End(s)
	}
	return ledger.EndOther
}

// resultLabel is the end of a carried connection that ended with res.
func resultLabel(res relay.Result) ledger.End {
	if res.Aborted() {
		return ledger.EndAborted
	}
	return ledger.EndOK
}

// endLabel is the end of an entry's connection whose stream the exit
// answered with s and that ended with res.
func endLabel(s Status, res relay.Result) ledger.End {
	if s != StatusOK {
		return statusLabel(s)
	}
	return resultLabel(res)
}

package ledger

import "sync/atomic"

// Service is the counters of one service's streams: open, ended by how,
// and the bytes carried each way. Updated atomically by stream goroutines,
// read by /status and /metrics. The set of services is fixed when the
// agent starts, so a label value never comes from the wire: the exit
// counts a stream naming a service it does not have under the empty name.
type Service struct {
	name      string                // as settings name it; "" for streams naming no service of the exit
	open      atomic.Int64          // streams open now
	total     atomic.Int64          // streams opened
	ended     [numEnds]atomic.Int64 // ended streams by how
	toBackend atomic.Int64          // bytes, application to backend, as they move
	toApp     atomic.Int64          // bytes, backend to application, as they move
	moved     Tally                 // toBackend and toApp, as a relay sees them in the agent's role
}

// Tally is where a relay adds the bytes it copies, once per chunk, as they
// move: FromConn counts what the carried connection sends into the stream,
// ToConn what the stream delivers to it. The counters are a service's,
// shared by all its streams; adding to them is one atomic add, nothing
// that locks or allocates.
type Tally struct{ FromConn, ToConn *atomic.Int64 }

// Moved returns where the relays of svc's streams add their bytes.
func (svc *Service) Moved() Tally { return svc.moved }

// ServiceStats are one service's counters, as /status shows them.
type ServiceStats struct {
	Streams        int64 `json:"streams"`       // open now
	StreamsTotal   int64 `json:"streams_total"` // since start
	StreamsRefused int64 `json:"streams_refused"`
	BytesToBackend int64 `json:"bytes_to_backend"` // counted as they move
	BytesToApp     int64 `json:"bytes_to_app"`
}

func (svc *Service) stats() ServiceStats {
	var refused int64
	for e := range svc.ended {
		if End(e) != EndOK && End(e) != EndAborted {
			refused += svc.ended[e].Load()
		}
	}
	return ServiceStats{
		Streams: svc.open.Load(), StreamsTotal: svc.total.Load(), StreamsRefused: refused,
		BytesToBackend: svc.toBackend.Load(), BytesToApp: svc.toApp.Load(),
	}
}

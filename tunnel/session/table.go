package session

// The stream table: what the frames passing through recordConn say of each
// stream (acknowledged, finished by the peer), and the Streams an agent
// holds, for the buffer sweep and for telling them that their session was
// lost. A stream is entered at its SYN, by whichever side's frame carries
// it, before Open or Accept returns it, and leaves when its Stream is
// closed, or with the session.

import (
	"sync"
	"sync/atomic"
)

// maxTracked bounds the streams in the table. Past it, new streams go
// untracked: they never count as acknowledged, so they end with a FIN
// rather than a reset, and their end is taken for an abort.
const maxTracked = 1 << 16

// State bits of a stream.
const (
	stateTracked = 1 << iota // in the table: its frames are followed
	stateAcked               // this side's stream was acknowledged, or it is the peer's
	statePeerFIN             // the peer's FIN arrived
)

// streamState is what the frames said of one stream. Its bits stay with
// the Stream after it leaves the table.
type streamState struct{ bits atomic.Uint32 }

func (s *streamState) is(bit uint32) bool { return s.bits.Load()&bit != 0 }

// pending reports whether the stream is tracked and not acknowledged.
func (s *streamState) pending() bool {
	b := s.bits.Load()
	return b&stateTracked != 0 && b&stateAcked == 0
}

// entry is one stream of the table.
type entry struct {
	state  *streamState
	stream *Stream // nil until Open or Accept returns it
}

// streamTable is safe for concurrent use.
type streamTable struct {
	mu     sync.Mutex
	byID   map[uint32]*entry
	closed bool // the session has ended: nothing is added
}

// watch enters stream id, unless it is there, the table is full or closed.
func (t *streamTable) watch(id uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || len(t.byID) >= maxTracked {
		return
	}
	if t.byID == nil {
		t.byID = make(map[uint32]*entry)
	}
	if _, ok := t.byID[id]; !ok {
		s := new(streamState)
		s.bits.Store(stateTracked)
		t.byID[id] = &entry{state: s}
	}
}

// set adds bit to id's state, if id is tracked.
func (t *streamTable) set(id uint32, bit uint32) {
	t.mu.Lock()
	e := t.byID[id]
	t.mu.Unlock()
	if e != nil {
		e.state.bits.Or(bit)
	}
}

// attach binds st to its entry and returns its state: a fresh, untracked
// one if id is not in the table. ok is false if the session has ended.
func (t *streamTable) attach(id uint32, st *Stream) (s *streamState, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.byID[id]; e != nil {
		e.stream = st
		return e.state, !t.closed
	}
	return new(streamState), !t.closed
}

// remove takes id out of the table.
func (t *streamTable) remove(id uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.byID, id)
}

// held lists the Streams in the table.
func (t *streamTable) held() []*Stream {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*Stream, 0, len(t.byID))
	for _, e := range t.byID {
		if e.stream != nil {
			out = append(out, e.stream)
		}
	}
	return out
}

// close marks the table closed and returns the Streams it held; a Stream
// attached later learns from attach that the session has ended.
func (t *streamTable) close() []*Stream {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	var out []*Stream
	for _, e := range t.byID {
		if e.stream != nil {
			out = append(out, e.stream)
		}
	}
	return out
}

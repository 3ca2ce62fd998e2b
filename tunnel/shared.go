package tunnel

// What both agents share: the count of open streams a drain waits for.

import "sync"

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// openStreams counts the streams being served, for the drain. A session
// may accept a stream after the drain has begun (its SYN came before the
// GoAway), which a sync.WaitGroup does not allow while Wait runs.
type openStreams struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to 0; nil when nobody waits
}

func (o *openStreams) Add(delta int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n += delta
	if o.n == 0 && o.idle != nil {
		close(o.idle)
		o.idle = nil
	}
}

func (o *openStreams) Done() { o.Add(-1) }

// drained returns a channel that is closed once no stream is open.
func (o *openStreams) drained() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	ch := make(chan struct{})
	if o.n == 0 {
		close(ch)
	} else {
		o.idle = ch
	}
	return ch
}

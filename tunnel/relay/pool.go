package relay

import (
	"sync"
	"sync/atomic"

	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// CopyBufSize makes one read from a connection one multiplexer frame and
// one batch of records.
const CopyBufSize = session.BatchWrite

// Pool hands out copy buffers and counts those lent out. Each agent owns
// one. Reads use a buffer of CopyBufSize; a short read is moved into a
// buffer of the smallest of smallSizes that holds it before it waits to be
// written, so that many connections each sending a small message at once
// do not each hold a large buffer while the multiplexer's send loop serves
// them. Safe for concurrent use.
type Pool struct {
	large sync.Pool
	small [len(smallSizes)]sync.Pool
	lent  atomic.Int64
}

// smallSizes are the size classes for short reads, smallest first.
var smallSizes = [...]int{4 << 10, 32 << 10}

// NewPool returns an empty pool.
func NewPool() *Pool {
	p := &Pool{large: sync.Pool{New: func() any { b := make([]byte, CopyBufSize); return &b }}}
	for i, size := range smallSizes {
		p.small[i].New = func() any { b := make([]byte, size); return &b }
	}
	return p
}

// Lent is how many buffers are lent out now.
func (p *Pool) Lent() int64 { return p.lent.Load() }

// get lends a buffer of CopyBufSize.
func (p *Pool) get() *[]byte {
	p.lent.Add(1)
	return p.large.Get().(*[]byte)
}

// shrink returns a buffer holding b[:n], the smaller of b and a buffer of
// a small size class, and gives b back if it was not the one returned.
func (p *Pool) shrink(b *[]byte, n int) *[]byte {
	for i, size := range smallSizes {
		if n <= size {
			s := p.small[i].Get().(*[]byte)
			copy(*s, (*b)[:n])
			p.large.Put(b)
			return s
		}
	}
	return b
}

// put takes back a buffer that get or shrink lent.
func (p *Pool) put(b *[]byte) {
	p.lent.Add(-1)
	for i, size := range smallSizes {
		if cap(*b) == size {
			p.small[i].Put(b)
			return
		}
	}
	p.large.Put(b)
}

package perf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// The bulk payload is a pseudo-random block of patternPeriod bytes repeated
// for as long as needed. The period is odd, so it never lines up with a
// write or a read, and a byte's value depends on its offset in the stream:
// comparing each read with the pattern at that offset checks every byte as
// fast as memory compares, leaving the CPU to the path being measured.
const (
	patternPeriod = 1<<20 + 7
	bulkChunk     = 128 << 10 // bytes per write, and the read buffer
)

// pattern holds two periods, so that any run of at most patternPeriod bytes
// from any offset is one slice.
type pattern []byte

func newPattern() pattern {
	p := make(pattern, 2*patternPeriod)
	var seed [32]byte
	copy(seed[:], "tunnel integration/perf bulk")
	rand.NewChaCha8(seed).Read(p[:patternPeriod])
	copy(p[patternPeriod:], p[:patternPeriod])
	return p
}

// at returns the n bytes (n <= patternPeriod) at offset off of the stream.
func (p pattern) at(off int64, n int) []byte {
	i := off % patternPeriod
	return p[i : i+int64(n)]
}

// send writes size bytes of the stream, starting at offset off, in
// bulkChunk writes.
func (p pattern) send(w io.Writer, off, size int64) error {
	for end := off + size; off < end; {
		n := int(min(bulkChunk, end-off))
		if _, err := w.Write(p.at(off, n)); err != nil {
			return fmt.Errorf("writing at offset %d: %w", off, err)
		}
		off += int64(n)
	}
	return nil
}

// receive reads size bytes and checks that they are the stream from
// offset off on, using buf (at most patternPeriod bytes) to read into.
func (p pattern) receive(r io.Reader, off, size int64, buf []byte) error {
	for got := int64(0); got < size; {
		n, err := r.Read(buf[:min(int64(len(buf)), size-got)])
		if !bytes.Equal(buf[:n], p.at(off+got, n)) {
			return fmt.Errorf("%d bytes read at offset %d differ from the bytes sent", n, off+got)
		}
		got += int64(n)
		if err != nil && got < size {
			return fmt.Errorf("after %d of %d bytes: %w", got, size, err)
		}
	}
	return nil
}

// A bulk connection starts with a request from the client: an operation
// byte and the size, a big-endian uint64.
const (
	bulkUp   = 'U' // the client sends size bytes, the server answers bulkOK or bulkFail and a reason
	bulkDown = 'D' // the server sends size bytes and closes its side
	bulkOK   = 'K'
	bulkFail = 'F'
)

// bulkServer returns a Backend handler serving bulkUp and bulkDown.
func bulkServer(p pattern) func(net.Conn) {
	return func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Minute))
		var req [9]byte
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return
		}
		size := int64(binary.BigEndian.Uint64(req[1:]))
		switch req[0] {
		case bulkUp:
			if err := p.receive(c, 0, size, make([]byte, bulkChunk)); err != nil {
				c.Write(append([]byte{bulkFail}, err.Error()...))
				return
			}
			c.Write([]byte{bulkOK})
			io.Copy(io.Discard, c) // until the client closes
		case bulkDown:
			if p.send(c, 0, size) != nil {
				return
			}
			c.(*net.TCPConn).CloseWrite()
			io.Copy(io.Discard, c)
		}
	}
}

// bulk moves size bytes over one connection to addr, up (client to server)
// or down, checks every byte, and returns the time from the request to the
// last byte arriving.
func bulk(addr string, op byte, size int64, p pattern) (time.Duration, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Minute))
	var req [9]byte
	req[0] = op
	binary.BigEndian.PutUint64(req[1:], uint64(size))
	start := time.Now()
	if _, err := c.Write(req[:]); err != nil {
		return 0, err
	}
	switch op {
	case bulkUp:
		if err := p.send(c, 0, size); err != nil {
			return 0, err
		}
		var verdict [1]byte
		if _, err := io.ReadFull(c, verdict[:]); err != nil {
			return 0, fmt.Errorf("no answer from the server after %d bytes: %w", size, err)
		}
		d := time.Since(start)
		if verdict[0] != bulkOK {
			reason, _ := io.ReadAll(io.LimitReader(c, 1024))
			return 0, fmt.Errorf("the server received other bytes than were sent: %s", reason)
		}
		return d, nil
	default:
		if err := p.receive(c, 0, size, make([]byte, bulkChunk)); err != nil {
			return 0, err
		}
		d := time.Since(start)
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			return 0, fmt.Errorf("after %d bytes: read %d more (%v), want EOF", size, n, err)
		}
		return d, nil
	}
}

// benchBulk measures one connection's throughput each way, directly and
// through the tunnel (and the peers), and the CPU time per GB of the
// processes between client and server: once wherever the scheduler puts
// them, and once, on a machine with two CPUs or more, with the client's side
// (entry) on CPU 0 and the server's side (exit) on CPU 1, as two hosts
// would run them. The client and the server run in this process, unpinned.
func (r *rig) benchBulk(b *testing.B) {
	backend := harness.StartBackend(b, bulkServer(r.pattern))
	r.bulkRoutes(b, backend.Addr(), anyCPU, "bulk", "")
	if runtime.NumCPU() >= 2 {
		r.bulkRoutes(b, backend.Addr(), splitCPUs, "bulk-split", "split-")
	}
	b.ReportMetric(0, "ns/op")
}

// bulkRoutes measures bulk through every route to backend, placed as place
// says, under the table keys key-up, key-down and key-cpu, and metrics
// named with prefix.
func (r *rig) bulkRoutes(b *testing.B, backend string, place placement, key, prefix string) {
	routes := []route{{col: direct, addr: backend}}
	a := r.startAgents(b, backend, place, false)
	routes = append(routes, route{tunnel, a.Entry.Addr, a.pids()})
	routes = append(routes, r.peerRoutes(b, backend, place)...)
	size := r.set.bulkBytes
	for _, p := range routes {
		if p.col == direct && place != anyCPU {
			continue // nothing between client and server to place
		}
		var cpu float64
		for _, op := range []byte{bulkUp, bulkDown} {
			cpu0 := cpuSeconds(b, p.pids...)
			d, err := bulk(p.addr, op, size, r.pattern)
			if err != nil {
				b.Fatalf("bulk %s, %s%s: %v", dirName(op), prefix, p.col, err)
			}
			cpu += cpuSeconds(b, p.pids...) - cpu0
			mbs := float64(size) / 1e6 / d.Seconds()
			b.ReportMetric(mbs, fmt.Sprintf("%s%s-%s-MB/s", prefix, p.col, dirName(op)))
			r.res.set(key+"-"+dirName(op), p.col, mbs)
		}
		if p.pids != nil {
			perGB := cpu / (2 * float64(size) / 1e9)
			b.ReportMetric(perGB, prefix+p.col.String()+"-cpu-s/GB")
			r.res.set(key+"-cpu", p.col, perGB)
		}
	}
}

func dirName(op byte) string {
	if op == bulkUp {
		return "up"
	}
	return "down"
}

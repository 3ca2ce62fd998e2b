package perf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// connRateWorkers is how many connections are made at a time.
const connRateWorkers = 8

// benchConnRate measures how many connections per second can connect, echo
// rttSize bytes and close, connRateWorkers at a time, directly, through the
// tunnel and through the peers.
func (r *rig) benchConnRate(b *testing.B) {
	backend := harness.StartBackend(b, echo)
	a := r.startAgents(b, backend.Addr(), anyCPU, false)
	routes := append([]route{{col: direct, addr: backend.Addr()}, {tunnel, a.Entry.Addr, a.pids()}},
		r.peerRoutes(b, backend.Addr(), anyCPU)...)
	for _, p := range routes {
		cpu := cpuSeconds(b, p.pids...)
		n, d, err := connRate(p.addr, r.set.connRateTime)
		if err != nil {
			b.Fatalf("connect, echo and close, %s, after %d connections: %v", p.col, n, err)
		}
		perSec := float64(n) / d.Seconds()
		b.ReportMetric(perSec, p.col.String()+"-conns/s")
		if p.pids != nil {
			b.ReportMetric((cpuSeconds(b, p.pids...)-cpu)*1e6/float64(n), p.col.String()+"-cpu-µs/conn")
		}
		r.res.set("connrate", p.col, perSec)
	}
	b.ReportMetric(0, "ns/op")
}

// connRate runs connRateWorkers loops of echoOnce against addr for about
// d, and returns how many connections completed and how long that took, or
// the first error.
func connRate(addr string, d time.Duration) (int64, time.Duration, error) {
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, connRateWorkers)
	start := time.Now()
	stop := start.Add(d)
	for w := range connRateWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, rttSize)
			binary.LittleEndian.PutUint32(msg, uint32(w))
			for i := uint64(0); time.Now().Before(stop); i++ {
				binary.LittleEndian.PutUint64(msg[4:], i)
				if err := echoOnce(addr, msg); err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	return done.Load(), elapsed, <-errs
}

// echoOnce connects to an echo server at addr, sends msg, checks the echo
// and closes the connection.
func echoOnce(addr string, msg []byte) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return errNotEcho
	}
	return nil
}

package perf

import (
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/integration/harness"
)

// idleEcho is how much each held connection echoes for the second memory
// figure: a pooled database connection that has done some work.
const idleEcho = 256 << 10

// benchIdle measures the memory both agents hold per idle connection: the
// growth of their summed RSS with r.set.idleConns connections open and
// idle, then after each of them echoed idleEcho bytes and went idle again.
// The agents are fresh, so that memory freed by earlier work does not hide
// the growth.
func (r *rig) benchIdle(b *testing.B) {
	backend := harness.StartBackend(b, echo)
	a := r.startAgents(b, backend.Addr(), anyCPU, true)
	n := r.set.idleConns
	r.res.relabel("idle-rss", fmt.Sprintf("RSS per idle connection, %d held, KB", n))

	base, _ := settle(b, a)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.DialTimeout("tcp", a.Entry.Addr, 10*time.Second)
		if err != nil {
			b.Fatalf("opening idle connection %d of %d: %v", i+1, n, err)
		}
		conns = append(conns, c)
	}
	// The exit dials the backend for every stream; then every connection
	// is whole.
	for deadline := time.Now().Add(time.Minute); backend.Accepted() < int64(n); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("the backend accepted %d of %d connections through the tunnel within a minute", backend.Accepted(), n)
		}
	}
	held, goroutines := settle(b, a)
	perConn := float64(held-base) / float64(n)
	b.ReportMetric(perConn, "idle-KB/conn")
	b.ReportMetric(float64(goroutines)/float64(n), "idle-goroutines/conn")
	r.res.set("idle-rss", tunnel, perConn)

	if err := echoAll(conns, idleEcho, r.pattern); err != nil {
		b.Fatal(err)
	}
	used, goroutines := settle(b, a)
	perConn = float64(used-base) / float64(n)
	b.ReportMetric(perConn, "used-KB/conn")
	b.ReportMetric(float64(goroutines)/float64(n), "used-goroutines/conn")
	r.res.set("idle-rss-used", tunnel, perConn)
	b.Logf("RSS of both agents: %d KB at start, %d KB with %d connections idle, %d KB after each echoed %d KiB",
		base, held, n, used, idleEcho>>10)
	b.ReportMetric(0, "ns/op")
}

// settle lets both agents go quiet, collects their garbage through the
// status endpoints, and returns their summed RSS in KB and the sum of their
// goroutines.
func settle(b *testing.B, a *agents) (rss int64, goroutines int) {
	b.Helper()
	for range 2 {
		time.Sleep(2 * time.Second)
		goroutines = collectGarbage(b, a.Entry).Goroutines + collectGarbage(b, a.Exit).Goroutines
	}
	time.Sleep(time.Second)
	return rssKB(b, a.pids()...), goroutines
}

// agentStatus is what the benchmarks read of an agent's /status.
type agentStatus struct {
	Goroutines int   `json:"goroutines"`
	HeapBytes  int64 `json:"heap_bytes"`
}

// collectGarbage asks the agent to collect its garbage, and returns its
// goroutine count and live heap.
func collectGarbage(b *testing.B, a *harness.Agent) agentStatus {
	b.Helper()
	body, err := a.Get("/status?gc=1")
	if err != nil {
		b.Fatal(err)
	}
	var st agentStatus
	if err := json.Unmarshal(body, &st); err != nil {
		b.Fatalf("%s: /status: %v", a.Role, err)
	}
	return st
}

// echoAll makes every connection echo size bytes of the pattern, a few
// connections at a time, and checks every byte. The connections stay open.
func echoAll(conns []net.Conn, size int64, p pattern) error {
	work := make(chan int)
	errs := make(chan error, connRateWorkers)
	var wg sync.WaitGroup
	for range connRateWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, bulkChunk)
			for i := range work {
				if err := echoStream(conns[i], int64(i)*size, size, p, buf); err != nil {
					errs <- fmt.Errorf("connection %d of %d echoing %d bytes: %w", i+1, len(conns), size, err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := range conns {
		select {
		case work <- i:
		case err = <-errs:
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	if err != nil {
		return err
	}
	return <-errs
}

// echoStream writes size bytes of the pattern from offset off to c while
// reading the echo, and checks it.
func echoStream(c net.Conn, off, size int64, p pattern, buf []byte) error {
	c.SetDeadline(time.Now().Add(time.Minute))
	defer c.SetDeadline(time.Time{})
	werr := make(chan error, 1)
	go func() { werr <- p.send(c, off, size) }()
	if err := p.receive(c, off, size, buf); err != nil {
		c.Close() // unblocks the writer
		<-werr
		return err
	}
	return <-werr
}

package tunnel

import (
	"context"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tunnel-dev/tunnel/tunnel/session"
)

// BenchmarkTunnel pushes bytes from a client through entry and exit (both
// in this process, loopback TCP) to a backend that discards them, and
// reports how many records the entry sent per MiB: with one yamux frame per
// record it is about 16 (64 KiB records).
func BenchmarkTunnel(b *testing.B) {
	discard := backend(b, func(c *net.TCPConn) {
		io.Copy(io.Discard, c)
		c.Close()
	})
	a := start(b, discard)
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	c.Write(buf[:1]) // the session is up before timing starts
	sess := waitSession(b, a.entry)
	before := sess.Stats().RecordsSent
	b.SetBytes(int64(len(buf)))
	cpu := startCPU()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	records := sess.Stats().RecordsSent - before
	b.ReportMetric(float64(records)/(float64(b.N)*float64(len(buf))/(1<<20)), "records/MiB")
	cpu.report(b, float64(b.N)*float64(len(buf))/1e9, "cpu-s/GB")
}

// BenchmarkDownload pulls bytes from a backend that writes without end,
// through exit and entry, to a client: the direction opposite to
// BenchmarkTunnel.
func BenchmarkDownload(b *testing.B) {
	chunk := make([]byte, 256<<10)
	source := backend(b, func(c *net.TCPConn) {
		for {
			if _, err := c.Write(chunk); err != nil {
				c.Close()
				return
			}
		}
	})
	a := start(b, source)
	c, err := net.Dial("tcp", a.entryAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	if _, err := io.ReadFull(c, buf); err != nil { // the stream is flowing before timing starts
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	cpu := startCPU()
	b.ResetTimer()
	for b.Loop() {
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu.report(b, float64(b.N)*float64(len(buf))/1e9, "cpu-s/GB")
}

// cpuClock measures the CPU time of this process (every agent, client and
// backend of a benchmark): less sensitive to other load than wall time.
type cpuClock time.Duration

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU() cpuClock { return cpuClock(processCPU()) }

// report reports the CPU seconds used since start per unit of work.
func (c cpuClock) report(b *testing.B, units float64, name string) {
	b.ReportMetric((processCPU()-time.Duration(c)).Seconds()/units, name)
}

// waitSession waits for the entry's session and returns it.
func waitSession(b *testing.B, e *Entry) *session.Session {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s := e.keeper.Current(); s != nil {
			return s.Sess
		}
		time.Sleep(time.Millisecond)
	}
	b.Fatal("no session with the exit after 10s")
	return nil
}

// BenchmarkRoundTrip sends a 100-byte request and waits for its 100-byte
// echo, one at a time, directly and through entry and exit over loopback:
// the latency the tunnel adds to a request/response protocol.
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("direct", func(b *testing.B) { benchRoundTrip(b, echoBackend(b)) })
	b.Run("tunnel", func(b *testing.B) { benchRoundTrip(b, start(b, echoBackend(b)).entryAddr) })
}

// BenchmarkRoundTrips8 runs the request/response of BenchmarkRoundTrip on
// 8 connections at once, as a pool of database clients does, and reports
// the CPU time of the whole process per request.
func BenchmarkRoundTrips8(b *testing.B) {
	b.Run("direct", func(b *testing.B) { benchRoundTrips(b, echoBackend(b), 8) })
	b.Run("tunnel", func(b *testing.B) { benchRoundTrips(b, start(b, echoBackend(b)).entryAddr, 8) })
}

func benchRoundTrips(b *testing.B, addr string, clients int) {
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	var next atomic.Int64
	cpu := startCPU()
	b.ResetTimer()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 100)
			buf := make([]byte, 100)
			for next.Add(1) <= int64(b.N) {
				if _, err := c.Write(msg); err != nil {
					b.Error(err)
					return
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu.report(b, float64(b.N)/1e6, "cpu-µs/op")
}

func benchRoundTrip(b *testing.B, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 100)
	buf := make([]byte, 100)
	cpu := startCPU()
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
	cpu.report(b, float64(b.N)/1e6, "cpu-µs/op")
}

// BenchmarkConnRate connects, echoes 64 bytes and closes, 8 connections at
// a time, directly, through entry and exit, and with the entry's
// DialContext (no application socket), and reports the CPU time of the
// whole process (clients, agents and backend) per connection.
func BenchmarkConnRate(b *testing.B) {
	b.Run("direct", func(b *testing.B) { benchConnRate(b, tcpDialer(echoBackend(b))) })
	tunnel := func(b *testing.B, dial func(*agents) func() (net.Conn, error)) {
		a := start(b, echoBackend(b))
		if err := echoOnce(dial(a), make([]byte, 64), make([]byte, 64)); err != nil {
			b.Fatal(err)
		}
		sess := waitSession(b, a.entry)
		before := sess.Stats()
		benchConnRate(b, dial(a))
		after := sess.Stats()
		b.ReportMetric(float64(after.RecordsSent-before.RecordsSent)/float64(b.N), "sent-records/op")
		b.ReportMetric(float64(after.RecordsReceived-before.RecordsReceived)/float64(b.N), "received-records/op")
	}
	b.Run("tunnel", func(b *testing.B) {
		tunnel(b, func(a *agents) func() (net.Conn, error) { return tcpDialer(a.entryAddr) })
	})
	b.Run("dialcontext", func(b *testing.B) {
		tunnel(b, func(a *agents) func() (net.Conn, error) {
			return func() (net.Conn, error) { return a.entry.DialContext(context.Background(), "tcp", "") }
		})
	})
}

// tcpDialer returns a function that dials addr.
func tcpDialer(addr string) func() (net.Conn, error) {
	return func() (net.Conn, error) { return net.Dial("tcp", addr) }
}

func benchConnRate(b *testing.B, dial func() (net.Conn, error)) {
	var next atomic.Int64
	cpu := startCPU()
	b.ResetTimer()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, 64)
			buf := make([]byte, 64)
			for next.Add(1) <= int64(b.N) {
				if err := echoOnce(dial, msg, buf); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu.report(b, float64(b.N)/1e6, "cpu-µs/op")
}

// echoOnce connects with dial, sends msg, reads its echo into buf and closes.
func echoOnce(dial func() (net.Conn, error), msg, buf []byte) error {
	c, err := dial()
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err = io.ReadFull(c, buf)
	return err
}

// BenchmarkIdleConns holds 1000 connections through entry and exit (both
// in this process), each idle after one 64-byte echo, and reports the
// goroutine stacks and the heap in use per connection, after a GC, over
// what the process held before. The backend's goroutine per connection
// and the clients' sockets are part of the figures.
func BenchmarkIdleConns(b *testing.B) {
	const n = 1000
	a := start(b, echoBackend(b))
	msg := make([]byte, 64)
	inUse := func() (stack, heap uint64) {
		runtime.GC()
		runtime.GC() // the first one shrinks the stacks, the second frees what that released
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.StackInuse, ms.HeapInuse
	}
	var stacks, heap float64
	for b.Loop() {
		stack0, heap0 := inUse()
		conns := make([]net.Conn, 0, n)
		for range n {
			c, err := net.Dial("tcp", a.entryAddr)
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, c)
			if _, err := c.Write(msg); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, msg); err != nil {
				b.Fatal(err)
			}
		}
		stack1, heap1 := inUse()
		stacks += float64(stack1) - float64(stack0)
		heap += float64(heap1) - float64(heap0)
		for _, c := range conns {
			c.Close()
		}
		waitFor(b, "the agents close the streams", func() bool {
			return a.entry.Stats().Streams == 0 && a.exit.Stats().Streams == 0
		})
	}
	b.ReportMetric(stacks/float64(b.N*n), "stack-B/conn")
	b.ReportMetric(heap/float64(b.N*n), "heap-B/conn")
}

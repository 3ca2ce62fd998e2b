package tunnel

import (
	"io"
	"net"
	"testing"
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
	sess := a.entry.currentConn()
	before := sess.Stats().RecordsSent
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	records := sess.Stats().RecordsSent - before
	b.ReportMetric(float64(records)/(float64(b.N)*float64(len(buf))/(1<<20)), "records/MiB")
}

// BenchmarkRoundTrip sends a 100-byte request and waits for its 100-byte
// echo, one at a time, directly and through entry and exit over loopback:
// the latency the tunnel adds to a request/response protocol.
func BenchmarkRoundTrip(b *testing.B) {
	b.Run("direct", func(b *testing.B) { benchRoundTrip(b, echoBackend(b)) })
	b.Run("tunnel", func(b *testing.B) { benchRoundTrip(b, start(b, echoBackend(b)).entryAddr) })
}

func benchRoundTrip(b *testing.B, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 100)
	buf := make([]byte, 100)
	for b.Loop() {
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

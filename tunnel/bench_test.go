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

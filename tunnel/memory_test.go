package tunnel

import (
	"context"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

// TestReleaseWhenQuiet: after a burst of allocation, a quiet process gives
// the freed heap back to the OS.
func TestReleaseWhenQuiet(t *testing.T) {
	free := func() uint64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	var keep [][]byte
	for range 64 {
		keep = append(keep, make([]byte, 1<<20))
	}
	runtime.KeepAlive(keep)
	keep = nil
	runtime.GC()
	if f := free(); f < releaseAbove {
		t.Skipf("only %d bytes free after dropping 64 MiB; the runtime returned them already", f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { releaseWhenQuiet(ctx, 100*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "free heap returned to the OS", func() bool { return free() < releaseAbove })
}
